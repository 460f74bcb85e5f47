"""Preference pairs from scored responses: every pair of one instruction's responses whose scores
differ by at least `gap` (the higher one chosen; ties never), a sanity filter, at most `k` per
instruction (drawn with a seed of its own), then length balancing so that DPO does not learn
that shorter is better (fewer words, fewer claims to get wrong)."""

from __future__ import annotations

import itertools
import random
from collections import defaultdict

THRESHOLDS = [i / 50 for i in range(50)]  # 0, 0.02, ..., 0.98


def group_key(response: dict) -> str:
    return f"{response['ds_question_id']}@{response['question']}"


def enumerate_pairs(responses: list[dict], gap: int = 1) -> list[tuple[dict, dict]]:
    """(chosen, rejected) for every unordered pair of one instruction's scored responses whose
    scores differ by at least `gap`."""
    scored = [r for r in responses if r.get("score") is not None]
    pairs = []
    for a, b in itertools.combinations(scored, 2):
        if abs(a["score"] - b["score"]) >= gap:
            pairs.append((a, b) if a["score"] > b["score"] else (b, a))
    return pairs


def sane(response: dict) -> bool:
    """Every non-empty claim was judged (no claim lost between splitting and verification)."""
    return len(response.get("labels", [])) == len([c for c in response.get("claims", []) if c.strip()])


def sample_pairs(pairs: list, k: int, seed: int, key: str) -> list:
    """At most k of one instruction's pairs, drawn with a random stream of its own (seed, key),
    so the draw does not depend on the other instructions."""
    if len(pairs) <= k:
        return list(pairs)
    return random.Random(f"{seed}/{key}").sample(pairs, k)


def _words(text: str) -> int:
    return len(text.split())


def balance_lengths(pairs: list[dict]) -> tuple[float, list[dict]]:
    """The threshold t on 0, 0.02, ..., 0.98 whose kept pairs (those with (len_rej - len_ch) /
    len_rej <= t, and chosen != rejected) have the closest average lengths, relative to the
    rejected average; returns (t, kept). The first t wins a tie."""
    best = None
    for threshold in THRESHOLDS:
        kept = [
            p
            for p in pairs
            if p["chosen"] != p["rejected"]
            and _words(p["rejected"])
            and (_words(p["rejected"]) - _words(p["chosen"])) / _words(p["rejected"]) <= threshold
        ]
        if not kept:
            continue
        chosen = sum(_words(p["chosen"]) for p in kept) / len(kept)
        rejected = sum(_words(p["rejected"]) for p in kept) / len(kept)
        gap = abs(chosen - rejected) / rejected
        if best is None or gap < best[0]:
            best = (gap, threshold, kept)
    return (best[1], best[2]) if best else (0.0, [])


def build_pairs(responses: list[dict], k: int = 2, gap: int = 1, seed: int = 0) -> tuple[list[dict], dict]:
    """Pair records from scored responses (each with ds_question_id, question, image_path, answer,
    claims, labels, score), and a summary of what was kept and dropped."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for response in responses:
        groups[group_key(response)].append(response)
    candidates, insane, drawn = 0, 0, []
    for key, members in groups.items():
        pairs = enumerate_pairs(members, gap)
        candidates += len(pairs)
        kept = [p for p in pairs if sane(p[0]) and sane(p[1])]
        insane += len(pairs) - len(kept)
        drawn += [_record(c, r) for c, r in sample_pairs(kept, k, seed, key)]
    threshold, balanced = balance_lengths(drawn)
    summary = {
        "instructions": len(groups),
        "responses": len(responses),
        "candidate_pairs": candidates,
        "dropped_sanity": insane,
        "sampled": len(drawn),
        "length_threshold": threshold,
        "kept": len(balanced),
        "dropped_length": len(drawn) - len(balanced),
    }
    if balanced:
        summary["avg_words_chosen"] = sum(_words(p["chosen"]) for p in balanced) / len(balanced)
        summary["avg_words_rejected"] = sum(_words(p["rejected"]) for p in balanced) / len(balanced)
    return balanced, summary


def _record(chosen: dict, rejected: dict) -> dict:
    return {
        "image_path": chosen["image_path"],
        "ds_question_id": chosen["ds_question_id"],
        "question": chosen["question"],
        "chosen": chosen["answer"],
        "rejected": rejected["answer"],
        "org_infos": {
            "chosen": {k: chosen.get(k) for k in ("claims", "questions", "labels", "score")},
            "rejected": {k: rejected.get(k) for k in ("claims", "questions", "labels", "score")},
        },
    }
