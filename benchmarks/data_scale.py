"""Start-up cost of a run against the size of its data: 1k to 1M chatml records.

Generates chatml files of 1k, 10k, 100k and 1M records (questions and answers of varied length,
all pointing at a few shared pictures), then, per size and with packing off and on, runs
``mixcore train`` for one step (qwen_vl/tiny, random init, max_length 1024, batch 8) twice with
the same processed-data cache folder: *cold* (a fresh cache: every record read, checked and, for
packing, measured) and *cached* (the second run). It prints the wall time from starting the
command to the end of its first step (Python and Paddle start-up and model building included, as
a user waits for them) and the peak resident memory of the process.

    python benchmarks/data_scale.py                      # 1k, 10k, 100k, 1M
    python benchmarks/data_scale.py --sizes 1000 10000   # a quicker look
    python benchmarks/data_scale.py --cached-only        # reuse the cache of an earlier run
    python benchmarks/data_scale.py --dry-run            # also time --dry-run over the largest
    python benchmarks/data_scale.py --resume-at 60000    # also time a resume at that step

``--resume-at STEP`` times resuming a packed run of the largest size at a late step, against an
uninterrupted run over the same steps. Training 60,000 steps first would take hours here, so the
starting point is a real checkpoint of step 1 renumbered as step STEP (trainer state, scheduler
and mixcore's record say STEP; weights, optimizer and RNG states are step 1's). From there run
*U* trains steps STEP+1 and STEP+2 without stopping, saving both; run *R* resumes from U's
checkpoint of step STEP+1 and trains step STEP+2. R must log the loss U logged at step STEP+2,
and its time from the command's start to that step is the resume cost: reading the cached data,
loading the checkpoint and placing the sampler at step STEP+1 of its epoch (no batch replayed).

It ends with the time of planning packs over 1M and 10M lengths.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

WORDS = [
    "the",
    "a",
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
    "of",
    "in",
    "is",
    "picture",
    "shows",
    "there",
    "one",
    "two",
    "three",
    "near",
    "far",
    "above",
    "below",
    "bright",
    "dark",
    "corner",
    "middle",
]


def make_records(folder: Path, n: int, seed: int = 0) -> Path:
    """``folder/train_<n>.json``: ``n`` chatml records over 16 shared pictures (made once)."""
    path = folder / f"train_{n}.json"
    if path.is_file():
        return path
    from PIL import Image, ImageDraw

    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    colours = [(200, 30, 30), (30, 30, 200), (30, 160, 30), (200, 160, 30)]
    for i in range(16):
        picture = Image.new("RGB", (56, 56), "white")
        x, y = 4 + 3 * i, 30 - i
        ImageDraw.Draw(picture).rectangle([x % 36, y, x % 36 + 16, y + 16], fill=colours[i % 4])
        picture.save(images / f"{i:02d}.png")
    rng = random.Random(seed)
    staging = path.with_suffix(".partial")
    with open(staging, "w", encoding="utf-8") as out:
        out.write("[")
        for i in range(n):
            question = " ".join(rng.choices(WORDS, k=rng.randint(4, 24)))
            answer = " ".join(
                rng.choices(WORDS, k=rng.randint(2, 300 if rng.random() < 0.2 else 60))
            )
            record = {
                "image": f"images/{rng.randrange(16):02d}.png",
                "conversations": [[question + "?", answer + "."]],
            }
            out.write(("," if i else "") + json.dumps(record))
        out.write("]")
    staging.replace(path)
    return path


def config_for(data: Path, work: Path, packing: bool, **overrides: object) -> Path:
    config = {
        "model_name_or_path": "qwen_vl/tiny",
        "model_options": {"random_init": True},
        "dataset": {"train": [{"name": "chatml_dataset", "data_files": str(data)}]},
        "mixtoken": packing,
        "max_length": 1024,
        "per_device_train_batch_size": 8,
        "max_steps": 1,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "output_dir": str(work / "out"),
        "overwrite_output_dir": True,
        **{k: str(v) if isinstance(v, Path) else v for k, v in overrides.items()},
    }
    # In ``work`` always: the cache key holds the config's folder, which relative paths start at.
    name = f"config_{data.stem}_{'packed' if packing else 'plain'}"
    run = overrides.get("output_dir")
    path = work / f"{name}{'_' + Path(str(run)).name if run else ''}.json"
    path.write_text(json.dumps(config, indent=1))
    return path


def run_once(config: Path, cache: Path, first: str = "step 1/") -> tuple[float, float, str]:
    """(seconds to the end of the first step, peak RSS in MB, the output); ``first`` is how
    that step's line starts."""
    env = {**os.environ, "MIXCORE_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "2"}
    mixcore = Path(sys.executable).with_name("mixcore")
    command = [str(mixcore), "train", "--config", str(config)]
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    lines, seconds = [], float("nan")
    for raw in process.stdout:
        line = raw.decode("utf-8", "replace").rstrip()
        lines.append(line)
        if line.startswith(first) and seconds != seconds:
            seconds = time.perf_counter() - start
    _, status, usage = os.wait4(process.pid, 0)
    output = "\n".join(lines)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{output[-3000:]}")
    return seconds, usage.ru_maxrss / 1024, output


def dry_run_seconds(config: Path, cache: Path) -> float:
    """Seconds of ``mixcore train --dry-run`` (every sample checked) with ``cache``."""
    env = {**os.environ, "MIXCORE_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "2"}
    mixcore = Path(sys.executable).with_name("mixcore")
    start = time.perf_counter()
    done = subprocess.run(
        [str(mixcore), "train", "--config", str(config), "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"dry run failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return time.perf_counter() - start


def renumber_checkpoint(source: Path, target: Path, step: int, learning_rate: float) -> None:
    """Copy the checkpoint ``source`` to ``target`` as a checkpoint of ``step``.

    The trainer state, the (constant) schedule and mixcore's completeness record are rewritten
    to say ``step``; every file keeps its content otherwise, and the record its sizes."""
    shutil.copytree(source, target)
    state_file = target / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state.update(global_step=step, log_history=[])
    state_file.write_text(json.dumps(state, indent=2))
    (target / "scheduler.json").write_text(
        json.dumps({"last_epoch": step, "last_lr": learning_rate})
    )
    record_file = target / "mixcore_checkpoint.json"
    record = json.loads(record_file.read_text())
    record["global_step"] = step
    for name in record["files"]:
        record["files"][name] = (target / name).stat().st_size
    record_file.write_text(json.dumps(record, indent=1))


def logged_losses(run: Path) -> dict[int, float]:
    """Step -> training loss of the run in ``run`` (its log_history.json, full precision)."""
    history = json.loads((run / "log_history.json").read_text())
    return {h["step"]: h["loss"] for h in history if "loss" in h and "step" in h}


def sampler_resumes_in_order(items: int, step: int, batch: int, seed: int = 42) -> bool:
    """Whether mixcore's sampler, placed at ``step`` as a resume places it, yields the batch an
    uninterrupted pass over the epochs reaches there (indices only: no data is read)."""
    from mixcore.train.trainer import epoch_order_sampler

    def sampler() -> object:
        return epoch_order_sampler(
            range(items), batch_size=batch, seed=seed, drop_last=False, num_replicas=1, rank=0
        )

    walking, batches = sampler(), 0
    while True:
        for indices in walking:
            if batches == step:
                resumed = sampler()
                resumed.set_epoch(consumed_samples=step * batch)
                return next(iter(resumed)) == indices
            batches += 1


def resume_row(data: Path, work: Path, cache: Path, step: int) -> None:
    """Print the resume cost at ``step`` and whether it trains what the uninterrupted run did."""
    learning_rate = 1e-3
    common = {"lr_scheduler_type": "constant", "learning_rate": learning_rate}
    root = work / "resume"
    shutil.rmtree(root, ignore_errors=True)
    seed = root / "seed"
    run_once(
        config_for(
            data, work, True, output_dir=seed, save_strategy="steps", save_steps=1, **common
        ),
        cache,
    )
    uninterrupted, resumed = root / "uninterrupted", root / "resumed"
    uninterrupted.mkdir(parents=True)
    renumber_checkpoint(
        seed / "checkpoint-1", uninterrupted / f"checkpoint-{step}", step, learning_rate
    )
    u_config = config_for(
        data,
        work,
        True,
        output_dir=uninterrupted,
        save_strategy="steps",
        save_steps=1,
        max_steps=step + 2,
        resume_from_checkpoint=True,
        **common,
    )
    u_seconds, _, output = run_once(u_config, cache, first=f"step {step + 1}/")
    packs = int(re.search(r"packed into ([\d,]+) sequences", output).group(1).replace(",", ""))
    resumed.mkdir()
    shutil.copytree(uninterrupted / f"checkpoint-{step + 1}", resumed / f"checkpoint-{step + 1}")
    r_config = config_for(
        data,
        work,
        True,
        output_dir=resumed,
        save_strategy="no",
        max_steps=step + 2,
        resume_from_checkpoint=True,
        **common,
    )
    r_seconds, r_rss, _ = run_once(r_config, cache, first=f"step {step + 2}/")
    u_loss, r_loss = logged_losses(uninterrupted)[step + 2], logged_losses(resumed)[step + 2]
    print(f"resume of a {data.stem[6:]}-record packed run ({packs:,} packs, cached):")
    print(f"  from step {step:,}, to the end of step {step + 1:,}: {u_seconds:.1f} s")
    print(
        f"  from step {step + 1:,}, to the end of step {step + 2:,}: {r_seconds:.1f} s, {r_rss:.0f} MB"
    )
    in_order = sampler_resumes_in_order(packs, step + 1, 8)
    print(
        f"  batch of step {step + 2:,} after the resume "
        f"{'is' if in_order else 'is NOT'} the uninterrupted order's"
    )
    verdict = "equal" if r_loss == u_loss else f"DIFFERENT by {abs(r_loss - u_loss):.3g}"
    print(
        f"  loss at step {step + 2:,}: uninterrupted {u_loss:.8f}, resumed {r_loss:.8f} ({verdict})"
    )


def plan_seconds(n: int) -> float:
    """Seconds to plan packs for ``n`` lengths of 40-900 tokens into 2048."""
    import numpy as np

    from mixcore.kit.pack_plan import plan_pack_array

    lengths = np.random.default_rng(0).integers(40, 900, n)
    start = time.perf_counter()
    plan_pack_array(lengths, 2048, 0)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000, 1_000_000])
    parser.add_argument("--work", type=Path, default=Path("/tmp/mixcore-data-scale"))
    parser.add_argument("--packing", choices=["both", "on", "off"], default="both")
    parser.add_argument("--cached-only", action="store_true", help="keep earlier caches")
    parser.add_argument(
        "--dry-run", action="store_true", help="also time --dry-run over the largest size"
    )
    parser.add_argument(
        "--resume-at",
        type=int,
        metavar="STEP",
        help="also time a resume at STEP of a packed run over the largest size",
    )
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    modes = {"both": [False, True], "on": [True], "off": [False]}[args.packing]
    rows = []
    print(
        f"{'records':>9} {'packing':>8} {'cold s':>8} {'cold MB':>8} {'cached s':>9} {'cached MB':>10}"
    )
    for n in args.sizes:
        data = make_records(args.work / "data", n)
        for packing in modes:
            config = config_for(data, args.work, packing)
            cache = args.work / f"cache_{n}_{'packed' if packing else 'plain'}"
            cold = (float("nan"), float("nan"))
            if not args.cached_only:
                shutil.rmtree(cache, ignore_errors=True)
                seconds, rss, _ = run_once(config, cache)
                cold = (seconds, rss)
            seconds, rss, _ = run_once(config, cache)
            rows.append((n, packing, *cold, seconds, rss))
            print(
                f"{n:>9,} {'on' if packing else 'off':>8} {cold[0]:>8.1f} {cold[1]:>8.0f} "
                f"{seconds:>9.1f} {rss:>10.0f}",
                flush=True,
            )
    if args.dry_run:
        n = max(args.sizes)
        data = make_records(args.work / "data", n)
        config = config_for(data, args.work, True)
        cache = args.work / f"cache_{n}_packed"
        print(
            f"--dry-run over {n:,} records (packed, cached): {dry_run_seconds(config, cache):.1f} s"
        )
    if args.resume_at:
        n = max(args.sizes)
        resume_row(
            make_records(args.work / "data", n),
            args.work,
            args.work / f"cache_{n}_packed",
            args.resume_at,
        )
    for n in (1_000_000, 10_000_000):
        print(f"plan_pack_array over {n:,} lengths: {plan_seconds(n):.2f} s")
    by = {(n, p): rss for n, p, *_, rss in rows}
    for packing in modes:
        if (10_000, packing) in by and (1_000_000, packing) in by:
            ratio = by[(1_000_000, packing)] / by[(10_000, packing)]
            print(f"cached peak RSS 1M / 10k, packing {'on' if packing else 'off'}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
