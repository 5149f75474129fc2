"""MIXToken packing against unpacked batches of 1, 4 and 16 on the same skewed samples.

Generates 64 ``messages``-form records with Pillow-drawn pictures whose lengths (image tokens
included, as qwen_vl/tiny measures them) are spread over 311-720 tokens, most near the short
end. Then trains qwen_vl/tiny (random init) through `mixcore train`'s own code path
(:func:`mixcore.train.run.run_training`) on them, for ``--epochs`` epochs each:

* unpacked, ``per_device_train_batch_size`` 1, 4 and 16 (each batch right-padded to its
  longest sample);
* packed (``mixtoken``) into sequences of at most ``--max-length`` (2048) tokens, one pack per
  step. qwen_vl attends per packed segment (:mod:`mixcore.kit.nn.segment_attention`), so
  attention costs the sum of the samples' squared lengths, not the square of the pack's.

Every epoch processes each sample once in every mode; the first epoch is warm-up, the others
are timed and the fastest counts (other work on the machine only ever slows an epoch down).
*Real* tokens are non-padding tokens (image tokens included): per epoch, the sum of the sample
lengths. Padding share (of the collated ``input_ids`` slots) and steps are counted by a
``collate_batch`` hook wrapper. ``--dense-mask-too`` adds a packed run whose batches carry the
dense ``[len, len]`` block-diagonal mask instead of segment ids (how packing ran before). Prints
one row per mode and the ratio of packed real tokens/s to the best unpacked batch size. Run:
``OMP_NUM_THREADS=2 python benchmarks/packing.py`` (about 4 minutes on two cores). That packed
samples keep their unpacked losses and gradients is a test
(``tests/qwen_vl/test_qwen_vl_packing.py``, ``tests/core/test_segment_attention.py``), not
part of this timing.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))
os.environ.setdefault("MKL_DEBUG_CPU_TYPE", "5")

WORDS = ["red", "blue", "green", "small", "large", "circle", "square", "triangle", "left"]
WORDS += ["right", "top", "bottom", "the", "a", "is"]
QUESTION = "<image>\nDescribe everything in detail."


def target_lengths(n: int, low: int, high: int, seed: int) -> list[int]:
    """``n`` lengths in ``[low, high]``, skewed towards ``low`` (a squared uniform draw), with
    both ends present."""
    rng = random.Random(seed)
    lengths = [low + round((high - low) * rng.random() ** 2) for _ in range(n)]
    lengths[0], lengths[-1] = low, high
    return lengths


def make_dataset(folder: Path, lengths: list[int], measure, seed: int) -> tuple[Path, list[int]]:
    """A data file whose records measure ``lengths`` (``measure(words) -> tokens``); returns it
    and the lengths reached."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    records, reached = [], []
    for i, want in enumerate(lengths):
        path = folder / "images" / f"{i:03d}.png"
        image = Image.new("RGB", (56, 56), "white")
        x, y = rng.randint(0, 30), rng.randint(0, 30)
        colour = rng.choice([(200, 30, 30), (30, 30, 200), (30, 160, 30)])
        ImageDraw.Draw(image).rectangle([x, y, x + 20, y + 20], fill=colour)
        image.save(path)
        words = [rng.choice(WORDS) for _ in range(want)]
        low, high = 1, want  # every word is at least one token: the answer lies in between
        while low < high:
            mid = (low + high + 1) // 2
            if measure(" ".join(words[:mid])) <= want:
                low = mid
            else:
                high = mid - 1
        answer = " ".join(words[:low])
        reached.append(measure(answer))
        records.append(
            {
                "messages": [
                    {"role": "user", "content": QUESTION},
                    {"role": "assistant", "content": answer},
                ],
                "images": [f"images/{path.name}"],
            }
        )
    data = folder / "train.json"
    data.write_text(json.dumps(records))
    return data, reached


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--shortest", type=int, default=311)
    parser.add_argument("--longest", type=int, default=720)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--epochs", type=int, default=4, help="the first one is warm-up")
    parser.add_argument(
        "--dense-mask-too",
        action="store_true",
        help="also time packing with the dense block-diagonal len x len mask (the old way)",
    )
    args = parser.parse_args()

    from paddlenlp.trainer import TrainerCallback

    from mixcore import hookimpl
    from mixcore.api.records import IMAGE_PLACEHOLDER, Message, Sample
    from mixcore.config import prepare_config
    from mixcore.kit.packing import block_diagonal_causal_mask
    from mixcore.registry import build_registry
    from mixcore.testing import make_plugin
    from mixcore.train.run import run_training

    model_options = {"random_init": True}
    counts = {"steps": 0, "real": 0, "slots": 0}
    dense = {"on": False}

    @hookimpl(wrapper=True)
    def collate_batch(model_name, features, bundle):
        """Count the steps and the real and total token slots of every batch collated (and
        with ``dense["on"]``, replace packed segment ids by the dense mask)."""
        batch = yield
        if dense["on"] and "segment_ids" in batch:
            batch["attention_mask"] = block_diagonal_causal_mask(batch.pop("segment_ids"))
        counts["steps"] += 1
        counts["real"] += sum(len(f["input_ids"]) for f in features)
        counts["slots"] += int(batch["input_ids"].size)
        return batch

    registry = build_registry([make_plugin("token_counter", collate_batch)])
    bundle = registry.hook.load_model(
        model_name="qwen_vl", source="qwen_vl/tiny", options=model_options
    )
    question = QUESTION.replace("<image>", IMAGE_PLACEHOLDER)

    def measure(answer: str) -> int:
        sample = Sample(
            [Message("user", question), Message("assistant", answer)], [Path("unused.png")]
        )
        return registry.hook.sample_length(model_name="qwen_vl", sample=sample, bundle=bundle)

    with tempfile.TemporaryDirectory(prefix="mixcore-packing-") as folder:
        work = Path(folder)
        wanted = target_lengths(args.samples, args.shortest, args.longest, seed=0)
        data, lengths = make_dataset(work / "data", wanted, measure, seed=0)
        total = sum(lengths)

        def run(batch: int, packed: bool, dense_mask: bool = False) -> dict[str, float]:
            ends: list[float] = []
            dense["on"] = dense_mask

            class Timer(TrainerCallback):
                def on_epoch_end(self, _args, state, control, **kwargs):
                    ends.append(time.perf_counter())

                def on_train_end(self, _args, state, control, **kwargs):
                    if len(ends) < args.epochs:
                        ends.append(time.perf_counter())

            config = {
                "model_name_or_path": "qwen_vl/tiny",
                "model_options": {
                    **model_options,
                    "config_overrides": {
                        "seq_length": args.max_length,
                        "max_position_embeddings": args.max_length,
                    },
                },
                "dataset": {"train": [{"name": "chatml_dataset", "data_files": str(data)}]},
                "output_dir": str(
                    work / f"{'packed' if packed else 'unpacked'}-{batch}-{dense_mask}"
                ),
                "mixtoken": packed,
                "max_length": args.max_length,
                "per_device_train_batch_size": batch,
                "num_train_epochs": args.epochs,
                "learning_rate": 1e-4,
                "logging_steps": 100000,
                "save_strategy": "no",
                "disable_tqdm": True,
                "benchmark": True,
                "seed": 1,
            }
            counts.update(steps=0, real=0, slots=0)
            lines: list[str] = []
            prepared = prepare_config(config, registry, base_dir=work)
            run_training(
                prepared, registry, base_dir=work, report=lines.append, callbacks=[Timer()]
            )
            # The fastest timed epoch: other work on the machine only ever slows one down.
            seconds = min(b - a for a, b in itertools.pairwise(ends))
            return {
                "mode": ("packed, dense mask" if dense_mask else "packed")
                if packed
                else "unpacked",
                "batch": batch,
                "steps": counts["steps"] / args.epochs,
                "real_per_s": total / seconds,
                "padding": 1 - counts["real"] / counts["slots"],
                "seconds": seconds,
            }

        results = [run(batch, packed=False) for batch in args.batches]
        results.append(run(1, packed=True))
        packed = results[-1]
        if args.dense_mask_too:
            results.append(run(1, packed=True, dense_mask=True))
        best = max((r for r in results if r["mode"] == "unpacked"), key=lambda r: r["real_per_s"])
        print(
            f"qwen_vl/tiny (random init), {args.samples} samples of {min(lengths)}-{max(lengths)} "
            f"tokens (image tokens included; {total:,} in all), packed into max_length "
            f"{args.max_length}; fastest of {args.epochs - 1} timed epochs after 1 warm-up, "
            f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
        )
        print(
            f"{'mode':<20}{'batch':>6}{'steps/epoch':>13}{'padding':>10}{'s/epoch':>10}"
            f"{'real tokens/s':>15}"
        )
        for r in results:
            print(
                f"{r['mode']:<20}{r['batch']:>6}{r['steps']:>13.0f}{r['padding']:>10.1%}"
                f"{r['seconds']:>10.2f}{r['real_per_s']:>15,.0f}"
            )
        print(
            f"packed / best unpacked (batch {best['batch']}): "
            f"{packed['real_per_s'] / best['real_per_s']:.2f}x"
        )


if __name__ == "__main__":
    main()
