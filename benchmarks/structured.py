"""Which library constrains decoding to a JSON schema best on a CPU: llguidance, xgrammar and
outlines-core on the same byte-level BPE vocabulary (50k tokens, trained here on Python sources,
the size class of real vocabularies), the same schema and the same answer tokens.

    python benchmarks/structured.py [--vocab 50000] [--repeat 5]

Reports per library: building its tokenizer view, compiling the schema, and the time to compute
one next-token mask (median over the answer's tokens and repeats); each must accept the answer.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sysconfig
import time
from pathlib import Path

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "count": {"type": "integer", "minimum": 0, "maximum": 999},
        "colour": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
        "ok": {"type": "boolean"},
    },
    "required": ["name", "count", "colour", "tags", "ok"],
    "additionalProperties": False,
}
ANSWER = json.dumps({"name": "a red circle", "count": 42, "colour": "red", "tags": ["shape", "round"], "ok": True})


def train_tokenizer(vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    texts = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))[:2000]:
        try:
            texts.append(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<|im_end|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def byte_tokens(tokenizer) -> list[bytes]:
    """Each id's bytes (GPT-2's byte-to-unicode table inverted)."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    out = []
    for i in range(tokenizer.get_vocab_size()):
        token = tokenizer.id_to_token(i)
        out.append(bytes(table[c] for c in token) if all(c in table for c in token) else token.encode())
    return out


def run_llguidance(tokenizer, vocab, eos, answer):
    import llguidance

    start = time.perf_counter()
    llt = llguidance.LLTokenizer(tokenizer.to_str(), n_vocab=vocab, eos_token=eos)
    built = time.perf_counter() - start
    start = time.perf_counter()
    grammar = llguidance.LLMatcher.grammar_from_json_schema(
        json.dumps(SCHEMA), overrides={"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
    )
    matcher = llguidance.LLMatcher(llt, grammar)
    compiled = time.perf_counter() - start

    def step(token):
        matcher.compute_bitmask()
        return matcher.consume_token(token)

    return built, compiled, step, matcher.reset


def run_xgrammar(tokenizer, vocab, eos, answer):
    import xgrammar as xgr

    start = time.perf_counter()
    info = xgr.TokenizerInfo(byte_tokens(tokenizer), xgr.VocabType.RAW, vocab_size=vocab, stop_token_ids=[eos])
    compiler = xgr.GrammarCompiler(info)
    built = time.perf_counter() - start
    start = time.perf_counter()
    grammar = compiler.compile_json_schema(SCHEMA, any_whitespace=False, separators=(", ", ": "))
    matcher = xgr.GrammarMatcher(grammar)
    compiled = time.perf_counter() - start
    bitmask = xgr.allocate_token_bitmask(1, vocab)

    def step(token):
        matcher.fill_next_token_bitmask(bitmask)
        return matcher.accept_token(token)

    return built, compiled, step, matcher.reset


def run_outlines(tokenizer, vocab, eos, answer):
    from outlines_core import Guide, Index, Vocabulary
    from outlines_core.json_schema import build_regex_from_schema

    start = time.perf_counter()
    mapping = {}
    for i, piece in enumerate(byte_tokens(tokenizer)):
        if i != eos:
            mapping.setdefault(piece, []).append(i)
    vocabulary = Vocabulary(eos, mapping)
    built = time.perf_counter() - start
    start = time.perf_counter()
    regex = build_regex_from_schema(json.dumps(SCHEMA), r"[ ]?")  # at most one space: the closest it offers
    index = Index(regex, vocabulary)
    guide = Guide(index)
    compiled = time.perf_counter() - start

    def step(token):
        guide.get_tokens()
        try:
            guide.advance(token)
        except ValueError:  # the answer left its language
            return False
        return True

    return built, compiled, step, guide.reset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=50000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    tokenizer = train_tokenizer(args.vocab)
    vocab, eos = tokenizer.get_vocab_size(), tokenizer.token_to_id("<|im_end|>")
    answer = tokenizer.encode(ANSWER).ids
    print(f"vocabulary {vocab} tokens; answer {len(answer)} tokens: {ANSWER}")
    print("| library | tokenizer view | schema compile | mask per token (median) | accepted the answer |")
    print("| --- | --- | --- | --- | --- |")
    for name, run in (("llguidance", run_llguidance), ("xgrammar", run_xgrammar), ("outlines-core", run_outlines)):
        try:
            built, compiled, step, reset = run(tokenizer, vocab, eos, answer)
        except Exception as exc:  # noqa: BLE001
            print(f"| {name} | failed: {' '.join(str(exc).split())[:80]} | | | |")
            continue
        times, accepted = [], True
        for _ in range(args.repeat):
            reset()
            for token in answer:
                start = time.perf_counter()
                ok = step(token) is not False
                times.append(time.perf_counter() - start)
                if not ok:
                    accepted = False
                    break
        median = statistics.median(times) * 1e6
        print(f"| {name} | {built * 1000:.0f} ms | {compiled * 1000:.1f} ms | {median:.0f} µs | {accepted} |")


if __name__ == "__main__":
    main()
