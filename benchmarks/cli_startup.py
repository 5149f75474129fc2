"""Wall time of `mixcore plugins list` beside bare Python and `import paddlenlp`.

Each command runs in a fresh process, several times; the table shows the median. "first run"
starts with an empty verdict cache (every manifest and entry validated with jsonschema), "cached"
with the cache the previous run left. Run: `make bench` or `python benchmarks/cli_startup.py`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def median_wall(cmd: list[str], runs: int, env: dict[str, str], before=None) -> float:
    times = []
    for _ in range(runs):
        if before:
            before()
        start = time.perf_counter()
        subprocess.run(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True
        )
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--heavy-runs", type=int, default=3, help="runs of `import paddlenlp`")
    args = parser.parse_args()

    script = Path(sys.executable).with_name("mixcore")
    mixcore = [str(script)] if script.exists() else [sys.executable, "-m", "mixcore"]
    cache = Path(tempfile.mkdtemp(prefix="mixcore-bench-"))
    env = {**os.environ, "MIXCORE_CACHE_DIR": str(cache)}
    env.pop("MIXCORE_PLUGINS", None)

    def empty_cache() -> None:
        shutil.rmtree(cache, ignore_errors=True)

    rows = [("python -c pass", median_wall([sys.executable, "-c", "pass"], args.runs, env))]
    rows.append(
        (
            "mixcore plugins list (first run)",
            median_wall([*mixcore, "plugins", "list"], args.runs, env, before=empty_cache),
        )
    )
    rows.append(
        (
            "mixcore plugins list (cached)",
            median_wall([*mixcore, "plugins", "list"], args.runs, env),
        )
    )
    rows.append(("mixcore --help", median_wall([*mixcore, "--help"], args.runs, env)))
    try:
        rows.append(
            (
                'python -c "import paddlenlp"',
                median_wall([sys.executable, "-c", "import paddlenlp"], args.heavy_runs, env),
            )
        )
    except subprocess.CalledProcessError:
        rows.append(('python -c "import paddlenlp"', float("nan")))
    shutil.rmtree(cache, ignore_errors=True)

    base = rows[0][1]
    width = max(len(name) for name, _ in rows)
    print(f"{'command':<{width}}  {'median s':>9}  {'x python':>8}")
    for name, seconds in rows:
        print(f"{name:<{width}}  {seconds:>9.3f}  {seconds / base:>8.1f}")
    print(
        f"\n{args.runs} runs each ({args.heavy_runs} for paddlenlp); target: plugins list < 0.3 s "
        "and < 5x python -c pass"
    )


if __name__ == "__main__":
    main()
