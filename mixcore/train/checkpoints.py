"""Checkpoints that are complete or recognisably not, hold no pickle, and say what they are.

A checkpoint is written into a hidden staging folder (``.partial-checkpoint-N``), every file is
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
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixcore.api.errors import MixcoreError, UsageError

RECORD_FILE = "mixcore_checkpoint.json"
RECORD_FORMAT = 1
RNG_FILE = "rng_state.json"
SCHEDULER_FILE = "scheduler.json"
STAGING_PREFIX = ".partial-"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
#: Files PaddleNLP pickles into a checkpoint; never kept in one mixcore writes, never loaded.
PICKLED_STATE = ("rng_state.pth", "scheduler.pdparams", "scaler.pdparams", "training_args.bin")


class CheckpointError(UsageError):
    """A checkpoint that cannot be resumed from (missing, incomplete, or of another run)."""


class CheckpointSaveError(MixcoreError):
    """A checkpoint could not be written (disk full, folder gone); the last complete one stays."""


@dataclass(frozen=True)
class CheckpointStatus:
    path: Path
    step: int
    complete: bool
    reason: str  # why it is not complete; empty when it is
    record: dict[str, Any] | None


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


def status(folder: Path) -> CheckpointStatus:
    """Whether ``folder`` is a complete mixcore checkpoint, and if not, why."""
    match = CHECKPOINT_PATTERN.match(folder.name)
    step = int(match.group(1)) if match else -1

    def incomplete(reason: str, record: dict[str, Any] | None = None) -> CheckpointStatus:
        return CheckpointStatus(folder, step, False, reason, record)

    if not folder.is_dir():
        return incomplete("it is not a folder" if folder.exists() else "it does not exist")
    record_path = folder / RECORD_FILE
    if not record_path.is_file():
        if not any(folder.iterdir()):
            return incomplete("it is empty")
        return incomplete(
            f"it has no {RECORD_FILE}: its save did not finish, or another tool wrote it"
        )
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return incomplete(f"its {RECORD_FILE} cannot be read ({exc})")
    if not isinstance(record, dict) or record.get("complete") is not True:
        return incomplete(f"its {RECORD_FILE} does not mark it complete")
    if record.get("format") != RECORD_FORMAT:
        return incomplete(f"its {RECORD_FILE} has format {record.get('format')!r}, not 1")
    for name, size in (record.get("files") or {}).items():
        path = folder / name
        if not path.is_file():
            return incomplete(f"{name} is missing", record)
        if path.stat().st_size != size:
            return incomplete(
                f"{name} is truncated or changed ({path.stat().st_size} bytes, {size} when saved)",
                record,
            )
    for name in record.get("files") or {}:
        if name.endswith(".safetensors"):
            problem = safetensors_problem(folder / name)
            if problem:
                return incomplete(f"{name} is corrupt ({problem})", record)
    pickles = [n for n in PICKLED_STATE if (folder / n).exists()]
    if pickles:
        return incomplete(f"it holds pickle files ({', '.join(pickles)}) that mixcore never loads")
    return CheckpointStatus(folder, int(record.get("global_step", step)), True, "", record)


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file's header, read alone (cheap at any size), or None.

    Checks that the header is a JSON object within the file and that its tensors' byte ranges
    end exactly at the end of the file, which a cut, a stray write over the header, or another
    file under the name would break. Tensor bytes themselves are not checked.
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return "shorter than a header"
        length = int.from_bytes(head, "little")
        if length > size - 8:
            return f"its header claims {length} bytes, more than the file holds"
        try:
            header = json.loads(handle.read(length))
        except (ValueError, UnicodeDecodeError):
            return "its header is not JSON"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    ends = [
        entry["data_offsets"][1]
        for key, entry in header.items()
        if key != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry
    ]
    if max(ends, default=0) != size - 8 - length:
        return "its tensors do not end where the file does"
    return None


def checkpoints_in(run_dir: Path) -> list[CheckpointStatus]:
    """Every ``checkpoint-N`` folder of ``run_dir``, by step."""
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if CHECKPOINT_PATTERN.match(p.name) and p.is_dir()]
    return [status(p) for p in sorted(found, key=lambda p: int(p.name.split("-")[1]))]


def latest_complete(run_dir: Path) -> tuple[CheckpointStatus | None, list[CheckpointStatus]]:
    """The newest complete checkpoint of ``run_dir`` and the incomplete ones newer than it."""
    passed: list[CheckpointStatus] = []
    for found in reversed(checkpoints_in(run_dir)):
        if found.complete:
            return found, passed
        passed.append(found)
    return None, passed


def resolve_resume(value: Any, output_dir: Path) -> Path | None:
    """The checkpoint folder ``resume_from_checkpoint`` names (``true``: the latest complete one
    in ``output_dir``); raises :class:`CheckpointError` saying what is wrong."""
    if value in (None, False, ""):
        return None
    if value is True:
        found, passed = latest_complete(output_dir)
        if found is None:
            why = "; ".join(f"{s.path.name}: {s.reason}" for s in passed)
            raise CheckpointError(
                f"resume_from_checkpoint is true but {output_dir} has no complete checkpoint"
                + (f" ({why})" if why else "")
            )
        return found.path
    folder = Path(value)
    found = status(folder)
    if not found.complete:
        raise CheckpointError(f"cannot resume from {folder}: {found.reason}")
    return folder


def check_compatible(found: CheckpointStatus, run: dict[str, Any]) -> list[str]:
    """How the checkpoint's run differs from this one in what resuming needs to keep."""
    record = found.record or {}
    problems = []
    if record.get("model") != run.get("model"):
        problems.append(f"it trained model {record.get('model')!r}, this run {run.get('model')!r}")
    if bool(record.get("lora")) != bool(run.get("lora")):
        kind = {True: "LoRA", False: "full fine-tuning (SFT)"}
        problems.append(
            f"it is a {kind[bool(record.get('lora'))]} checkpoint and this run is "
            f"{kind[bool(run.get('lora'))]}"
        )
    elif run.get("lora"):
        for key in ("lora_rank", "lora_target_modules"):
            if record.get(key) != run.get(key):
                problems.append(f"its {key} is {record.get(key)!r}, this run's {run.get(key)!r}")
    return problems


def check_tensors(found: CheckpointStatus, expected: dict[str, list[int]]) -> list[str]:
    """Compare the tensor names and shapes saved in the checkpoint with the model's."""
    saved = found.record.get("tensors") if found.record else None
    if not isinstance(saved, dict):
        return []
    problems = []
    missing = sorted(set(expected) - set(saved))
    extra = sorted(set(saved) - set(expected))
    if missing:
        problems.append(f"it lacks {len(missing)} tensor(s) of this model, e.g. {missing[0]}")
    if extra:
        problems.append(f"it has {len(extra)} tensor(s) this model lacks, e.g. {extra[0]}")
    for name in sorted(set(saved) & set(expected)):
        if list(saved[name]) != list(expected[name]):
            problems.append(
                f"{name} has shape {list(saved[name])} there and {list(expected[name])} here"
            )
            break
    return problems


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
