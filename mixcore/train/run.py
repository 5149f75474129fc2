"""`mixcore train`: a validated config in, a trained checkpoint, logs and a loss curve out.

The loop itself is PaddleNLP's ``Trainer``; mixcore builds its inputs from plugins and adds what a
fine-tuning user expects around it (parameter table, safetensors checkpoints that resume exactly,
a loss-curve picture, a final standalone checkpoint or LoRA adapter).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixcore import run_folder
from mixcore.config.run_checks import is_primary_process, launch_log_entry
from mixcore.config.stream_checks import streams
from mixcore.kit.tensor_parallel import merge_tensor_parallel
from mixcore.lora import LORA_BASE_FILE, save_lora_adapter, weights_fingerprint
from mixcore.models import apply_parallel_plan, load_model_bundle
from mixcore.registry import Registry
from mixcore.train import checkpoints
from mixcore.train.assemble import (
    TrainError,
    apply_freezing,
    apply_lora,
    build_sources,
    parameter_report,
)
from mixcore.train.data import (
    LengthCache,
    ProblemLog,
    TrainingDataset,
    check_every_sample,
    make_collator,
    plan_split,
    preprocessor,
)
from mixcore.train.data_cache import DataCache, default_cache_dir
from mixcore.train.output import OutputLock, clear_earlier_run, finish_run, start_run
from mixcore.train.progress import Progress
from mixcore.train.tensor_parallel_checkpoints import load_whole_weights
from mixcore.train.trainer import (
    DataWaitMeter,
    final_step_log,
    loss_reporter,
    tensor_shapes,
    trainer_class,
)

log = logging.getLogger(__name__)

LOSS_CURVE = "loss_curve.png"
HISTORY_FILE = "log_history.json"
SKIPPED_FILE = "skipped_samples.json"
STAGE_NAMES = {
    "build": "bad records",
    "measure": "unencodable",
    "overlong": "over max_length",
    "batch": "unreadable at load time",
}


@dataclass
class TrainResult:
    output_dir: Path
    global_step: int
    train_loss: float | None
    eval_loss: float | None
    saved: Path | None
    parameter_rows: list[tuple[str, int, int]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # per stage (see STAGE_NAMES)
    metrics: dict[str, Any] = field(default_factory=dict)


def training_arguments(config: dict[str, Any]) -> Any:
    """PaddleNLP ``TrainingArguments`` from the config's Trainer fields.

    The config's defaults (mixcore's, where they differ from PaddleNLP's: ``save_strategy``
    ``epoch``, ``logging_steps`` 10, ``report_to`` none) are the config schema's, filled in by
    :func:`mixcore.config.prepare_config`.

    Checkpoints are written in PaddleNLP's unified safetensors format, which
    ``resume_from_checkpoint`` reads back with the optimizer, scheduler and RNG states.
    PaddleNLP's progress bars are off: mixcore draws its own (:mod:`mixcore.train.progress`),
    which the config's ``disable_tqdm`` turns off.
    """
    from paddlenlp.trainer import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    kwargs = {k: v for k, v in config.items() if k in names}
    kwargs["unified_checkpoint"] = True
    kwargs["disable_tqdm"] = True
    kwargs.pop("resume_from_checkpoint", None)  # passed to train(), not kept in the arguments
    if config["benchmark"]:
        kwargs["save_strategy"] = "no"
    try:
        return TrainingArguments(**kwargs)
    except (ValueError, AssertionError) as exc:
        # Combinations only PaddleNLP checks (an unknown *_parallel_config option, a degree
        # this launch cannot form): its own words, as a config problem, not a traceback.
        raise TrainError(f"PaddleNLP's TrainingArguments refused the config: {exc}") from exc


def device_problems(config: dict[str, Any]) -> list[str]:
    """What this machine's Paddle build cannot do of what ``config`` asks: its ``device`` and
    half-precision training. A real run refuses them; a dry run (which checks the data, not
    the machine the run will have) only reports them."""
    import paddle

    problems = []
    device = config.get("device")
    built = {
        "gpu": paddle.device.is_compiled_with_cuda(),
        "xpu": paddle.device.is_compiled_with_xpu(),
        "npu": "npu" in paddle.device.get_all_custom_device_type(),
    }
    if isinstance(device, str) and device != "cpu" and not built.get(device, False):
        problems.append(
            f"device {device!r}: this Paddle build has no {device} support; set device to "
            "'cpu' (or remove it) to train on this machine, or install Paddle's build for it"
        )
    on_gpu = built["gpu"] and device in (None, "gpu")
    wants = [k for k in ("bf16", "fp16") if config[k]]
    if wants and not on_gpu and not (device in ("xpu", "npu") and built.get(device)):
        why = "device is 'cpu'" if device == "cpu" else "this Paddle build has no GPU support"
        problems.append(
            f"{wants[0]} needs a GPU (Paddle's CPU kernels have no {wants[0]} mixed precision) "
            f"and {why}; remove {wants[0]} to train in float32 on this machine"
        )
    return problems


def _select_device(config: dict[str, Any], report: Callable[[str], None], dry_run: bool) -> None:
    problems = device_problems(config)
    if not dry_run:
        if problems:
            raise TrainError("; ".join(problems))
        device = config.get("device")
        if isinstance(device, str):
            import paddle

            paddle.set_device(device)
        return
    for problem in problems:
        report(f"note: a real run on this machine would stop: {problem}")


def data_cache(
    registry: Registry, config: dict[str, Any], entry: Any, base_dir: Path
) -> tuple[DataCache | None, LengthCache | None]:
    """The processed-data cache of a run (None when ``dataset.cache`` is false), and where the
    lengths this run's model measures are kept in it."""
    dataset = config["dataset"]
    if not dataset.get("cache", True):
        return None, None
    folder = dataset.get("cache_dir")
    root = (base_dir / folder).expanduser() if folder else default_cache_dir()
    if root is None:
        return None, None
    cache = DataCache(root)
    key = cache.model_key(
        model=entry.name,
        plugin_version=registry.plugin(entry.plugin).version,
        model_name_or_path=config["model_name_or_path"],
        model_options=config["model_options"],
    )
    return cache, LengthCache(cache, key)


def run_training(
    config: dict[str, Any],
    registry: Registry,
    *,
    base_dir: Path,
    report: Callable[[str], None] = print,
    verbose: bool = False,
    callbacks: Sequence[Any] = (),
    dry_run: bool = False,
) -> TrainResult:
    """Train as ``config`` says: a config :func:`mixcore.config.prepare_config` returned
    (checked, defaults filled in, paths absolute), with ``base_dir`` its file's folder.

    ``report`` receives the lines a user should see; ``verbose`` keeps PaddleNLP's own INFO
    logging; ``callbacks`` are extra PaddleNLP ``TrainerCallback``s (for applications embedding
    mixcore, and benchmarks). ``dry_run`` stops before training, after planning the data and
    preprocessing every sample once (images included), so every data problem a run would meet
    is reported up front; nothing is written."""
    lock = None
    if not dry_run and is_primary_process():
        lock = OutputLock(Path(config["output_dir"])).acquire()
    try:
        return _run_training(config, registry, base_dir, report, verbose, callbacks, dry_run)
    finally:
        if lock is not None:
            lock.release()


def _run_training(
    config: dict[str, Any],
    registry: Registry,
    base_dir: Path,
    report: Callable[[str], None],
    verbose: bool,
    callbacks: Sequence[Any],
    dry_run: bool,
) -> TrainResult:
    from paddlenlp.utils.log import logger as paddlenlp_logger

    # PaddleNLP logs every argument and step at INFO; the reporter below says what matters.
    paddlenlp_logger.set_level("DEBUG" if verbose else "WARNING")
    if not verbose:  # its warnings in plain words: no colour codes in a log file
        paddlenlp_logger.handler.setFormatter(PlainFormatter("PaddleNLP"))
    _select_device(config, report, dry_run)
    seed = config["seed"]
    output_dir = Path(config["output_dir"])
    resume = run_folder.resolve_resume(config.get("resume_from_checkpoint"), output_dir)
    entry, bundle = load_model_bundle(
        registry,
        config["model_name_or_path"],
        model=config.get("model"),
        options=config["model_options"],
        seed=seed,
    )
    model = bundle.model
    # Recorded with a LoRA adapter, so the base it is applied to later can be checked.
    base_fingerprint = weights_fingerprint(model) if config["lora"] else None
    apply_freezing(model, config["freeze_include"], config["freeze_exclude"])
    targets: list[str] | None = None
    if config["lora"]:
        model, targets = apply_lora(registry, entry, bundle, config)
        report(f"LoRA rank {config['lora_rank']} on: {', '.join(targets)}")
    described = run_folder.run_description(config, entry.name, targets)
    if resume is not None:
        _check_resumable(resume, described, model)
        report(f"resuming from {resume}")
    rows = parameter_report(model, bundle.components)
    report(format_parameter_table(rows))

    max_length = config["max_length"]
    problems = ProblemLog()
    datasets: dict[str, Any] = {}  # TrainingDataset, or a StreamingDataset for train
    labels: dict[str, list[str]] = {}
    cache, length_cache = data_cache(registry, config, entry, base_dir)
    streamed = None  # a streamed dataset.train (mixcore.train.stream)
    for split in ("train", "eval"):
        if split == "train" and streams(config):
            from mixcore.train.stream import build_stream

            streamed, lines = build_stream(
                registry,
                config,
                entry.name,
                bundle,
                preprocessor(registry, entry.name, bundle, max_length),
                base_dir,
                problems,
            )
            if resume is not None:
                streamed.restore(resume)
            for line in lines:
                report(line)
            labels[split] = streamed.labels
            datasets[split] = streamed
            continue
        sources = build_sources(registry, config, split, base_dir, cache, report)
        if not sources:
            continue
        plan = plan_split(
            registry,
            entry.name,
            bundle,
            sources,
            max_length=max_length,
            seed=seed,
            overlong=config["overlong_policy"],
            pack=config["mixtoken"] and split == "train",
            budget=config["dataset"].get(f"{split}_samples"),
            problems=problems,
            split=split,
            length_cache=length_cache,
            measure_all=dry_run,
        )
        for line in plan.report:
            report(line)
        labels[split] = plan.labels
        datasets[split] = TrainingDataset(
            plan,
            preprocessor(registry, entry.name, bundle, max_length),
            with_sources=len(plan.labels) > 1,
        )
    for problem in problems.problems.values():
        report(f"skipped {problem.where()}: {problem.reason}")
    if dry_run:
        return _dry_run(datasets, problems, rows, report, max_length)

    do_train = config["do_train"]
    # Rank 0 alone writes into output_dir (the other ranks take part in checkpoint saves).
    primary = is_primary_process()
    logs = launch_log_entry(output_dir)  # this launch's per-rank logs, when they are in it
    own = [logs] if logs else []
    if do_train and primary:
        if config["overwrite_output_dir"] and not resume and output_dir.is_dir():
            removed = clear_earlier_run(output_dir, keep=own)
            if removed:
                shown = ", ".join(removed[:5]) + (", ..." if len(removed) > 5 else "")
                report(f"overwrite_output_dir: removed the earlier run's files ({shown})")
        start_run(output_dir, own=own)
    args = training_arguments(config)
    split = None  # the model split over a tensor-parallel group
    if args.tensor_parallel_degree > 1:
        split = _split_for_tensor_parallel(registry, entry, bundle, model, args, resume, report)
    stream_callbacks = []
    if streamed is not None:
        args.ignore_data_skip = True  # the stream resumes at its saved position: no replay
        stream_callbacks.append(streamed.callback())
    wait = DataWaitMeter()
    # The bar, and every line from here on written above it (plain lines without a terminal).
    progress = Progress(report, enabled=not config.get("disable_tqdm"))
    report = progress.write
    trainer = trainer_class()(
        model=model,
        args=args,
        train_dataset=datasets.get("train"),
        eval_dataset=datasets.get("eval"),
        data_collator=make_collator(registry, entry.name, bundle),
        callbacks=[
            final_step_log(),
            loss_reporter(report),
            progress.callback(),
            wait.callback(),
            *stream_callbacks,
            *callbacks,
        ],
        problems=problems,
        source_labels=labels.get("train", []),
        eval_source_labels=labels.get("eval", []),
        report=report,
        checkpoint_meta={**described, "model_name_or_path": config["model_name_or_path"]},
        min_lr=config["eta_min"],
        warmup_start_lr=config["warmup_start_lr"],
        tensor_parallel=split,
    )
    try:
        if not do_train:
            return _evaluate_only(trainer, datasets, rows, report, output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        history = list(trainer.state.log_history)
        evals = [h for h in history if "eval_loss" in h]
        if "eval" in datasets and (not evals or evals[-1].get("step") != result.global_step):
            trainer.evaluate()  # the final model's eval loss, unless the schedule just measured it
            history = list(trainer.state.log_history)
            evals = [h for h in history if "eval_loss" in h]
    finally:
        progress.close()  # also when training fails: the error starts on a line of its own
    eval_loss = evals[-1]["eval_loss"] if evals else None

    if split is not None:  # every rank: the whole trained model back, to be saved as one
        merge_tensor_parallel(split)
    saved = None
    written = [HISTORY_FILE, *own]
    if primary:
        if not config["benchmark"]:
            written += _save_final(
                registry, entry.name, bundle, model, config, output_dir, base_fingerprint
            )
            saved = output_dir
        (output_dir / HISTORY_FILE).write_text(json.dumps(history, indent=1), encoding="utf-8")
        written += _logger_entries(args, output_dir)  # report_to's files, when they are in it
        curve = plot_loss_curve(history, output_dir / LOSS_CURVE)
        if curve:
            written.append(LOSS_CURVE)
            report(f"loss curve: {curve}")

    if wait.fraction is not None:
        workers = args.dataloader_num_workers
        report(
            f"data loading: the trainer waited for batches {wait.fraction:.1%} of step time "
            f"(dataloader_num_workers={workers})"
            + ("; more workers would help" if wait.fraction > 0.2 and streamed is None else "")
        )
    skipped = problems.by_stage()
    if problems and primary:
        (output_dir / SKIPPED_FILE).write_text(
            json.dumps(problems.to_json(), indent=1), encoding="utf-8"
        )
        written.append(SKIPPED_FILE)
        report(
            f"skipped {len(problems)} sample(s) in all ("
            + ", ".join(f"{n} {STAGE_NAMES[stage]}" for stage, n in skipped.items())
            + f"); the list is in {output_dir / SKIPPED_FILE}"
        )
    metrics = dict(result.metrics)
    if wait.fraction is not None:
        metrics["data_wait_fraction"] = wait.fraction
    if primary:
        finish_run(output_dir, written)
    return TrainResult(
        output_dir=output_dir,
        global_step=result.global_step,
        train_loss=_mean_loss_of_this_run(result, resume),
        eval_loss=eval_loss,
        saved=saved,
        parameter_rows=rows,
        skipped=skipped,
        metrics=metrics,
    )


def _split_for_tensor_parallel(
    registry: Registry,
    entry: Any,
    bundle: Any,
    model: Any,
    args: Any,
    resume: Path | None,
    report: Callable[[str], None],
) -> Any:
    """Split the model (after LoRA, after the groups exist) for this rank of the run's
    tensor-parallel group; a resumed run reads the checkpoint's whole weights first."""
    if resume is not None:
        load_whole_weights(args, model, resume)
    split = apply_parallel_plan(registry, entry, bundle, args.tensor_parallel_degree)
    report(
        f"tensor parallel: {len(split.resolved.splits)} weights split over "
        f"{args.tensor_parallel_degree} ranks (this is rank {split.rank})"
    )
    return split


class PlainFormatter(logging.Formatter):
    """``warning: (PaddleNLP) message``: a library's records without colours or timestamps."""

    def __init__(self, source: str) -> None:
        super().__init__()
        self.source = source

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: ({self.source}) {record.getMessage()}"


#: How the files of VisualDL and TensorBoard (tensorboardX) start.
LOGGER_FILE_PREFIXES = ("vdlrecords.", "events.out.tfevents.")


def _logger_entries(args: Any, output_dir: Path) -> list[str]:
    """The top-level entries of ``output_dir`` that hold the loggers' files, if any are there:
    the folder ``logging_dir`` is in, or the files themselves when it is ``output_dir``."""
    folder = getattr(args, "logging_dir", None)
    if not args.report_to or not folder:
        return []
    path = Path(folder).resolve()
    if path == output_dir:
        return sorted(
            p.name for p in output_dir.iterdir() if p.name.startswith(LOGGER_FILE_PREFIXES)
        )
    if output_dir not in path.parents:
        return []
    entry = output_dir / path.relative_to(output_dir).parts[0]
    return [entry.name] if entry.exists() else []


def _dry_run(
    datasets: dict[str, Any],
    problems: ProblemLog,
    rows: list[tuple[str, int, int]],
    report: Callable[[str], None],
    max_length: int,
) -> TrainResult:
    before = len(problems)
    metrics: dict[str, Any] = {"dry_run": True}
    for split, dataset in datasets.items():
        if not isinstance(dataset, TrainingDataset):  # a stream: one pass over every shard
            metrics[f"{split}_checked"] = dataset.check_every_record(problems)
            continue
        checked, full = check_every_sample(
            dataset.plan, dataset.preprocess, problems, max_length=max_length
        )
        metrics[f"{split}_checked"] = checked
        metrics[f"{split}_preprocessed"] = full
        metrics[f"{split}_items"] = len(dataset)
    for problem in list(problems.problems.values())[before:]:
        report(f"skipped {problem.where()}: {problem.reason}")
    checked = ", ".join(f"{metrics[f'{s}_checked']:,} {s}" for s in datasets)
    report(
        f"dry run: every sample checked ({checked}); "
        + (f"{len(problems)} would be skipped" if problems else "none would be skipped")
    )
    return TrainResult(
        output_dir=Path(),
        global_step=0,
        train_loss=None,
        eval_loss=None,
        saved=None,
        parameter_rows=rows,
        skipped=problems.by_stage(),
        metrics=metrics,
    )


def _mean_loss_of_this_run(result: Any, resume: Path | None) -> float:
    """The mean training loss over the steps this process trained.

    PaddleNLP divides the losses it summed by the global step, which after a resume counts the
    steps of the earlier run too (a run resumed at step 4 of 6 reports a third of its loss).
    """
    if resume is None:
        return result.training_loss
    start = run_folder.status(resume).step
    trained = result.global_step - start
    return result.training_loss * result.global_step / trained if trained > 0 else float("nan")


def _check_resumable(resume: Path, described: dict[str, Any], model: Any) -> None:
    found = run_folder.status(resume)
    problems = run_folder.check_compatible(found, described)
    problems += run_folder.check_tensors(found, tensor_shapes(model))
    if problems:
        raise run_folder.CheckpointError(f"cannot resume from {resume}: " + "; ".join(problems))


def _evaluate_only(
    trainer: Any,
    datasets: dict[str, TrainingDataset],
    rows: list[tuple[str, int, int]],
    report: Callable[[str], None],
    output_dir: Path,
) -> TrainResult:
    """``do_train: false``: measure the model on the eval split (if any), write nothing."""
    eval_loss = None
    if "eval" in datasets:
        eval_loss = trainer.evaluate().get("eval_loss")
    report(
        "do_train is false: nothing was trained"
        + (f"; eval loss {eval_loss:.4f}" if eval_loss is not None else "")
    )
    return TrainResult(
        output_dir=output_dir,
        global_step=0,
        train_loss=None,
        eval_loss=eval_loss,
        saved=None,
        parameter_rows=rows,
    )


def _save_final(
    registry: Registry,
    model_name: str,
    bundle: Any,
    model: Any,
    config: dict[str, Any],
    out: Path,
    base_fingerprint: dict[str, Any] | None,
) -> list[str]:
    """Write the final model (or adapter) into ``out``; returns the names written.

    The files are written into a staging folder first and moved into ``out`` after; until the
    run record says ``finished``, the folder is recognisably a run that did not end.
    """
    staging = out / f"{run_folder.STAGING_PREFIX}final"
    if staging.exists():
        shutil.rmtree(staging)
    if config["lora"]:
        save_lora_adapter(model, staging)
        base = {
            "model": model_name,
            "model_name_or_path": config["model_name_or_path"],
            "model_options": config["model_options"],
            # A preset built with random_init is rebuilt from this seed, then checked.
            "seed": config["seed"],
            "fingerprint": base_fingerprint,
        }
        (staging / LORA_BASE_FILE).write_text(json.dumps(base, indent=2), encoding="utf-8")
    else:
        staging.mkdir(parents=True)
        registry.hook.save_model(model_name=model_name, bundle=bundle, folder=str(staging))
    checkpoints.fsync_tree(staging)
    names = sorted(p.name for p in staging.iterdir())
    for name in names:
        target = out / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(staging / name, target)
    staging.rmdir()
    return names


def format_parameter_table(rows: list[tuple[str, int, int]]) -> str:
    lines = [f"{'component':<16}{'trainable':>14}{'frozen':>14}"]
    for label, trainable, frozen in rows:
        lines.append(f"{label:<16}{trainable:>14,}{frozen:>14,}")
    total_t = sum(r[1] for r in rows)
    total_f = sum(r[2] for r in rows)
    lines.append(f"{'total':<16}{total_t:>14,}{total_f:>14,}")
    return "\n".join(lines)


def plot_loss_curve(history: list[dict[str, Any]], path: Path) -> Path | None:
    """Draw training (and evaluation) loss against steps into a PNG, with each mixture source's
    training loss when logged; None without points."""
    train = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h and "step" in h]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        # A run of one logged step has one point, which a line alone would not show.
        marker = "o" if len(train) == 1 else None
        ax.plot(*zip(*train, strict=True), marker=marker, label="train loss", color="#1f77b4")
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="eval loss", color="#d62728")
    # A mixture's sources, thin and dashed under the totals.
    sources = sorted({k for h in history for k in h if k.startswith("loss/")})
    palette = ["C1", "C2", "C4", "C5", "C6", "C7", "C8", "C9"]  # not the totals' C0 / C3
    for n, key in enumerate(sources):
        points = [(h["step"], h[key]) for h in history if key in h and "step" in h]
        ax.plot(
            *zip(*points, strict=True),
            "--",
            marker="o" if len(points) == 1 else None,
            linewidth=0.9,
            color=palette[n % len(palette)],
            label=key.removeprefix("loss/"),
        )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
