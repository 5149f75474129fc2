"""Writing checkpoints that are complete or recognisably not, hold no pickle, and say what they are.

The layout and the readers (:func:`~mixcore.run_folder.status`, resume resolution,
compatibility checks) are :mod:`mixcore.run_folder`'s, which ``mixcore validate`` uses too; this
module is the writing side, used by the trainer. A checkpoint is written into a hidden staging folder (``.partial-checkpoint-N``), every file is
flushed to disk, a completeness record (:data:`RECORD_FILE`: the files and their sizes, the step,
what was trained) is written last, and only then is the folder renamed to ``checkpoint-N``. A
process killed at any moment therefore leaves either a complete ``checkpoint-N`` or a staging
folder that no resume picks. A ``checkpoint-N`` without a valid record (made by another tool,
or by a file system that lost the rename) is reported as incomplete, never resumed from.

PaddleNLP keeps the RNG, scheduler and training-argument state as pickles, which run code when
loaded. Here they are plain JSON; the model and optimizer states are PaddleNLP's safetensors.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mixcore.api.errors import MixcoreError
from mixcore.run_folder import PICKLED_STATE, RECORD_FILE, RECORD_FORMAT, STAGING_PREFIX

RNG_FILE = "rng_state.json"
SCHEDULER_FILE = "scheduler.json"


class CheckpointSaveError(MixcoreError):
    """A checkpoint could not be written (disk full, folder gone); the last complete one stays."""


def fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder``, then the folders themselves, to stable storage."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
    for path in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        fsync_dir(path)


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename, flushed to disk."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def staging_folder(run_dir: Path, step: int) -> Path:
    return run_dir / f"{STAGING_PREFIX}checkpoint-{step}"


def seal(staging: Path, final: Path, meta: dict[str, Any]) -> Path:
    """Drop pickles, record the files, flush, and rename ``staging`` to ``final``."""
    for name in PICKLED_STATE:
        (staging / name).unlink(missing_ok=True)
    files = {
        str(p.relative_to(staging)): p.stat().st_size
        for p in sorted(staging.rglob("*"))
        if p.is_file() and p.name != RECORD_FILE
    }
    fsync_tree(staging)
    write_json_atomic(
        staging / RECORD_FILE, {"format": RECORD_FORMAT, **meta, "complete": True, "files": files}
    )
    if final.exists():  # a checkpoint of the same step from a run this one continues: replace
        shutil.rmtree(final)
    os.replace(staging, final)
    fsync_dir(final.parent)
    return final


# -- plain-JSON forms of the states PaddleNLP pickles --------------------------------------------


def rng_state() -> dict[str, Any]:
    """Python's, NumPy's and Paddle's random generator states as JSON-ready values."""
    import random

    import numpy as np
    import paddle

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "paddle_cpu": _generator_state(paddle.framework.core.default_cpu_generator()),
    }
    if paddle.is_compiled_with_cuda():
        state["paddle_cuda"] = [
            _generator_state(paddle.framework.core.default_cuda_generator(i))
            for i in range(paddle.framework.core.get_cuda_device_count())
        ]
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np
    import paddle

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    _set_generator_state(paddle.framework.core.default_cpu_generator(), state["paddle_cpu"])
    if paddle.is_compiled_with_cuda() and "paddle_cuda" in state:
        for i, saved in enumerate(state["paddle_cuda"]):
            _set_generator_state(paddle.framework.core.default_cuda_generator(i), saved)


def _generator_state(generator: Any) -> list[Any]:
    # GeneratorState pickles through this tuple of ints (pybind11's __getstate__).
    return list(generator.get_state().__getstate__())


def _set_generator_state(generator: Any, saved: Iterable[Any]) -> None:
    kind = type(generator.get_state())
    state = kind.__new__(kind)
    state.__setstate__(tuple(saved))
    generator.set_state(state)
