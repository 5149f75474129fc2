"""Checks of where a run writes, what it resumes and what it reports to, made before anything is
loaded or written.

The output folder is the one place `mixcore train` writes. It must never be a folder whose
files belong to the user (the config's folder, a data folder, the base model), and a folder
that already holds files is only written into when the config says what to do with them.
A logger of ``report_to`` needs its package installed; that is checked here too, from package
metadata alone (nothing is imported), so a missing one is a config problem, not a traceback
once the model is loaded.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mixcore.issues import Issue
from mixcore.run_folder import (
    LOCK_FILE,
    RUN_RECORD,
    STAGING_PREFIX,
    CheckpointError,
    check_compatible,
    foreign_entries,
    resolve_resume,
    run_description,
    status,
    unfinished_run,
)

if TYPE_CHECKING:
    from mixcore.registry import Registry


def is_primary_process() -> bool:
    """Rank 0 of a `paddle.distributed.launch` run (or a single process) owns the output folder."""
    return os.environ.get("PADDLE_TRAINER_ID", "0") in ("", "0")


def launched_world_size() -> int | None:
    """The number of processes of the `paddle.distributed.launch` run this process is one of,
    or None outside one (the launcher sets ``PADDLE_TRAINERS_NUM`` in every process)."""
    value = os.environ.get("PADDLE_TRAINERS_NUM", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def launch_log_entry(output_dir: Path) -> str | None:
    """The top-level entry of ``output_dir`` that holds this launch's per-rank logs, or None.

    `paddle.distributed.launch` writes every rank's output into its ``--log_dir`` and tells each
    process where (``PADDLE_LOG_DIR``); `mixcore train --nproc-per-node` points it at
    ``output_dir/logs``. When it is inside ``output_dir``, that entry belongs to this run: it
    exists before the run's first check, is never an earlier run's to remove, and is recorded
    with the run's files.
    """
    folder = os.environ.get("PADDLE_LOG_DIR")
    if not folder or launched_world_size() is None:
        return None
    try:
        path = Path(folder).resolve()
        output = output_dir.resolve()
    except (OSError, RuntimeError):
        return None
    if output not in path.parents:
        return None
    return path.relative_to(output).parts[0]


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def protected_folders(
    config: dict[str, Any], registry: Registry, base_dir: Path
) -> Iterator[tuple[str, Path]]:
    """(what, folder) for every folder of the user's that a run reads: the config's, the base
    model's, and each data file's (and image root's)."""
    yield "the config file's folder", base_dir.resolve()
    source = config.get("model_name_or_path")
    if isinstance(source, str) and source and _is_dir(base_dir / source):
        yield "the model folder (model_name_or_path)", (base_dir / source).resolve()
    dataset = config.get("dataset")
    if not isinstance(dataset, dict):
        return
    for split in ("train", "eval"):
        entries = dataset.get(split)
        if not isinstance(entries, list):
            continue
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                continue
            name = entry.get("name")
            kind = registry.datasets.get(name) if isinstance(name, str) else None
            if kind is None:
                continue
            for key, schema in kind.options_schema.get("properties", {}).items():
                if not _is_path_option(schema):
                    continue
                values = entry.get(key)
                for value in values if isinstance(values, list) else [values]:
                    if isinstance(value, str) and value:
                        try:
                            path = (base_dir / value).resolve()
                            folder = path if path.is_dir() else path.parent
                        except (OSError, RuntimeError):  # an unusable name: reported elsewhere
                            continue
                        yield f"the folder of dataset.{split}[{i}].{key}", folder


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, RuntimeError):  # an unusable name: the path checks report it
        return False


def _is_path_option(schema: Any) -> bool:
    if not isinstance(schema, dict):
        return False
    if schema.get("format") == "path":
        return True
    branches = [*schema.get("anyOf", []), *schema.get("oneOf", []), schema.get("items")]
    return any(_is_path_option(b) for b in branches)


def check_output_dir(
    config: dict[str, Any], registry: Registry, base_dir: Path, issues: set[Issue]
) -> None:
    value = config.get("output_dir")
    if not isinstance(value, str) or not value:
        return
    try:
        output = (base_dir / value).expanduser().resolve()
    except (OSError, RuntimeError) as exc:
        issues.add(Issue("$.output_dir", f"cannot use {value!r}: {exc}"))
        return
    for what, folder in protected_folders(config, registry, base_dir):
        if _is_within(folder, output):
            where = "is" if folder == output else "contains"
            issues.add(
                Issue(
                    "$.output_dir",
                    f"{output} {where} {what} ({folder}); a run writes its model there, so it "
                    "must be a folder of its own (even with overwrite_output_dir)",
                )
            )
            return
    blocked = _unwritable(output)
    if blocked:
        issues.add(Issue("$.output_dir", blocked))
        return
    if not output.is_dir() or not is_primary_process():
        return
    # mixcore's own bookkeeping alone (a run that stopped before it saved anything) is no one's
    # work to lose.
    logs = launch_log_entry(output)
    present = sorted(
        p.name
        for p in output.iterdir()
        if p.name not in (LOCK_FILE, RUN_RECORD, logs) and not p.name.startswith(STAGING_PREFIX)
    )
    if not present:
        return
    resume = config.get("resume_from_checkpoint")
    overwrite = config["overwrite_output_dir"] is True
    if overwrite or resume:
        foreign = [name for name in foreign_entries(output) if name != logs]
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            issues.add(
                Issue(
                    "$.output_dir",
                    f"{output} holds files no mixcore run wrote ({shown}); they are left alone: "
                    "move them or choose another output_dir",
                )
            )
        return
    shown = ", ".join(present[:5]) + (", ..." if len(present) > 5 else "")
    issues.add(
        Issue(
            "$.output_dir",
            f"{output} already exists and is not empty ({shown}); set "
            "resume_from_checkpoint: true to continue the run there, overwrite_output_dir: "
            "true to replace an earlier mixcore run's files, or choose a new folder",
        )
    )


def _unwritable(path: Path) -> str | None:
    """Why ``path`` cannot become a writable folder, or None."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        if probe == path:
            return f"{path} is a file, not a folder"
        return f"{path} cannot be made: {probe} is a file, not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{path} cannot be written: {probe} is not writable"
    return None


def output_file_problem(path: Path, *, what: str) -> str | None:
    """Why a file cannot be written at ``path`` (a missing or read-only folder), or None."""
    if path.is_dir():
        return f"{what} {path} is a folder; give a file name"
    parent = path.parent
    if not parent.is_dir():
        return f"{what} {path} cannot be written: the folder {parent} does not exist"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{what} {path} cannot be written: {parent} is not writable"
    return None


def output_folder_problem(path: Path, *, what: str) -> str | None:
    """Why a folder cannot be written at ``path``, or None."""
    problem = _unwritable(path.resolve())
    return f"{what}: {problem}" if problem else None


def check_resume(
    config: dict[str, Any], base_dir: Path, model_name: str | None, issues: set[Issue]
) -> None:
    """A named checkpoint must be complete and of this kind of run; ``true`` needs one."""
    value = config.get("resume_from_checkpoint")
    output = config.get("output_dir")
    if value in (None, False, "") or not isinstance(value, (str, bool)):
        return  # a wrong type is the schema's to report
    if not isinstance(output, str):
        return
    if isinstance(value, str):
        value = str((base_dir / value).expanduser())
    try:
        folder = resolve_resume(value, (base_dir / output).expanduser())
    except CheckpointError as exc:
        issues.add(Issue("$.resume_from_checkpoint", str(exc)))
        return
    if folder is None or model_name is None:
        return
    problems = check_compatible(status(folder), run_description(config, model_name))
    if problems:
        issues.add(
            Issue(
                "$.resume_from_checkpoint",
                f"{folder} is not a checkpoint of this run: " + "; ".join(problems),
            )
        )


def check_best_model(config: dict[str, Any], issues: set[Issue]) -> None:
    """The load_best_model_at_end combinations PaddleNLP's TrainingArguments would reject.

    ``config`` has its defaults (:func:`mixcore.config.schema.apply_defaults`), like every
    config the checks of this module read.
    """
    if config["load_best_model_at_end"] is not True:
        metric = config.get("metric_for_best_model")
        if isinstance(metric, str) and not _known_metric(metric, config):
            issues.add(Issue("$.metric_for_best_model", _metric_message(metric, config)))
        return
    evaluation = config["evaluation_strategy"]
    saving = "no" if config["benchmark"] else config["save_strategy"]
    if evaluation != saving:
        issues.add(
            Issue(
                "$.load_best_model_at_end",
                f"needs evaluation_strategy and save_strategy to match (they are {evaluation!r} "
                f"and {saving!r}): the best model is picked among saved checkpoints at the "
                "moments it is evaluated",
            )
        )
    elif evaluation == "steps":
        save_steps = config["save_steps"]
        eval_steps = config.get("eval_steps") or config["logging_steps"]
        if isinstance(save_steps, int) and isinstance(eval_steps, int) and save_steps % eval_steps:
            issues.add(
                Issue(
                    "$.save_steps",
                    f"load_best_model_at_end needs save_steps ({save_steps}) to be a multiple of "
                    f"eval_steps ({eval_steps})",
                )
            )
    dataset = config.get("dataset")
    if not (isinstance(dataset, dict) and dataset.get("eval")):
        issues.add(Issue("$.load_best_model_at_end", "needs dataset.eval to measure models on"))
    metric = config.get("metric_for_best_model")
    if isinstance(metric, str) and not _known_metric(metric, config):
        issues.add(Issue("$.metric_for_best_model", _metric_message(metric, config)))


def _eval_labels(config: dict[str, Any]) -> list[str]:
    entries = (config.get("dataset") or {}).get("eval") or []
    if not isinstance(entries, list) or len(entries) < 2:
        return []
    return [e["label"] for e in entries if isinstance(e, dict)]


def _known_metric(metric: str, config: dict[str, Any]) -> bool:
    name = metric.removeprefix("eval_")
    return name in ("loss",) or name in {f"loss/{label}" for label in _eval_labels(config)}


def _metric_message(metric: str, config: dict[str, Any]) -> str:
    known = ["eval_loss"] + [f"eval_loss/{label}" for label in _eval_labels(config)]
    return (
        f"evaluation reports no metric {metric!r}; it reports {', '.join(known)} "
        "(a mixture's per-source losses are eval_loss/<label>)"
    )


def check_run(
    config: dict[str, Any],
    registry: Registry,
    base_dir: Path,
    model_name: str | None,
    issues: set[Issue],
) -> None:
    """Every check of this module, as `mixcore validate` and `mixcore train` make them."""
    source = config.get("model_name_or_path")
    if isinstance(source, str) and source and _is_dir(base_dir / source):
        problem = unfinished_run((base_dir / source).resolve())
        if problem:
            issues.add(Issue("$.model_name_or_path", problem))
    try:
        check_output_dir(config, registry, base_dir, issues)
    except (OSError, RuntimeError) as exc:  # a name too long, a loop of links
        issues.add(
            Issue("$.output_dir", f"cannot check it: {getattr(exc, 'strerror', None) or exc}")
        )
    try:
        check_resume(config, base_dir, model_name, issues)
    except (OSError, RuntimeError) as exc:
        issues.add(
            Issue(
                "$.resume_from_checkpoint",
                f"cannot check it: {getattr(exc, 'strerror', None) or exc}",
            )
        )


@dataclass(frozen=True)
class Logger:
    """A ``report_to`` value: the modules PaddleNLP's callback for it imports, and what to install.

    ``needs`` lists alternatives; each alternative is a tuple of top-level modules that must all
    be importable.
    """

    name: str
    needs: tuple[tuple[str, ...], ...]
    install: str


#: The loggers PaddleNLP's Trainer has callbacks for (``paddlenlp.trainer.integrations``).
#: Its TensorBoard callback takes ``torch.utils.tensorboard`` (torch with the tensorboard
#: package), else ``tensorboardX``; with neither it silently writes nothing.
LOGGERS: dict[str, Logger] = {
    "visualdl": Logger("visualdl", (("visualdl",),), "pip install visualdl"),
    "tensorboard": Logger(
        "tensorboard", (("tensorboardX",), ("torch", "tensorboard")), "pip install tensorboardX"
    ),
    "wandb": Logger("wandb", (("wandb",),), "pip install wandb"),
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken package, or a module without a spec
        return False


def missing_logger(name: str) -> str | None:
    """Why the ``report_to`` logger ``name`` cannot run in this environment, or None."""
    logger = LOGGERS.get(name)
    if logger is None:
        return None  # "none", or a name the schema refuses
    if not any(all(_installed(m) for m in modules) for modules in logger.needs):
        package = logger.install.split()[-1]
        return (
            f"{name!r} needs the {package} package, which is not installed in this environment; "
            f"install it (`{logger.install}`) or leave {name} out of report_to"
        )
    if name == "wandb" and os.environ.get("WANDB_DISABLED", "").upper() in (
        "1",
        "ON",
        "YES",
        "TRUE",
    ):
        # PaddleNLP then reports wandb as not installed and stops at the start of training.
        return "'wandb' is asked for but WANDB_DISABLED is set; unset it or leave wandb out"
    return None


def check_loggers(config: dict[str, Any], issues: set[Issue]) -> None:
    """Every ``report_to`` logger must have its package, and ``none`` stands alone."""
    value = config.get("report_to")
    names = value if isinstance(value, list) else [value]
    if not all(isinstance(n, str) for n in names):
        return  # the schema reports it
    listed = isinstance(value, list)
    if "none" in names and len(set(names)) > 1:
        issues.add(
            Issue(
                "$.report_to",
                "'none' turns every logger off; give it alone or list only loggers",
            )
        )
        return
    for i, name in enumerate(names):
        problem = missing_logger(name)
        if problem:
            issues.add(Issue(f"$.report_to[{i}]" if listed else "$.report_to", problem))
