"""Does the tiny BLIP-2 learn, and does it look at the image? OPT and T5, plus stage-1 pretraining.

1. `mixcore train` with examples/configs/blip2_shapes_sft.json (tiny BLIP-2 with OPT, random
   init, everything trained: shape and colour questions on generated pictures), then `mixcore
   infer` on the 200 held-out questions, and again on the same questions with the images
   shuffled among them (the control: a model that ignores the image scores the same on both).
2. The same with Flan-T5-style T5 (examples/configs/blip2_t5_shapes_sft.json).
3. `mixcore train` with examples/configs/blip2_shapes_pretrain.json (stage 1: contrastive,
   matching and image-grounded generation losses on generated captions): each loss over the first
   and the last logging interval, from the run's log_history.json.

Every step runs the real command in a subprocess. Run: `python benchmarks/blip2_learning.py`
(about 15 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import tempfile
from pathlib import Path

from learning import accuracy, mixcore  # the Qwen-VL benchmark's runner and scorer

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "examples" / "configs"
RUNS = {
    "OPT": ("blip2_shapes_sft.json", "output/blip2_shapes_sft"),
    "T5": ("blip2_t5_shapes_sft.json", "output/blip2_t5_shapes_sft"),
}
PRETRAIN = ("blip2_shapes_pretrain.json", "output/blip2_shapes_pretrain")
TEST = ".mixcore-data/shapes-demo/test.json"


def shuffled_copy(test: Path) -> Path:
    """The test questions with every image moved to another question (a seeded derangement)."""
    records = json.loads(test.read_text())
    image = re.compile(r"<img>(.*?)</img>")
    paths = [image.search(r["conversations"][0][0]).group(1) for r in records]
    order = list(range(len(paths)))
    random.Random(0).shuffle(order)
    moved = {order[i]: paths[order[(i + 1) % len(order)]] for i in range(len(order))}
    for i, record in enumerate(records):
        turn = record["conversations"][0]
        turn[0] = image.sub(f"<img>{moved[i]}</img>", turn[0], count=1)
    out = test.with_name("test_shuffled_images.json")
    out.write_text(json.dumps(records))
    return out


def loss_terms(history: Path) -> dict[str, tuple[float, float]]:
    rows = [h for h in json.loads(history.read_text()) if "loss/itc" in h]
    return {k: (rows[0][f"loss/{k}"], rows[-1][f"loss/{k}"]) for k in ("itc", "itm", "itg")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, help="keep outputs here (default: a temp folder)")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="mixcore-blip2-learning-"))
    work.mkdir(parents=True, exist_ok=True)
    for name, _ in (*RUNS.values(), PRETRAIN):
        shutil.copy(CONFIGS / name, work / name)

    rows = []
    for family, (config, output) in RUNS.items():
        seconds = mixcore("train", "--config", config, cwd=work)
        test = work / TEST
        answers = work / f"{family}.jsonl"
        mixcore("infer", "--model", output, "--data", str(test), "--output", str(answers), cwd=work)
        control = work / f"{family}-shuffled.jsonl"
        shuffled = shuffled_copy(test)
        mixcore(
            "infer", "--model", output, "--data", str(shuffled), "--output", str(control), cwd=work
        )
        overall, kinds = accuracy(answers)
        rows.append((family, seconds, overall, accuracy(control)[0], kinds))

    seconds = mixcore("train", "--config", PRETRAIN[0], cwd=work)
    terms = loss_terms(work / PRETRAIN[1] / "log_history.json")

    print(f"{'tiny BLIP-2 SFT':<18}{'train s':>9}{'accuracy':>10}{'shuffled':>10}  per question")
    for family, secs, acc, control, kinds in rows:
        detail = ", ".join(f"{k!r}: {v:.1%}" for k, v in sorted(kinds.items()))
        print(f"{family:<18}{secs:>9.0f}{acc:>10.1%}{control:>10.1%}  {detail}")
    print("chance: 25% (four shapes, four colours)")
    print(f"stage-1 pretraining ({seconds:.0f} s): first -> last logged interval")
    for name, (first, last) in terms.items():
        print(f"  loss/{name}: {first:.4f} -> {last:.4f}")
    print(f"outputs in {work}")


if __name__ == "__main__":
    main()
