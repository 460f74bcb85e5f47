"""The RLAIF-V rules, one named test each: claim parsing, yes/no aggregation, score = -rejected,
pairs with a score gap of at least 1, seeded per-instruction sampling, length balancing, and the
DPO loss and log-probs."""

from __future__ import annotations

import math

import pytest
import torch

from minicpmv.alignment import feedback, pairs
from minicpmv.training.data import IGNORE
from minicpmv.training.dpo import dpo_loss, sequence_logps


def test_bullets_skip_headers_and_drop_the_first_character():
    text = "### Facts:\n- There is a cat.\n\n* The cat is black. \n### end\n-"
    assert feedback.parse_bullets(text) == ["There is a cat.", "The cat is black.", ""]


def test_split_prompt_is_cut_to_300_words():
    prompt = feedback.split_prompt("q", "word " * 500)
    assert len(prompt.split()) == 300 and prompt.startswith("You are an expert")


def test_yes_no_aggregation_sums_both_cases():
    assert feedback.claim_label({"yes": 0.2, "Yes": 0.2, "no": 0.3, "No": 0.0}) == 1
    assert feedback.claim_label({"yes": 0.1, "Yes": 0.1, "no": 0.1, "No": 0.2}) == 0
    assert feedback.claim_label({"yes": 0.25, "no": 0.25}) == 0  # a tie rejects


def test_score_is_minus_rejected_claims():
    assert feedback.response_score([1, 0, 1, 0, 0]) == -3
    assert feedback.response_score([1, 1]) == 0
    assert feedback.response_score([]) is None


def test_demo_splitter_reads_every_object_of_a_description():
    claims = feedback.demo_claims("A large red circle at the top left and a small blue star at the center.")
    assert claims == [
        ("There is a large red circle at the top left.", "Is there a large red circle at the top left?"),
        ("There is a small blue star at the center.", "Is there a small blue star at the center?"),
    ]


def _response(name, score, words=4):
    return {
        "ds_question_id": "img",
        "question": "q",
        "image_path": "x.png",
        "answer": " ".join([name] * words),
        "score": score,
        "claims": ["c"] * (-score + 1),
        "labels": [1] + [0] * -score,
    }


def test_pairs_need_a_score_gap_of_one_and_never_ties():
    responses = [_response("a", 0), _response("b", 0), _response("c", -1), _response("d", -3)]
    found = {(c["answer"][0], r["answer"][0]) for c, r in pairs.enumerate_pairs(responses)}
    assert found == {("a", "c"), ("a", "d"), ("b", "c"), ("b", "d"), ("c", "d")}
    assert pairs.enumerate_pairs(responses, gap=3) == [(responses[0], responses[3]), (responses[1], responses[3])]


def test_sanity_filter_needs_every_claim_judged():
    good = _response("a", -1)
    assert pairs.sane(good) and not pairs.sane(dict(good, labels=[1]))


def test_per_instruction_sampling_is_seeded_and_independent():
    candidates = list(range(45))
    first = pairs.sample_pairs(candidates, 2, seed=0, key="img@q")
    assert first == pairs.sample_pairs(candidates, 2, seed=0, key="img@q") and len(set(first)) == 2
    assert pairs.sample_pairs(candidates[:1], 2, seed=0, key="img@q") == [0]
    assert any(pairs.sample_pairs(candidates, 2, 0, f"k{i}") != first for i in range(5))


def test_length_balancing_picks_the_threshold_with_the_closest_averages():
    def pair(chosen_words, rejected_words):
        return {"chosen": "c " * chosen_words, "rejected": "r " * rejected_words}

    # (len_rej - len_ch) / len_rej = -0.2, 0.1, 0.8, 0.75: t = 0 keeps 12 vs 10 words (gap 0.2),
    # t = 0.1 adds 9 vs 10 (averages 10.5 vs 10: 0.05), higher t add the much shorter chosen ones
    data = [pair(12, 10), pair(9, 10), pair(2, 10), pair(3, 12)]
    threshold, kept = pairs.balance_lengths(data)
    assert threshold == 0.1 and kept == data[:2]
    assert pairs.balance_lengths([{"chosen": "same", "rejected": "same"}]) == (0.0, [])


def test_dpo_loss_is_log_2_when_everything_is_equal():
    zero = torch.zeros(3)
    losses, chosen, rejected = dpo_loss(zero, zero, zero, zero, beta=0.1)
    assert torch.allclose(losses, torch.full((3,), math.log(2)))


def test_dpo_loss_by_hand():
    """beta 0.1, policy margin 3 - 1 = 2, reference margin 0.5: loss = -log sigmoid(0.15)."""
    losses, chosen, rejected = dpo_loss(
        torch.tensor([-3.0]), torch.tensor([-5.0]), torch.tensor([-4.0]), torch.tensor([-5.5]), beta=0.1
    )
    assert losses.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.1 * (2 - 1.5)))), abs=1e-6)
    assert chosen.item() == pytest.approx(0.1) and rejected.item() == pytest.approx(0.05)


def _toy_trl_trainer(tmp_path):
    """A two-pair text-only batch through TRL's own DPOTrainer: a 1-layer Llama over a word-level
    vocabulary, and a reference that differs from the policy so the margins are not zero."""
    import copy

    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from trl import DPOConfig, DPOTrainer

    words = ["<pad>", "<eos>", *"a red blue green circle square is the left right big small".split()]
    vocabulary = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    vocabulary.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=vocabulary, pad_token="<pad>", eos_token="<eos>")
    torch.manual_seed(0)
    policy = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(words),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    )
    reference = copy.deepcopy(policy)
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.add_(0.5 * torch.randn_like(parameter))
    pairs_ = Dataset.from_dict(
        {
            "prompt": ["the circle is", "a square is"],
            "chosen": [" red", " big blue"],
            "rejected": [" green left", " small"],
        }
    )
    config = DPOConfig(output_dir=str(tmp_path), beta=0.1, per_device_train_batch_size=2, report_to=[], use_cpu=True)
    return (
        DPOTrainer(model=policy, ref_model=reference, args=config, train_dataset=pairs_, processing_class=tokenizer),
        policy,
        reference,
    )


def test_dpo_loss_equals_trl_sigmoid_loss(tmp_path):
    """The spec's loss: TRL's sigmoid DPO loss (summed completion log-probs, beta 0.1) on the same
    batch, from our sequence_logps and dpo_loss over the same two models."""
    pytest.importorskip("trl")  # a test-only dependency (the dev set installs it)
    trainer, policy, reference = _toy_trl_trainer(tmp_path)
    batch = next(iter(trainer.get_train_dataloader()))  # rows: chosen..., rejected...
    with torch.no_grad():
        theirs = trainer.compute_loss(trainer.model, batch)
    ids, completion = batch["input_ids"], batch["completion_mask"]
    targets = ids[:, 1:].masked_fill(completion[:, 1:] == 0, IGNORE)  # position t predicts token t + 1

    def logps(model):
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=batch["attention_mask"]).logits[:, :-1]
        return sequence_logps(logits, targets)

    mine, frozen = logps(policy), logps(reference)
    ours = dpo_loss(mine[:2], mine[2:], frozen[:2], frozen[2:], beta=0.1)[0].mean()
    assert abs(ours.item() - math.log(2)) > 1e-3  # the margins are not all zero
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-6)


def test_sequence_logps_sum_supervised_preshifted_targets():
    logits = torch.randn(2, 4, 7)
    targets = torch.tensor([[IGNORE, 3, 5, IGNORE], [1, IGNORE, IGNORE, 6]])
    logp = torch.log_softmax(logits, -1)
    expected = torch.stack([logp[0, 1, 3] + logp[0, 2, 5], logp[1, 0, 1] + logp[1, 3, 6]])
    assert torch.allclose(sequence_logps(logits, targets), expected)
