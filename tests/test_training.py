"""Training toolkit on the tiny checkpoints: label masks per chat format, recipes' trainable
parts and falling loss, packing equal to padding, bad samples skipped, checkpoints that load."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("yaml")

from conftest import TINY  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from training_data import make_dataset, resumable_train_args, tiny_train_args  # noqa: E402

import minicpmv  # noqa: E402
from minicpmv.cli import main  # noqa: E402
from minicpmv.model.checkpoint import load_model  # noqa: E402
from minicpmv.processing.processor import MiniCPMVProcessor  # noqa: E402
from minicpmv.training.batching import length_grouped_order, pack, packed_batch, padded_batch  # noqa: E402
from minicpmv.training.data import IGNORE, ChatDataset, SampleBuilder  # noqa: E402
from minicpmv.training.recipes import recipe  # noqa: E402
from minicpmv.training.run import processor_for, run_training  # noqa: E402
from minicpmv.training.trainer import parameter_groups, token_loss_sum  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "minicpmv" / "assets" / "example.png"
TWO_TURNS = [
    {"role": "user", "content": [EXAMPLE, "What is it?"]},
    {"role": "assistant", "content": "A shape."},
    {"role": "user", "content": "More?"},
    {"role": "assistant", "content": "No."},
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"), broken=True)


def supervised(builder, sample):
    """(position, target) pairs of the supervised targets."""
    return [(i, t) for i, t in enumerate(sample.targets) if t != IGNORE]


@pytest.mark.parametrize(
    "version, expected",
    [
        # each answer plus its end marker; the marker's own position learns the marker again where a
        # turn follows (the official llama3 quirk, docs/training.md)
        ("2.6", "A shape.<|im_end|><|im_end|>No.<|im_end|>"),
        ("2.5", "A shape.<|eot_id|><|eot_id|>No.<|eot_id|>"),
        # 2.0: no marker in the text; every answer learns to end with EOS, the last one has it appended
        ("2.0", "A shape.</s>No.</s>"),
        ("1.0", "A shape.</s>No.</s>"),
        # 4.5: the empty think block the template writes before the last answer is not learnt
        ("4.5", "A shape.<|im_end|><|im_end|>No.<|im_end|>"),
    ],
)
def test_label_masks_per_chat_format(version, expected):
    processor = MiniCPMVProcessor.from_pretrained(TINY[version] / "checkpoint")
    builder = SampleBuilder(processor)
    sample = builder.build(TWO_TURNS)
    pairs = supervised(builder, sample)
    decoded = processor.tokenizer.decode([t for _, t in pairs]).replace(" ", "")
    assert decoded == expected.replace(" ", "")
    # pre-shifted: a supervised target at i-1 is the input token at i, or the end token after an answer
    for i, target in pairs:
        assert target == sample.input_ids[i + 1] or target == builder.end_id
    answer_ids = [processor.tokenizer.encode(text)[-1] for text in ("No.",)]
    assert sample.targets[-1] == IGNORE  # the last token predicts nothing
    assert answer_ids  # the tokenizer encodes answers
    # nothing of the user turns or the image is supervised
    first_answer = min(i for i, _ in pairs)
    assert all(t == IGNORE for t in sample.targets[:first_answer])
    assert sample.image_bound and all(sample.targets[s] == IGNORE for s, _ in sample.image_bound)


def test_4_5_empty_think_block_is_in_the_prompt_and_reasoning_is_learnt():
    """4.5 label rule: the last answer is rendered after `<think>\n\n</think>\n\n`, which stays
    unsupervised (inference puts it in the prompt); an answer with reasoning learns the reasoning,
    its `</think>` and the answer, after the `<think>\n` a thinking prompt ends with."""
    processor = MiniCPMVProcessor.from_pretrained(TINY["4.5"] / "checkpoint")
    builder = SampleBuilder(processor)
    tokenizer = processor.tokenizer
    plain = builder.build([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}])
    text = tokenizer.decode(plain.input_ids)
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\nYo<|im_end|>")
    learnt = tokenizer.decode([t for t in plain.targets if t != IGNORE])
    assert learnt == "Yo<|im_end|>"
    reasoned = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<think>\nhm\n</think>\n\nYo"}]
    sample = builder.build(reasoned)
    learnt = tokenizer.decode([t for t in sample.targets if t != IGNORE])
    assert learnt == "hm\n</think>\n\nYo<|im_end|>"


def test_label_positions_by_hand_for_2_6():
    processor = MiniCPMVProcessor.from_pretrained(TINY["2.6"] / "checkpoint")
    builder = SampleBuilder(processor)
    sample = builder.build([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}])
    tokenizer = processor.tokenizer
    ids = sample.input_ids
    opener = tokenizer.encode("<|im_start|>assistant\n")
    start = max(i for i in range(len(ids)) if ids[i - len(opener) : i] == opener)  # first answer token
    end = ids.index(tokenizer.token_to_id("<|im_end|>"), start)
    expected = [IGNORE] * len(ids)
    for i in range(start, end + 1):
        expected[i - 1] = ids[i]
    assert sample.targets == expected
    assert tokenizer.decode(ids[start : end + 1]) == "Yo<|im_end|>"


def test_bad_samples_are_skipped_and_counted(data):
    dataset = ChatDataset(data, SampleBuilder(MiniCPMVProcessor.from_pretrained(TINY["2.6"] / "checkpoint"), 1024))
    with pytest.warns(UserWarning):
        samples = [dataset[i] for i in range(len(dataset))]
    assert sum(s is None for s in samples) == 3
    assert dict(dataset.skipped) == {"bad_image": 1, "no_assistant_turn": 1, "too_long": 1}
    kinds = [len(s.images) for s in samples if s is not None]
    assert {0, 1, 2} <= set(kinds)  # text-only, single and multi-image records


@pytest.mark.parametrize(
    "name, parts",
    [
        ("stage1", {"resampler"}),
        ("stage2", {"vpm"}),
        ("stage3", {"vpm", "resampler"}),
        ("sft", {"vpm", "resampler", "llm"}),
    ],
)
def test_recipes_train_their_parts_and_the_loss_falls(name, parts, data, tmp_path):
    chosen = recipe(
        name,
        {
            "learning_rate": 2e-3,
            "max_steps": 8,
            "batch_size": 4,
            "max_length": 1024,
            "precision": "float32",
            "warmup_ratio": 0.0,
        },
    )
    before = load_model(TINY["2.6"] / "checkpoint").state_dict()
    result = run_training(chosen, TINY["2.6"] / "checkpoint", data, tmp_path, progress=False)
    model = load_model(TINY["2.6"] / "checkpoint")
    expected = {
        part: sum(p.numel() for p in getattr(model, part).parameters()) if part in parts else 0
        for part in ("vpm", "resampler", "llm")
    }
    assert result["trainable"] == expected
    after = load_model(result["checkpoint"]).state_dict()
    changed = {name.split(".")[0] for name in before if not torch.equal(before[name], after[name])}
    assert changed == parts
    losses = [r["loss"] for r in result["history"]]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3


def test_a_part_at_a_learning_rate_of_its_own(data, tmp_path):
    """`vpm_learning_rate=0` keeps the encoder as it was while the other parts train; without
    per-part rates the optimizer has one group, as before the setting existed."""
    model = load_model(TINY["2.6"] / "checkpoint")
    assert len(parameter_groups(model, recipe("sft"))) == 1
    chosen = recipe(
        "sft",
        {
            "learning_rate": 2e-3,
            "vpm_learning_rate": "0",
            "resampler_learning_rate": "1e-3",
            "max_steps": 3,
            "batch_size": 2,
            "max_length": 1024,
            "precision": "float32",
        },
    )
    assert [group["lr"] for group in parameter_groups(model, chosen)] == [0.0, 1e-3, 2e-3]
    before = model.state_dict()
    result = run_training(chosen, TINY["2.6"] / "checkpoint", data, tmp_path, progress=False)
    after = load_model(result["checkpoint"]).state_dict()
    changed = {name.split(".")[0] for name in before if not torch.equal(before[name], after[name])}
    assert changed == {"resampler", "llm"}


def test_stage1_uses_224_pixels_without_slicing():
    processor = processor_for(recipe("stage1"), TINY["2.6"] / "checkpoint")
    plan = processor.plan((1344, 896))
    assert plan.num_crops == 1 and max(plan.source_size) <= 280


def test_packed_and_padded_batches_give_the_same_loss(data):
    processor = MiniCPMVProcessor.from_pretrained(TINY["2.6"] / "checkpoint")
    dataset = ChatDataset(data, SampleBuilder(processor, 1024))
    samples = [s for s in (dataset[i] for i in range(6)) if s is not None]
    model = load_model(TINY["2.6"] / "checkpoint").eval()
    rows = pack(samples, 2048)
    assert len(rows) < len(samples)  # several samples share a row
    packed = packed_batch(rows, 2048)
    padded = padded_batch(samples)
    assert packed.supervised_tokens == padded.supervised_tokens
    with torch.no_grad():
        assert torch.allclose(token_loss_sum(model, packed), token_loss_sum(model, padded), rtol=1e-5)
    # positions restart per sample; no attention across samples
    first = len(rows[0][0])
    assert packed.position_ids[0, first] == 0 and not packed.attention_mask[0, 0, first, first - 1]


def test_length_grouped_order_is_a_grouped_permutation():
    lengths = [5, -3, 50, 7, -40, 9, 100, -1, 60, 8, 33, -2]  # 8 image samples, 4 text-only
    order = length_grouped_order(lengths, 4, seed=1)
    assert sorted(order) == list(range(len(lengths)))
    assert order == length_grouped_order(lengths, 4, seed=1)
    assert order != length_grouped_order(lengths, 4, seed=2)
    for start in range(0, len(order), 4):  # megabatches: one modality each, longest first
        chunk = [lengths[i] for i in order[start : start + 4]]
        assert len({n >= 0 for n in chunk}) == 1
        assert [abs(n) for n in chunk] == sorted((abs(n) for n in chunk), reverse=True)


def test_checkpoint_loads_like_an_official_folder(data, tmp_path):
    assert (
        main(
            [
                "train",
                "--recipe",
                "sft",
                "-m",
                str(TINY["2.6"] / "checkpoint"),
                "--data",
                str(data),
                "-o",
                str(tmp_path),
                "--max-steps",
                "2",
                "--max-length",
                "1024",
                "--set",
                "precision=float32",
            ]
        )
        == 0
    )
    folder = tmp_path / (tmp_path / "latest").read_text().strip()
    chat = minicpmv.load(folder)
    assert chat.generate([{"role": "user", "content": "hi"}], max_new_tokens=3).token_ids
    assert (tmp_path / "loss.png").stat().st_size > 0
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    again = [
        "train",
        "--recipe",
        "sft",
        "-m",
        str(TINY["2.6"] / "checkpoint"),
        "--data",
        str(data),
        "-o",
        str(tmp_path),
        "--max-steps",
        "1",
        "--max-length",
        "1024",
    ]
    assert main(again) == 2  # a finished run is not overwritten by accident
    assert main(again + ["--overwrite"]) == 0
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


@pytest.mark.parametrize(
    "args, words",
    [
        (["--set", "bogus=1"], "unknown recipe setting"),
        (["--set", "max_steps=many"], "max_steps"),
        (["--data", "/no/such.json"], "/no/such.json"),
    ],
)
def test_cli_errors_exit_2(args, words, data, tmp_path, capsys):
    base = ["train", "--recipe", "sft", "-m", str(TINY["2.6"] / "checkpoint"), "--data", str(data), "-o", str(tmp_path)]
    assert main(base + args) == 2
    error = capsys.readouterr().err
    assert error.startswith("minicpmv train: error:") and words in error


def test_killed_run_resumes_to_the_same_weights(data, tmp_path):
    args = resumable_train_args(data)
    python = [sys.executable, "-m", "minicpmv"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(python + args + ["-o", str(straight)], check=True, capture_output=True)
    crash = subprocess.run(
        [sys.executable, str(Path(__file__).parent / "kill_during_save.py"), "weights", "4", *args, "-o", str(killed)],
        capture_output=True,
    )
    assert crash.returncode == -9
    assert (killed / "latest").read_text().strip() == "checkpoint-000002"  # never the half-written one
    subprocess.run(python + args + ["-o", str(killed), "--resume"], check=True, capture_output=True)
    final = "checkpoint-000006/model.safetensors"
    expected, resumed = load_file(straight / final), load_file(killed / final)
    assert expected.keys() == resumed.keys()
    assert all(torch.equal(expected[name], resumed[name]) for name in expected)
    losses = [line for line in (straight / "metrics.jsonl").read_text().splitlines()]
    again = [line for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [json.loads(x)["loss"] for x in again] == [json.loads(x)["loss"] for x in losses]


def test_lora_trains_adapters_and_merge_keeps_the_logits(data, tmp_path):
    from minicpmv.training.lora import add_lora, load_adapter

    settings = {
        "learning_rate": 1e-2,
        "max_steps": 4,
        "batch_size": 2,
        "max_length": 1024,
        "precision": "float32",
        "lora_rank": 4,
        "lora_alpha": 8,
        "warmup_ratio": 0.0,
    }
    chosen = recipe("lora", settings)
    result = run_training(chosen, TINY["2.6"] / "checkpoint", data, tmp_path / "run", progress=False)
    base = load_model(TINY["2.6"] / "checkpoint")
    layers, hidden, kv = base.config.llm.num_layers, base.config.llm.hidden_size, base.config.llm.num_kv_heads
    kv_width = kv * base.config.llm.head_dim
    per_layer = 4 * ((hidden + hidden) * 2 + (hidden + kv_width) * 2)  # r * (in + out) for q, o, k, v
    assert result["trainable"] == {
        "vpm": 0,
        "resampler": sum(p.numel() for p in base.resampler.parameters()),
        "llm": layers * per_layer,
    }
    checkpoint = Path(result["checkpoint"])
    assert (
        main(
            [
                "merge-lora",
                "-m",
                str(TINY["2.6"] / "checkpoint"),
                "--adapter",
                str(checkpoint),
                "-o",
                str(tmp_path / "merged"),
            ]
        )
        == 0
    )
    adapted = load_model(TINY["2.6"] / "checkpoint")
    add_lora(adapted, chosen)
    load_adapter(adapted, checkpoint)
    merged = load_model(tmp_path / "merged")  # strict: no missing or unexpected tensor
    sample = SampleBuilder(MiniCPMVProcessor.from_pretrained(TINY["2.6"] / "checkpoint")).build(TWO_TURNS)
    batch = padded_batch([sample])
    with torch.no_grad():
        args = (batch.input_ids, batch.pixel_values, batch.tgt_sizes, batch.image_bound, batch.attention_mask)
        expected, got, original = adapted.eval()(*args), merged.eval()(*args), base.eval()(*args)
    assert not torch.allclose(expected, original, atol=1e-3)  # the adapters did learn something
    assert torch.allclose(expected, got, atol=1e-4, rtol=1e-4)
    assert minicpmv.load(tmp_path / "merged").generate([{"role": "user", "content": "hi"}], max_new_tokens=2)


def test_gradient_checkpointing_and_bf16_autocast(data, tmp_path):
    """Recomputing activations changes no number; bf16 autocast trains to a nearby loss."""
    processor = MiniCPMVProcessor.from_pretrained(TINY["2.6"] / "checkpoint")
    dataset = ChatDataset(data, SampleBuilder(processor, 1024))
    batch = padded_batch([s for s in (dataset[i] for i in range(3)) if s is not None])
    grads = []
    for recompute in (False, True):
        model = load_model(TINY["2.6"] / "checkpoint").train()
        model.llm.gradient_checkpointing = recompute
        loss = token_loss_sum(model, batch)
        loss.backward()
        grads.append((float(loss), model.llm.model.layers[0].mlp.up_proj.weight.grad.clone()))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-6)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-6)
    settings = {"max_steps": 2, "batch_size": 2, "max_length": 1024, "learning_rate": 1e-3}
    fp32 = run_training(
        recipe("sft", {**settings, "precision": "float32"}),
        TINY["2.6"] / "checkpoint",
        data,
        tmp_path / "fp32",
        progress=False,
    )
    bf16 = run_training(
        recipe("sft", {**settings, "precision": "bfloat16", "gradient_checkpointing": True}),
        TINY["2.6"] / "checkpoint",
        data,
        tmp_path / "bf16",
        progress=False,
    )
    assert bf16["history"][0]["loss"] == pytest.approx(fp32["history"][0]["loss"], rel=0.05)


def test_recipe_from_yaml_and_set(tmp_path):
    config = tmp_path / "recipe.yaml"
    config.write_text("learning_rate: 0.0003\nmax_steps: 7\nlora_targets: [q_proj, v_proj]\npacking: true\n")
    chosen = recipe("lora", {"max_steps": 9}, config)
    assert (chosen.learning_rate, chosen.max_steps, chosen.lora_targets, chosen.packing) == (
        3e-4,
        9,
        ("q_proj", "v_proj"),
        True,
    )
    assert chosen.train == ("resampler",) and chosen.lora
    with pytest.raises(minicpmv.ConfigError, match="LoRA trains adapters on a frozen LLM"):
        recipe("lora", {"train": ["llm"]})
    with pytest.raises(minicpmv.ConfigError, match="vpm_learning_rate: expected a number"):
        recipe("sft", {"vpm_learning_rate": "slow"})
    assert recipe("sft", {"learning_rate": "3e-5"}).learning_rate == 3e-5  # YAML leaves "3e-5" a string


@pytest.mark.parametrize("version", ["1.0", "4.5"])
@pytest.mark.parametrize("recipe_name", ["sft", "lora"])
def test_new_versions_train_and_their_checkpoints_answer(version, recipe_name, data, tmp_path, capsys):
    """sft and lora run on 1.0 (squashed images, MiniCPM LLM) and 4.5 (Qwen3 with q/k norms, the
    3-D resampler's still-image path); the saved model loads and answers."""
    out = tmp_path / "run"
    args = tiny_train_args(data, steps=3, recipe=recipe_name, checkpoint=TINY[version] / "checkpoint")
    assert main([*args, "-o", str(out)]) == 0
    trained = out if (out / "config.json").exists() else next(out.glob("checkpoint-*"))
    if recipe_name == "lora":
        assert main(["merge-lora", "-m", str(TINY[version] / "checkpoint"), "--adapter", str(trained),
                     "-o", str(tmp_path / "merged")]) == 0  # fmt: skip
        trained = tmp_path / "merged"
    capsys.readouterr()
    assert main(["generate", "-m", str(trained), "--image", str(EXAMPLE), "-p", "What?", "-n", "3", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["token_ids"]) >= 1


def test_a_quantized_checkpoint_is_refused(data, tmp_path, capsys):
    """Its layers hold buffers and their int8 kernels pass no gradient to their inputs: a one-line
    error (exit 2), not peft's traceback (LoRA) or a run that trains around them (sft)."""
    quantized = tmp_path / "int4"
    assert main(["quantize", "-m", str(TINY["2.6"] / "checkpoint"), "-o", str(quantized), "--bits", "4"]) == 0
    capsys.readouterr()
    for name in ("lora", "sft"):
        argv = ["train", "--recipe", name, "-m", str(quantized), "--data", str(data), "-o", str(tmp_path / name)]
        assert main(argv) == 2
        error = capsys.readouterr().err
        assert error.startswith("minicpmv train: error:") and "quantized checkpoint cannot be trained" in error
