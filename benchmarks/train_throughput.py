"""Training throughput of `mixcore train` beside a hand-written Paddle loop on the same model.

Both paths train qwen_vl/tiny (random init) on the same generated shapes batches with AdamW at a
constant learning rate, in this process, one after the other. Tokens are the non-padding tokens
of each batch (image tokens included). The table's overhead column is the share of throughput
mixcore's path loses to the hand loop. Run: `python benchmarks/train_throughput.py`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))
os.environ.setdefault("MKL_DEBUG_CPU_TYPE", "5")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2, help="alternate the two paths N times")
    args = parser.parse_args()

    import numpy as np
    import paddle

    from mixcore import hookimpl
    from mixcore.config import prepare_config
    from mixcore.registry import build_registry
    from mixcore.testing import make_plugin
    from mixcore.train.run import run_training

    work = Path(tempfile.mkdtemp(prefix="mixcore-bench-"))
    registry = build_registry()
    counted = [0]

    @hookimpl(wrapper=True)
    def collate_batch(model_name, features, bundle):
        """Count the real tokens of every batch the run collates (a hook wrapper)."""
        batch = yield
        counted[0] += int(batch["attention_mask"].sum())
        return batch

    counting = build_registry([make_plugin("token_counter", collate_batch)])
    config = {
        "model_name_or_path": "qwen_vl/tiny",
        "model_options": {"random_init": True},
        "dataset": {
            "train": [{"name": "synthetic_shapes", "train_records": 512, "folder": "data"}]
        },
        "output_dir": str(work / "out"),
        "per_device_train_batch_size": args.batch_size,
        "max_steps": args.steps + args.warmup,
        "learning_rate": 1e-3,
        "lr_scheduler_type": "constant",
        "warmup_ratio": 0.0,
        "weight_decay": 0.0,
        "logging_steps": 1000,
        "save_strategy": "no",
        "max_length": 128,
        "disable_tqdm": True,
        "seed": 1,
    }
    # Checked once: the later repeats train into the output folder the first one wrote.
    prepared = prepare_config(config, counting, base_dir=work)

    def mixcore_run() -> tuple[float, int]:
        """Seconds and tokens of the steps after warm-up, timed by a Trainer callback."""
        from paddlenlp.trainer import TrainerCallback

        marks: dict[str, float] = {}

        class Timer(TrainerCallback):
            def on_step_end(self, _args, state, control, **kwargs):
                if state.global_step == args.warmup:
                    marks["start"] = time.perf_counter()
                    marks["tokens"] = counted[0]

        run_training(
            prepared, counting, base_dir=work, report=lambda line: None, callbacks=[Timer()]
        )
        return time.perf_counter() - marks["start"], counted[0] - marks["tokens"]

    def hand_loop() -> tuple[float, int]:
        paddle.seed(1)
        bundle = registry.hook.load_model(
            model_name="qwen_vl", source="qwen_vl/tiny", options={"random_init": True}
        )
        samples = registry.hook.build_dataset(
            dataset_name="synthetic_shapes",
            options={"train_records": 512, "folder": "data"},
            base_dir=str(work),
        )

        class Features(paddle.io.Dataset):
            def __len__(self):
                return len(samples)

            def __getitem__(self, i):
                return registry.hook.preprocess_sample(
                    model_name="qwen_vl", sample=samples[i], bundle=bundle, max_length=128
                )

        loader = paddle.io.DataLoader(
            Features(),
            batch_size=args.batch_size,
            shuffle=True,
            drop_last=True,
            collate_fn=lambda f: registry.hook.collate_batch(
                model_name="qwen_vl", features=f, bundle=bundle
            ),
        )
        model = bundle.model
        model.train()
        opt = paddle.optimizer.AdamW(
            learning_rate=1e-3, parameters=model.parameters(), weight_decay=0.0
        )
        step, tokens, start = 0, 0, 0.0
        while step < args.steps + args.warmup:
            for batch in loader:
                if step >= args.warmup:
                    tokens += int(batch["attention_mask"].sum())
                loss = model(**batch)[0]
                loss.backward()
                opt.step()
                opt.clear_grad()
                step += 1
                if step == args.warmup:  # timing covers the fetch of every timed batch
                    start = time.perf_counter()
                if step == args.steps + args.warmup:
                    break
        return time.perf_counter() - start, tokens

    results: dict[str, list[float]] = {
        "hand-written Paddle loop": [],
        "mixcore train (Trainer)": [],
    }
    for _ in range(args.repeats):
        seconds, tokens = hand_loop()
        results["hand-written Paddle loop"].append(tokens / seconds)
        seconds, tokens = mixcore_run()
        results["mixcore train (Trainer)"].append(tokens / seconds)

    base = float(np.median(results["hand-written Paddle loop"]))
    print(
        f"qwen_vl/tiny, batch {args.batch_size}, {args.steps} timed steps after {args.warmup} "
        f"warm-up, {args.repeats} repeats, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
    )
    print(f"{'path':<28}{'tokens/s (median)':>20}{'overhead':>10}")
    for name, values in results.items():
        value = float(np.median(values))
        print(f"{name:<28}{value:>20,.0f}{(1 - value / base):>10.1%}")


if __name__ == "__main__":
    main()
