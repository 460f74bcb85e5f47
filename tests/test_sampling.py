"""Logits transforms on hand-made logits, with the arithmetic spelled out."""

import math

import pytest
import torch

from minicpmv.generation.sampling import (
    PRESETS,
    GenerationConfig,
    apply_repetition_penalty,
    min_p_filter,
    next_tokens,
    suppress_stop_tokens,
    top_k_filter,
    top_p_filter,
)

INF = float("-inf")


def test_repetition_penalty_divides_positive_and_multiplies_negative_scores():
    scores = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    out = apply_repetition_penalty(scores, [[0, 1, 1]], 2.0)
    assert out.tolist() == [[1.0, -2.0, 0.5, 3.0]]  # token 0: 2/2; token 1: -1*2 (once, not per repeat)
    assert apply_repetition_penalty(scores, [[]], 2.0).tolist() == scores.tolist()


def test_top_k_keeps_the_k_best():
    scores = torch.tensor([[1.0, 4.0, 3.0, 2.0]])
    assert top_k_filter(scores, 2).tolist() == [[INF, 4.0, 3.0, INF]]
    assert top_k_filter(scores, 0).tolist() == scores.tolist()  # 0 = off


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    scores = probs.log()
    # ascending cumulative mass: 0.05, 0.20, 0.50, 1.0; drop where <= 1 - p
    assert torch.isinf(top_p_filter(scores, 0.8)).tolist() == [[False, False, True, True]]  # 0.05, 0.20 <= 0.2
    assert torch.isinf(top_p_filter(scores, 0.5)).tolist() == [[False, True, True, True]]  # 0.5 <= 0.5 dropped too
    assert not torch.isinf(top_p_filter(scores, 0.01)[0, 0])  # the best token always stays


def test_min_p_drops_tokens_below_a_fraction_of_the_best():
    scores = torch.tensor([[0.6, 0.25, 0.1, 0.05]]).log()
    # threshold 0.2 * 0.6 = 0.12: 0.1 and 0.05 go
    assert torch.isinf(min_p_filter(scores, 0.2)).tolist() == [[False, False, True, True]]


def test_min_new_tokens_suppresses_stop_tokens_until_reached():
    scores = torch.tensor([[0.0, 5.0, 1.0]])
    assert suppress_stop_tokens(scores, {1}, step=0, min_new_tokens=2).tolist() == [[0.0, INF, 1.0]]
    assert suppress_stop_tokens(scores, {1}, step=2, min_new_tokens=2).tolist() == scores.tolist()


def test_greedy_is_argmax_after_penalty():
    logits = torch.tensor([[1.0, 3.0, 2.9]])
    assert next_tokens(logits, [[]], GenerationConfig(), 0).tolist() == [1]
    penalised = GenerationConfig(repetition_penalty=1.5)
    assert next_tokens(logits, [[1]], penalised, 1).tolist() == [2]  # 3/1.5 = 2 < 2.9


def test_sampling_with_a_seed_is_reproducible_and_respects_filters():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    config = GenerationConfig(do_sample=True, temperature=0.9, top_k=5)
    draws = [next_tokens(logits, [[]] * 4, config, 0, torch.Generator().manual_seed(7)).tolist() for _ in range(2)]
    assert draws[0] == draws[1]
    allowed = torch.topk(logits, 5).indices.tolist()
    assert all(token in allowed[row] for row, token in enumerate(draws[0]))


def test_low_temperature_concentrates_on_the_best_token():
    logits = torch.tensor([[1.0, 2.0, 1.5]])
    config = GenerationConfig(do_sample=True, temperature=0.01)
    picks = {next_tokens(logits, [[]], config, 0, torch.Generator().manual_seed(s)).item() for s in range(20)}
    assert picks == {1}


def _values(config):
    return (config.do_sample, config.top_p, config.top_k, config.temperature, config.repetition_penalty)


def test_presets_are_the_official_chat_defaults():
    from minicpmv.chat_options import preset_config

    for version in ("2.0", "2.5", "2.6"):
        assert _values(preset_config("sampling", version)) == (True, 0.8, 100, 0.7, 1.05)
    # 1.0's chat(sampling=True): temperature 0.6 and no repetition penalty
    assert _values(preset_config("sampling", "1.0")) == (True, 0.8, 100, 0.6, 1.0)
    # 4.5: repetition 1.03 without thinking; with it only the temperature, generation_config.json the rest
    assert _values(preset_config("sampling", "4.5")) == (True, 0.8, 100, 0.7, 1.03)
    assert _values(preset_config("sampling", "4.5", thinking=True)) == (True, 0.95, 20, 0.7, 1.0)
    assert (PRESETS["precise"].num_beams, PRESETS["precise"].repetition_penalty) == (3, 1.2)
    assert math.isclose(PRESETS["greedy"].temperature, 1.0) and not PRESETS["greedy"].do_sample


@pytest.mark.parametrize("options", [{"max_new_tokens": 5}, {"seed": 3, "top_k": None}])
def test_with_options_ignores_none(options):
    from minicpmv.chat_options import preset_config

    config = preset_config("sampling", "2.6").with_options(**options)
    assert config.top_k == 100 and config.do_sample
