"""What a run folder holds, and how to read it without Paddle.

`mixcore train` writes one output folder: its lock (:data:`LOCK_FILE`), its run record
(:data:`RUN_RECORD`: the files the run wrote, and whether it finished), ``checkpoint-N`` folders
each sealed by a completeness record (:data:`RECORD_FILE`), and hidden staging folders
(:data:`STAGING_PREFIX`) that are never resumed from. ``mixcore validate`` reads the folder to
check what a run would overwrite or resume (:mod:`mixcore.config.run_checks`); the run writes it
(:mod:`mixcore.train.output`, :mod:`mixcore.train.checkpoints`); ``infer`` and ``merge-lora``
refuse an unfinished one. This module holds the layout and the readers all of them share, so the
config layer never imports the training code.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixcore.api.errors import UsageError

#: What mixcore itself keeps in an output folder besides the model and logs it writes.
RUN_RECORD = "mixcore_run.json"
LOCK_FILE = ".mixcore.lock"
#: A checkpoint's completeness record, written last before the folder is renamed into place.
RECORD_FILE = "mixcore_checkpoint.json"
RECORD_FORMAT = 1
STAGING_PREFIX = ".partial-"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
#: Files PaddleNLP pickles into a checkpoint; never kept in one mixcore writes, never loaded.
PICKLED_STATE = ("rng_state.pth", "scheduler.pdparams", "scaler.pdparams", "training_args.bin")


class CheckpointError(UsageError):
    """A checkpoint that cannot be resumed from (missing, incomplete, or of another run)."""


@dataclass(frozen=True)
class CheckpointStatus:
    path: Path
    step: int
    complete: bool
    reason: str  # why it is not complete; empty when it is
    record: dict[str, Any] | None


def read_run_record(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / RUN_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def foreign_entries(output_dir: Path) -> list[str]:
    """Top-level entries of ``output_dir`` that no mixcore run recorded as its own."""
    owned: set[str] = {RUN_RECORD, LOCK_FILE}
    record = output_dir / RUN_RECORD
    if record.is_file():
        try:
            data = json.loads(record.read_text(encoding="utf-8"))
            owned.update(str(n) for n in data.get("files", []))
        except (OSError, ValueError, AttributeError):
            pass
    return sorted(
        entry.name
        for entry in output_dir.iterdir()
        if entry.name not in owned
        and not CHECKPOINT_PATTERN.match(entry.name)
        and not entry.name.startswith(STAGING_PREFIX)
    )


def unfinished_run(folder: Path) -> str | None:
    """Why the model files in ``folder`` are not to be used, or None when they are."""
    record = read_run_record(folder)
    if record and record.get("status") != "finished":
        return (
            f"{folder} is the output folder of a mixcore train that has not finished (its "
            f"{RUN_RECORD} says {record.get('status')!r}); use one of its complete "
            "checkpoint-N folders, or resume the run"
        )
    return None


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
    from mixcore.kit.weights import safetensors_problem  # NumPy: only when a record is read

    for name in record.get("files") or {}:
        if name.endswith(".safetensors"):
            problem = safetensors_problem(folder / name)
            if problem:
                return incomplete(f"{name} is corrupt ({problem})", record)
    pickles = [n for n in PICKLED_STATE if (folder / n).exists()]
    if pickles:
        return incomplete(f"it holds pickle files ({', '.join(pickles)}) that mixcore never loads")
    return CheckpointStatus(folder, int(record.get("global_step", step)), True, "", record)


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


def run_description(
    config: dict[str, Any], model_name: str, targets: list[str] | None = None
) -> dict[str, Any]:
    """What a checkpoint records about its run, and what resuming must keep equal."""
    lora = bool(config["lora"])
    described: dict[str, Any] = {"model": model_name, "lora": lora}
    if lora:
        described["lora_rank"] = config["lora_rank"]
        described["lora_target_modules"] = targets or config.get("lora_target_modules")
    return described
