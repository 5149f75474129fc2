"""MIXToken packing against plain padded batches on a skewed length mix.

Generates a chatml dataset of Pillow-drawn pictures where most samples are short (one image and a
short answer, ~40-90 tokens with the image span) and a few are long (a long description, 300-500
tokens), the mix real instruction data tends to have. Then trains qwen_vl/tiny (random init)
through `mixcore train`'s own code path twice, unpacked and with ``mixtoken``, with the same token
budget per batch (``batch`` samples padded to the longest, or ``batch`` packs of ``max_length``),
and prints padding and *real* tokens per second (non-padding tokens, image tokens included),
counted by a ``collate_batch`` hook wrapper. Run: ``python benchmarks/packing.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))
os.environ.setdefault("MKL_DEBUG_CPU_TYPE", "5")

WORDS = [
    "red",
    "blue",
    "green",
    "small",
    "large",
    "circle",
    "square",
    "triangle",
    "left",
    "right",
    "top",
    "bottom",
    "the",
    "a",
    "is",
]


def make_dataset(folder: Path, n: int, long_share: float, seed: int) -> Path:
    """A chatml file of ``n`` records, ``long_share`` of them long, with drawn pictures."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        path = folder / "images" / f"{i:05d}.png"
        image = Image.new("RGB", (56, 56), "white")
        x, y = rng.randint(0, 30), rng.randint(0, 30)
        colour = rng.choice([(200, 30, 30), (30, 30, 200), (30, 160, 30)])
        ImageDraw.Draw(image).rectangle([x, y, x + 20, y + 20], fill=colour)
        image.save(path)
        long = rng.random() < long_share
        words = rng.randint(300, 450) if long else rng.randint(3, 40)
        answer = " ".join(rng.choice(WORDS) for _ in range(words))
        question = "Describe everything in detail." if long else "What is in the picture?"
        records.append({"image": f"images/{path.name}", "conversations": [[question, answer]]})
    data = folder / "train.json"
    data.write_text(json.dumps(records))
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=1500)
    parser.add_argument("--long-share", type=float, default=0.1)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16, help="samples (unpacked) or packs")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    from mixcore import hookimpl
    from mixcore.config import prepare_config
    from mixcore.registry import build_registry
    from mixcore.testing import make_plugin
    from mixcore.train.run import run_training

    work = Path(tempfile.mkdtemp(prefix="mixcore-packing-"))
    data = make_dataset(work / "data", args.samples, args.long_share, seed=0)
    counts = {"real": 0, "slots": 0}

    @hookimpl(wrapper=True)
    def collate_batch(model_name, features, bundle):
        """Count real and total token slots of every batch the run collates."""
        batch = yield
        ids = batch["input_ids"]
        counts["real"] += int((ids != bundle.tokenizer.pad_token_id).sum())
        counts["slots"] += int(ids.size)
        return batch

    registry = build_registry([make_plugin("token_counter", collate_batch)])

    def run(packed: bool) -> dict[str, float]:
        from paddlenlp.trainer import TrainerCallback

        marks: dict[str, float] = {}

        class Timer(TrainerCallback):
            def on_step_end(self, _args, state, control, **kwargs):
                if state.global_step == args.warmup:
                    marks["start"] = time.perf_counter()
                    marks.update(counts)

        lines: list[str] = []
        config = {
            "model_name_or_path": "qwen_vl/tiny",
            "model_options": {"random_init": True},
            "dataset": {"train": [{"name": "chatml_dataset", "data_files": str(data)}]},
            "output_dir": str(work / ("packed" if packed else "padded")),
            "mixtoken": packed,
            "max_length": args.max_length,
            "per_device_train_batch_size": args.batch,
            "max_steps": args.steps + args.warmup,
            "learning_rate": 1e-3,
            "logging_steps": 1000,
            "save_strategy": "no",
            "disable_tqdm": True,
            "seed": 1,
        }
        counts.update(real=0, slots=0)
        prepared = prepare_config(config, registry, base_dir=work)
        run_training(prepared, registry, base_dir=work, report=lines.append, callbacks=[Timer()])
        seconds = time.perf_counter() - marks["start"]
        real = counts["real"] - marks["real"]
        slots = counts["slots"] - marks["slots"]
        packing = next((x.strip() for x in lines if "packed into" in x), "")
        return {
            "real_per_s": real / seconds,
            "padding": 1 - real / slots,
            "real": real,
            "seconds": seconds,
            "note": packing,
        }

    padded = run(packed=False)
    packed = run(packed=True)
    print(
        f"qwen_vl/tiny on {args.samples} samples ({args.long_share:.0%} long), max_length "
        f"{args.max_length}, batch {args.batch}, {args.steps} timed steps after {args.warmup} "
        f"warm-up, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
    )
    print(f"{'mode':<12}{'padding':>10}{'real tokens':>14}{'seconds':>10}{'real tokens/s':>16}")
    for name, r in (("padded", padded), ("mixtoken", packed)):
        print(
            f"{name:<12}{r['padding']:>10.1%}{r['real']:>14,}{r['seconds']:>10.1f}"
            f"{r['real_per_s']:>16,.0f}"
        )
    print(f"speed-up in real tokens/s: {packed['real_per_s'] / padded['real_per_s']:.2f}x")
    print(packed["note"])


if __name__ == "__main__":
    main()
