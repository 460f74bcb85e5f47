"""The paper's hallucination claim in miniature: RLAIF-V on the bundled demo model.

    python scripts/align_demo_model.py --work runs/al [--steps verify,align,eval]

1. verify: the bundled model never learnt yes/no, so it cannot label claims. A stage of
   verification questions about the training scenes ("Is there a small red circle at the top
   left? Please answer yes or no.", each object's own claim and one with an attribute changed)
   mixed with the world's training records, then one of them alone, makes a labeler of it (LLM
   only); it no longer describes scenes, so it labels and the bundled model stays the policy.
2. align: `minicpmv align run` with the bundled model as policy, that labeler, the demo-world
   rule splitter, on "Describe the image." about training scenes only.
3. eval: the demo benchmark sets (the bundled model's test split) and a held-out caption set of
   a world never trained on (seed 23), before and after, with `minicpmv eval run`.
Every step is skipped when its output exists; each command is printed as it runs.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from minicpmv.bundled import demo_model_path  # noqa: E402
from minicpmv.demo.build import split_rng  # noqa: E402
from minicpmv.demo.scenes import random_scene, verify_questions  # noqa: E402

SEED, TRAIN_IMAGES, DOCUMENT_SHARE = 0, 2000, 0.4  # the bundled model's world
VERIFY_REPEATS = 3
HELDOUT_SEED, HELDOUT_IMAGES = 23, 600


def run(*args: str) -> None:
    print("+ " + " ".join(args), flush=True)
    subprocess.run(args, check=True)


def minicpmv(*args: str) -> None:
    run(sys.executable, "-m", "minicpmv", *args)


def train_scenes() -> list[tuple[int, object]]:
    """(index, scene) of the world's training scenes, regenerated from their random streams."""
    scenes = []
    for index in range(TRAIN_IMAGES):
        rng = split_rng(SEED, "train", index)
        if rng.random() >= DOCUMENT_SHARE:
            scenes.append((index, random_scene(rng)))
    return scenes


def verify_stage(work: Path, args) -> Path:
    world = work / "world"
    if not (world / "train.json").exists():
        minicpmv(
            "synth",
            "-o",
            str(world),
            "--seed",
            str(SEED),
            "--train",
            str(TRAIN_IMAGES),
            "--validation",
            "0",
            "--test",
            "0",
            "--document-share",
            str(DOCUMENT_SHARE),
        )
    data = work / "verify" / "stage.json"
    if not data.exists():
        data.parent.mkdir(parents=True, exist_ok=True)
        records = json.loads((world / "train.json").read_text())
        for record in records:
            record["image"] = str((world / record["image"]).resolve())
        for index, scene in train_scenes():
            turns = verify_questions(scene, random.Random(f"verify/{index}"))
            conversation = []
            for number, (question, answer) in enumerate(turns):
                conversation += [
                    {"role": "user", "content": ("<image>\n" if number == 0 else "") + question},
                    {"role": "assistant", "content": answer},
                ]
            record = {
                "id": f"verify-{index}",
                "image": str((world / f"images/train-{index:05d}.png").resolve()),
                "task": "verify",
                "conversations": conversation,
            }
            records += [record] * VERIFY_REPEATS
        data.write_text(json.dumps(records))
    model = work / "verify-sft"
    if not (model / "latest").exists():
        minicpmv(
            "train",
            "--recipe",
            "sft",
            "-m",
            str(demo_model_path()),
            "--data",
            str(data),
            "-o",
            str(model),
            "--max-steps",
            str(args.verify_steps),
            "--batch-size",
            "16",
            "--lr",
            "5e-4",
            "--set",
            "train=[llm]",
            "--set",
            "cache_image_features=true",
        )
    mixed = model / (model / "latest").read_text().strip()
    only, drill = work / "verify" / "verify-only.json", work / "verify-drill"
    if not only.exists():
        seen = {}
        for record in json.loads(data.read_text()):
            if record.get("task") == "verify":
                seen.setdefault(record["id"], record)
        only.write_text(json.dumps(list(seen.values())))
    if not (drill / "latest").exists():
        minicpmv(
            "train",
            "--recipe",
            "sft",
            "-m",
            str(mixed),
            "--data",
            str(only),
            "-o",
            str(drill),
            "--max-steps",
            str(args.drill_steps),
            "--batch-size",
            "16",
            "--lr",
            "1e-3",
            "--set",
            "train=[llm]",
            "--set",
            "cache_image_features=true",
        )
    return drill / (drill / "latest").read_text().strip()


def align_stage(work: Path, policy: Path, labeler: Path, args) -> Path:
    instructions = work / "instructions.jsonl"
    if not instructions.exists():
        world = (work / "world").resolve()
        chosen = train_scenes()[: args.instructions]
        instructions.write_text(
            "".join(
                json.dumps({"image_path": str(world / f"images/train-{i:05d}.png"), "question": "Describe the image."})
                + "\n"
                for i, _ in chosen
            )
        )
    out = work / f"align{args.tag}"
    minicpmv(
        "align",
        "run",
        "-m",
        str(policy),
        "--labeler",
        str(labeler),
        "--instructions",
        str(instructions),
        "-o",
        str(out),
        "--n",
        str(args.n),
        "--temperature",
        "0.7",
        "--max-new-tokens",
        "96",
        "--splitter",
        "demo-rules",
        "--max-steps",
        str(args.dpo_steps),
        "--set",
        "train=[llm]",
        "--set",
        f"learning_rate={args.dpo_lr}",
        "--set",
        "batch_size=8",
        "--set",
        f"dpo_beta={args.beta}",
    )
    dpo = out / "iteration-1" / "dpo"
    return dpo / (dpo / "latest").read_text().strip()


def eval_stage(work: Path, models: dict[str, Path]) -> None:
    heldout = work / "heldout"
    if not (heldout / "demo_caption.tsv").exists():
        minicpmv(
            "synth",
            "--benchmarks",
            "-o",
            str(heldout),
            "--seed",
            str(HELDOUT_SEED),
            "--test",
            str(HELDOUT_IMAGES),
            "--document-share",
            "0",
        )
    for name, model in models.items():
        minicpmv("eval", "run", "-b", "demo", "-m", str(model), "-o", str(work / "eval" / name), "--resume")
        minicpmv(
            "eval",
            "run",
            "-b",
            "demo_caption",
            "--data",
            str(heldout / "demo_caption.tsv"),
            "-m",
            str(model),
            "-o",
            str(work / "eval-heldout" / name),
            "--resume",
        )


def report(work: Path, names: list[str]) -> dict:
    """Held-out hallucination (responses with a wrong object, every attribute counted; Wilson
    95% intervals) and the demo benchmark's headline scores, per model."""
    from minicpmv.demo.evaluate import wilson_interval
    from minicpmv.evaluation.chair import chair_metrics
    from minicpmv.evaluation.tsv import read_table

    table = {}
    for name in names:
        _, rows = read_table(work / "eval-heldout" / name / "demo_caption.tsv")
        metrics, per_row = chair_metrics(rows, "demo_coloured")
        bad = sum(bool(r["wrong_attributes"]) for r in per_row.values())
        low, high = wilson_interval(bad, len(rows))
        entry = {
            "heldout_descriptions": len(rows),
            "attribute_response_rate": 100 * bad / len(rows),
            "interval": [100 * low, 100 * high],
            "attribute_mention_rate": metrics["attribute_mention_rate"],
            "CHAIRs_coloured": metrics["CHAIRs"],
            "CHAIRi_coloured": metrics["CHAIRi"],
            "recall": metrics["recall"],
        }
        for bench in ("demo_yorn", "demo_mcq", "demo_vqa", "demo_caption"):
            scores = json.loads((work / "eval" / name / f"{bench}.scores.json").read_text())["metrics"]
            key = {"demo_mcq": "split=none|Overall", "demo_caption": "attribute_response_rate"}.get(bench, "Overall")
            entry[bench] = scores[key] * (100 if bench == "demo_mcq" else 1)
        table[name] = entry
    (work / "report.json").write_text(json.dumps(table, indent=1))
    print(json.dumps(table, indent=1))
    return table


def verify_accuracy(model: Path, images: int = 160) -> dict:
    """The labeler on the test split's scenes (never trained on), judged as the alignment loop
    judges: each object's own claim (should hold) and, for each attribute, the claim with that
    attribute changed so that no object fits (should be rejected). Share right per kind."""
    import minicpmv
    from minicpmv.alignment.feedback import claim_label
    from minicpmv.alignment.labeler import yes_no_probabilities
    from minicpmv.demo.scenes import COLOURS, PLACES, SHAPES, SIZES, claim_text

    chat = minicpmv.load(model)
    right, total = {}, {}
    for index in range(images):
        rng = split_rng(SEED, "test", index)
        if rng.random() < DOCUMENT_SHARE:
            continue
        scene, draw = random_scene(rng), random.Random(index)
        image, held = scene.render(), {(t.size, t.colour, t.shape, t.place) for t in scene.things}
        for thing in scene.things:
            true = (thing.size, thing.colour, thing.shape, thing.place)
            asked = [("true", true, 1)]
            for slot, kind, values in (
                (0, "size", tuple(SIZES)),
                (1, "colour", tuple(COLOURS)),
                (2, "shape", SHAPES),
                (3, "place", PLACES),
            ):
                changed = list(true)
                changed[slot] = draw.choice([v for v in values if v != true[slot]])
                if tuple(changed) not in held:
                    asked.append((kind, tuple(changed), 0))
            for kind, claim, expected in asked:
                label = claim_label(yes_no_probabilities(chat, image, claim_text(*claim) + " Please answer yes or no."))
                right[kind] = right.get(kind, 0) + (label == expected)
                total[kind] = total.get(kind, 0) + 1
    return {kind: {"right": right[kind], "of": total[kind], "rate": right[kind] / total[kind]} for kind in total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="runs/al")
    parser.add_argument("--steps", default="verify,align,eval")
    parser.add_argument("--verify-steps", type=int, default=400)
    parser.add_argument("--instructions", type=int, default=1000)
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--dpo-steps", type=int, default=250)
    parser.add_argument("--dpo-lr", default="1e-5")
    parser.add_argument("--beta", default="0.1")
    parser.add_argument("--labeler", help="a labeler checkpoint instead of the verification stages' result")
    parser.add_argument("--tag", default="", help="suffix of the align folder and the aligned model's name")
    parser.add_argument(
        "--drill-steps",
        type=int,
        default=300,
        help="then verification questions alone, lr 1e-3 (the mixed stage alone left them at chance)",
    )
    args = parser.parse_args()
    work, steps = Path(args.work), args.steps.split(",")
    labeler = Path(args.labeler) if args.labeler else verify_stage(work, args)
    if "check" in steps:
        for name, model in (("bundled", demo_model_path()), ("labeler", labeler)):
            print(name, json.dumps(verify_accuracy(model)), flush=True)
    # the verification stages cost the labeler its descriptions (it answers "Yes" to "Describe
    # the image."): the bundled model stays the policy, the verifier labels its claims
    models = {"bundled": demo_model_path()}
    if "align" in steps:
        models["aligned" + args.tag] = align_stage(work, demo_model_path(), labeler, args)
    if "eval" in steps:
        eval_stage(work, models)
        report(work, list(models))


if __name__ == "__main__":
    main()
