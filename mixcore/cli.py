"""The ``mixcore`` command. The only place that prints, and that turns errors into exit codes.

Exit codes: 0 success, 1 a check failed or the run failed, 2 a usage or config error.
Listing, validation and schema commands never import Paddle, PaddleNLP or Pillow.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from mixcore import __version__
from mixcore.api.errors import ConfigError, DataError, MixcoreError, UsageError
from mixcore.issues import Issue

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: The reader of stdout went away (``mixcore schema | head -1``): what a tool killed by SIGPIPE
#: reports (128 + 13), so a script tells it apart from a failed check (1).
EXIT_BROKEN_PIPE = 141

RegistryFactory = Callable[[], Any]


class Output:
    """Where the CLI writes: results to ``out``, diagnostics to ``err``."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr

    def print(self, text: str = "") -> None:
        print(text, file=self.out)

    def json(self, data: Any) -> None:
        print(json.dumps(data, indent=2, ensure_ascii=False), file=self.out)

    def warn(self, text: str) -> None:
        print(f"warning: {text}", file=self.err)

    def error(self, text: str) -> None:
        print(f"error: {text}", file=self.err)


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    """Left-aligned columns separated by two spaces."""
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    ]
    return "\n".join(lines)


# -- plugins ---------------------------------------------------------------------------------------


def _capabilities(caps: dict[str, bool]) -> str:
    on = [k for k, v in sorted(caps.items()) if v]
    return ",".join(on) if on else "none yet"


def cmd_plugins_list(args: argparse.Namespace, registry: Any, out: Output) -> int:
    if args.json:
        out.json(registry.to_json(include_builtin=args.all))
        return EXIT_OK
    rows = []
    for plugin in registry.plugins.values():
        if plugin.builtin and not args.all:
            continue
        models = [f"{m} ({_capabilities(registry.models[m].capabilities)})" for m in plugin.models]
        status = "BROKEN" if not plugin.ok else "CONFLICT" if plugin.conflicts else plugin.status
        rows.append(
            [
                plugin.name,
                plugin.version or "-",
                status,
                "; ".join(models) or "-",
                ", ".join(plugin.datasets) or "-",
                ", ".join(plugin.hooks) or "-",
            ]
        )
    if not rows:
        out.print("No plugins installed (or MIXCORE_PLUGINS selects none).")
        return EXIT_OK
    out.print(
        table(rows, ["PLUGIN", "VERSION", "STATUS", "MODELS (capabilities)", "DATASETS", "HOOKS"])
    )
    for plugin in registry.broken:
        out.print(f"\n{plugin.name}: {plugin.reason}")
    for plugin in registry.plugins.values():
        for line in [*plugin.conflicts, *plugin.notes]:
            out.print(f"\n{plugin.name}: {line}")
    return EXIT_OK


def cmd_plugins_show(args: argparse.Namespace, registry: Any, out: Output) -> int:
    plugin = registry.plugin(args.name)
    models = [registry.models[m] for m in plugin.models]
    datasets = [registry.datasets[d] for d in plugin.datasets]
    if args.json:
        data = plugin.to_json()
        data["detail"] = plugin.detail
        data["models"] = [m.to_json() for m in models]
        data["datasets"] = [d.to_json() for d in datasets]
        out.json(data)
        return EXIT_OK
    out.print(f"{plugin.name} {plugin.version or ''}".rstrip())
    out.print(f"  distribution: {plugin.distribution or 'in memory'}")
    out.print(f"  module:       {plugin.module}")
    out.print(f"  status:       {plugin.status}")
    if plugin.description:
        out.print(f"  description:  {plugin.description}")
    out.print(f"  hooks:        {', '.join(plugin.hooks) or '-'}")
    for model in models:
        out.print(f"\n  model {model.name}: {model.description}")
        out.print(f"    capabilities: {_capabilities(model.capabilities)}")
        if model.aliases:
            out.print(f"    aliases:      {', '.join(model.aliases)}")
        if model.model_types:
            out.print(f"    model_type:   {', '.join(model.model_types)}")
        _print_options(out, model.options_schema, "model_options")
    for dataset in datasets:
        out.print(f"\n  dataset {dataset.name}: {dataset.description}")
        _print_options(out, dataset.options_schema, "options")
    for line in plugin.conflicts:
        out.print(f"\n  conflict: {line}")
    for line in plugin.notes:
        out.print(f"\n  note: {line}")
    if plugin.stdout:
        out.print("\n  printed while loading:")
        out.print("\n".join(f"    {line}" for line in plugin.stdout.rstrip().splitlines()))
    if not plugin.ok:
        out.print(f"\n  reason: {plugin.reason}")
        if plugin.detail:
            out.print("\n" + plugin.detail.rstrip())
    return EXIT_OK


def _print_options(out: Output, schema: dict[str, Any], label: str) -> None:
    props = schema.get("properties", {})
    if not props:
        return
    out.print(f"    {label}:")
    required = set(schema.get("required", []))
    for key, prop in props.items():
        note = " (required)" if key in required else ""
        desc = prop.get("description", "") if isinstance(prop, dict) else ""
        out.print(f"      {key}{note}  {desc}".rstrip())


def cmd_plugins_check(args: argparse.Namespace, registry: Any, out: Output) -> int:
    # A refused contribution fails the check like a broken plugin: something installed does not
    # do what its package says. Notes (a slow load, printed output) are reported, not failures.
    broken = registry.broken
    conflicting = [p for p in registry.plugins.values() if p.conflicts]
    noted = [p for p in registry.plugins.values() if p.notes]
    failed = bool(broken or conflicting)
    if args.json:
        out.json(
            {
                "ok": not failed,
                "broken": [p.to_json() for p in broken],
                "conflicts": [p.to_json() for p in conflicting],
                "notes": [p.to_json() for p in noted],
            }
        )
        return EXIT_FAILED if failed else EXIT_OK
    for plugin in broken:
        out.print(f"BROKEN {plugin.name}: {plugin.reason}")
    for plugin in conflicting:
        for line in plugin.conflicts:
            out.print(f"CONFLICT {plugin.name}: {line}")
    for plugin in noted:
        for line in plugin.notes:
            out.print(f"NOTE {plugin.name}: {line}")
    if not failed:
        count = sum(1 for p in registry.plugins.values() if not p.builtin)
        out.print(f"All {count} plugin(s) load and validate.")
    return EXIT_FAILED if failed else EXIT_OK


# -- config ----------------------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace, registry: Any, out: Output) -> int:
    from mixcore.config import load_config, validate_config

    path = Path(args.config)
    try:
        config = load_config(path)
        issues = validate_config(
            config, registry, base_dir=path.resolve().parent, world_size=args.world_size
        )
    except ConfigError as exc:
        issues = exc.issues
    if args.json:
        out.json(
            {
                "config": str(path),
                "valid": not issues,
                "issues": [{"path": i.path, "message": i.message} for i in issues],
            }
        )
    elif issues:
        out.print(f"{path}: {len(issues)} problem(s)")
        for issue in issues:
            out.print(f"  {issue}")
    else:
        out.print(f"{path}: valid")
    return EXIT_USAGE if issues else EXIT_OK


def cmd_schema(args: argparse.Namespace, registry: Any, out: Output) -> int:
    from mixcore.config import compose_schema, core_schema

    out.json(core_schema() if args.core else compose_schema(registry))
    return EXIT_OK


# -- environment -----------------------------------------------------------------------------------


def _prepare_paddle(verbose: bool = False) -> None:
    """Before the first Paddle import: thread settings, and a clear error if the stack is broken.

    Without ``verbose``, what the import prints that says nothing about the user's job is left
    out (:func:`mixcore.train.runtime.quiet_import`)."""
    from mixcore.environment import require_training_stack
    from mixcore.train.runtime import configure_cpu_threads, quiet_import, silence_import_noise

    configure_cpu_threads()
    silence_import_noise()
    with quiet_import(verbose):
        require_training_stack()


def cmd_doctor(args: argparse.Namespace, registry: Any, out: Output) -> int:
    import platform

    from mixcore.environment import FIX, check_training_stack
    from mixcore.train.runtime import configure_cpu_threads, quiet_import, silence_import_noise

    configure_cpu_threads()
    silence_import_noise()
    with quiet_import():
        checks = check_training_stack()
    broken = registry.broken
    ok = all(c.ok for c in checks) and not broken
    if args.json:
        out.json(
            {
                "ok": ok,
                "python": platform.python_version(),
                "modules": [c.to_json() for c in checks],
                "broken_plugins": [p.to_json() for p in broken],
            }
        )
        return EXIT_OK if ok else EXIT_FAILED
    out.print(f"python {platform.python_version()} ({sys.executable})")
    rows = [
        [
            c.module,
            "ok" if c.ok else "FAILED",
            c.version or "-",
            f"{c.seconds:.2f}s",
            c.error or c.purpose,
        ]
        for c in checks
    ]
    out.print(table(rows, ["MODULE", "STATUS", "VERSION", "IMPORT", "NOTE"]))
    for plugin in broken:
        out.print(f"BROKEN plugin {plugin.name}: {plugin.reason}")
    if ok:
        count = sum(1 for p in registry.plugins.values() if not p.builtin)
        out.print(f"The training stack imports and all {count} plugin(s) load.")
    else:
        if not all(c.ok for c in checks):
            out.print(f"Fix: {FIX}.")
    return EXIT_OK if ok else EXIT_FAILED


# -- training --------------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace, registry: Any, out: Output) -> int:
    from mixcore.config import load_run_config
    from mixcore.config.run_checks import launched_world_size

    plan = _launch_plan(args)
    # Checked for the world the run will have: the one about to be launched, or the one this
    # process is already part of (a `python -m paddle.distributed.launch ... mixcore train`).
    with _checking_for(plan):
        config, base_dir = load_run_config(
            args.config,
            registry,
            output_dir=args.output_dir,
            max_steps=args.max_steps,
            resume_from_checkpoint=args.resume_from_checkpoint,
            world_size=plan.world_size if plan else launched_world_size(),
        )
    if plan is not None and not args.dry_run:
        return _launch(args, plan, config, out)
    _prepare_paddle(args.verbose)
    from mixcore.train.run import run_training

    result = run_training(
        config,
        registry,
        base_dir=base_dir,
        report=out.print,
        verbose=args.verbose,
        dry_run=args.dry_run,
    )
    if args.dry_run:
        if args.json:
            out.json({"dry_run": True, "skipped": result.skipped, **result.metrics})
        return EXIT_OK
    summary = {
        "output_dir": str(result.output_dir),
        "global_step": result.global_step,
        "train_loss": result.train_loss,
        "eval_loss": result.eval_loss,
        "saved": str(result.saved) if result.saved else None,
        "skipped": result.skipped,
        "data_wait_fraction": result.metrics.get("data_wait_fraction"),
    }
    if args.json:
        out.json(summary)
    elif result.train_loss is not None:
        out.print(
            f"done: {result.global_step} steps, train loss {result.train_loss:.4f}"
            + (f", eval loss {result.eval_loss:.4f}" if result.eval_loss is not None else "")
            + (f"; saved to {result.saved}" if result.saved else "")
        )
    return EXIT_OK


@contextlib.contextmanager
def _checking_for(plan: Any) -> Iterator[None]:
    """Validate as this machine's ranks will. On a machine other than the first, rank 0 (on the
    first) owns output_dir, so the checks that only its owner makes (an earlier run's files in
    the folder, which the first machine may have just started writing) are left to it: the
    checks read the rank of the process from ``PADDLE_TRAINER_ID``, set here to this machine's
    first rank for the duration, then put back."""
    if plan is None or plan.first_node:
        yield
        return
    before = os.environ.get("PADDLE_TRAINER_ID")
    os.environ["PADDLE_TRAINER_ID"] = str(plan.rank * plan.nproc_per_node)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PADDLE_TRAINER_ID", None)
        else:
            os.environ["PADDLE_TRAINER_ID"] = before


def _launch_plan(args: argparse.Namespace) -> Any:
    """The processes ``--nproc-per-node`` and friends ask for, or None for this process alone."""
    from mixcore.config.run_checks import launched_world_size
    from mixcore.train.launch import LaunchError, LaunchPlan

    asked = [
        flag
        for flag, value in (
            ("--nproc-per-node", args.nproc_per_node),
            ("--nnodes", args.nnodes),
            ("--master", args.master),
            ("--rank", args.rank),
        )
        if value is not None
    ]
    if not asked:
        return None
    launched = launched_world_size()
    if launched is not None:
        raise LaunchError(
            f"this process is already one of the {launched} processes of a "
            f"paddle.distributed.launch run; leave out {', '.join(asked)} there"
        )
    if args.nproc_per_node is None:
        raise LaunchError(f"{', '.join(asked)} need(s) --nproc-per-node N")
    plan = LaunchPlan(args.nproc_per_node, args.nnodes or 1, args.master, args.rank)
    plan.check()
    return plan


def _launch(args: argparse.Namespace, plan: Any, config: dict[str, Any], out: Output) -> int:
    """Start the run's processes through Paddle's launcher (the config passed validation)."""
    from mixcore.train.launch import launch_training

    env = dict(os.environ)  # before `import paddle`, which pins OMP_NUM_THREADS in os.environ
    _prepare_paddle(args.verbose)
    from mixcore.train.run import TrainError, device_problems

    problems = device_problems(config)  # bf16 without a GPU, a device this build lacks
    if problems:
        raise TrainError("; ".join(problems))
    child = ["--config", str(Path(args.config).resolve()), "--output-dir", config["output_dir"]]
    if args.max_steps is not None:
        child += ["--max-steps", str(args.max_steps)]
    if args.resume_from_checkpoint:
        child += ["--resume-from-checkpoint", str(Path(args.resume_from_checkpoint).resolve())]
    child += [flag for flag, on in (("--verbose", args.verbose), ("--json", args.json)) if on]
    return launch_training(
        plan,
        output_dir=Path(config["output_dir"]),
        overwrite=config["overwrite_output_dir"] is True,
        resume=bool(config.get("resume_from_checkpoint")),
        train_args=child,
        report=out.print,
        verbose=args.verbose,
        env=env,
    )


def _json_object(text: str | None, option: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ConfigError(option, [Issue("$", f"not JSON: {exc}")]) from None
    if not isinstance(value, dict):
        raise ConfigError(option, [Issue("$", "must be a JSON object")])
    return value


def cmd_infer(args: argparse.Namespace, registry: Any, out: Output) -> int:
    if (args.prompt is None) == (args.data is None):
        out.error("give either --prompt (with optional --image) or --data")
        return EXIT_USAGE
    if args.data_options and args.data is None:
        out.error("--data-options needs --data")
        return EXIT_USAGE
    if args.output:
        from mixcore.config.run_checks import output_file_problem

        problem = output_file_problem(Path(args.output), what="--output")
        if problem:
            out.error(problem)
            return EXIT_USAGE
    from mixcore import inference

    if args.engine == ENGINE_PADDLE_INFERENCE:
        return _infer_exported(args, registry, out)
    from mixcore.exported import is_export_folder

    if args.model and is_export_folder(args.model):
        out.error(
            f"{args.model} is an exported model: answer with it through "
            f"--engine {ENGINE_PADDLE_INFERENCE}"
        )
        return EXIT_USAGE
    # Everything that can be checked before Paddle is imported, and before weights are read.
    lora = Path(args.lora) if args.lora else None
    request = inference.request_model(
        registry, args.model, lora, _json_object(args.model_options, "--model-options")
    )
    data = _data_file_entry(args, registry)
    _prepare_paddle()
    # A data file's records are read (and checked) before the weights.
    samples = inference.build_data_file(registry, *data) if data is not None else None
    bundle = inference.load_requested(registry, request)
    return _answer(args, registry, out, request.entry, bundle, samples, num_beams=args.num_beams)


def _data_file_entry(args: argparse.Namespace, registry: Any) -> Any:
    """``--data``'s dataset entry (checked, nothing read yet), or None for a single prompt."""
    from mixcore import inference

    if args.data is None:
        return None
    return inference.data_file_entry(
        registry,
        Path(args.data),
        args.dataset_name,
        _json_object(args.data_options, "--data-options"),
    )


def _answer(
    args: argparse.Namespace,
    registry: Any,
    out: Output,
    entry: Any,
    model: Any,
    samples: Any,
    **decoding: Any,
) -> int:
    """Answer the data file's samples, or the single ``--prompt``, with ``model`` (a loaded
    bundle, or an exported model)."""
    from mixcore import inference

    if samples is not None:
        return _infer_data_file(args, registry, out, entry, model, samples)
    image = Path(args.image) if args.image else None
    [prediction] = inference.predict(
        registry,
        entry,
        model,
        [inference.single_prompt(args.prompt, image)],
        max_new_tokens=args.max_new_tokens,
        **decoding,
    )
    if args.json:
        out.json(prediction.to_json())
    else:
        out.print(prediction.prediction)
    return EXIT_OK


# -- infer --engine paddle-inference, export ------------------------------------------------------

ENGINE_DYNAMIC, ENGINE_PADDLE_INFERENCE = "dynamic", "paddle-inference"


def _infer_exported(args: argparse.Namespace, registry: Any, out: Output) -> int:
    """``infer --engine paddle-inference``: answer with a folder ``mixcore export`` wrote."""
    from mixcore import inference

    for option, value in (("--lora", args.lora), ("--model-options", args.model_options)):
        if value:
            out.error(f"{option} does not apply to an exported model (export it with {option})")
            return EXIT_USAGE
    if args.num_beams > 1:
        out.error(f"--engine {ENGINE_PADDLE_INFERENCE} decodes greedily: leave out --num-beams")
        return EXIT_USAGE
    if not args.model:
        out.error(f"--engine {ENGINE_PADDLE_INFERENCE} needs --model EXPORT_DIR")
        return EXIT_USAGE
    request = inference.request_exported(registry, Path(args.model))
    data = _data_file_entry(args, registry)
    _prepare_paddle()
    samples = inference.build_data_file(registry, *data) if data is not None else None
    deployed = inference.load_exported(registry, request)
    return _answer(args, registry, out, request.entry, deployed, samples)


def cmd_export(args: argparse.Namespace, registry: Any, out: Output) -> int:
    from mixcore import export, inference
    from mixcore.config.run_checks import output_folder_problem

    output = Path(args.output)
    problem = (
        output_folder_problem(output, what="--output")
        or export.adapter_problem(args.model)
        or export.output_problem(output, overwrite=args.overwrite)
    )
    if problem:
        out.error(problem)
        return EXIT_USAGE
    if args.max_length is not None and args.max_length < 2:
        out.error(f"--max-length must be at least 2, got {args.max_length}")
        return EXIT_USAGE
    lora = Path(args.lora) if args.lora else None
    request = inference.request_model(
        registry, args.model, lora, _json_object(args.model_options, "--model-options")
    )
    if not request.entry.capabilities.get("deploy"):
        out.error(export.cannot_export(registry, request.entry.name))
        return EXIT_USAGE
    _prepare_paddle(args.verbose)
    result = export.export_model(
        registry,
        request,
        output,
        max_length=args.max_length,
        overwrite=args.overwrite,
        verify=not args.no_verify,
        report=(lambda text: print(text, file=out.err)) if args.verbose else None,
    )
    manifest = result.manifest
    if args.json:
        out.json({"output": str(result.output), **{k: manifest[k] for k in _EXPORT_SUMMARY}})
    else:
        out.print(
            f"exported {manifest['model']} ({manifest['decoding']}: "
            f"{', '.join(manifest['parts'])}) to {result.output}"
        )
    return EXIT_OK


_EXPORT_SUMMARY = ("model", "decoding", "max_length", "parts", "notes")


def _infer_data_file(
    args: argparse.Namespace,
    registry: Any,
    out: Output,
    model: Any,
    bundle: Any,
    samples: Any,
) -> int:
    from tqdm import tqdm

    from mixcore.inference import answer_all

    shown: list[Any] = []
    target = Path(args.output) if args.output else None
    with contextlib.ExitStack() as stack:
        handle = stack.enter_context(target.open("w", encoding="utf-8")) if target else None

        def each(prediction: Any) -> None:
            line = json.dumps(prediction.to_json(), ensure_ascii=False)
            if handle:
                handle.write(line + "\n")
            else:
                out.print(line)
            if len(shown) < args.show:
                shown.append(prediction)

        bar = stack.enter_context(tqdm(total=len(samples), desc="infer", disable=args.json))
        score = answer_all(
            registry,
            model,
            bundle,
            samples,
            each,
            max_new_tokens=args.max_new_tokens,
            num_beams=args.num_beams,
            batch_size=args.batch_size,
            progress=bar.update,
        )
    _show_predictions(out, shown)
    summary: dict[str, Any] = {
        "records": score.records,
        "scored": score.scored,
        "exact_match": score.exact_match,
    }
    if target:
        summary["output"] = str(target)
    if args.json:
        out.json(summary)
    elif target and score.scored:
        out.print(
            f"exact match: {score.correct}/{score.scored} = {score.exact_match:.1%}; wrote {target}"
        )
    elif target:
        out.print(f"wrote {score.records} predictions to {target}")
    return EXIT_OK


def _show_predictions(out: Output, predictions: list[Any]) -> None:
    for p in predictions:
        question = p.prompt.replace("\n", " ").strip()
        verdict = ""
        if p.correct is not None:
            verdict = "  ok" if p.correct else f"  (expected {p.reference!r})"
        out.print(f"{question!r} -> {p.prediction!r}{verdict}")


def cmd_merge_lora(args: argparse.Namespace, registry: Any, out: Output) -> int:
    from mixcore import inference
    from mixcore.config.run_checks import output_folder_problem

    output = Path(args.output)
    problem = output_folder_problem(output, what="--output")
    if problem:
        out.error(problem)
        return EXIT_USAGE
    if output.exists() and any(output.iterdir()) and not args.overwrite:
        out.error(f"{output} exists and is not empty; pass --overwrite to replace its files")
        return EXIT_USAGE
    request = inference.request_model(
        registry,
        args.model,
        Path(args.lora),
        _json_object(args.model_options, "--model-options"),
    )
    _prepare_paddle()
    bundle = inference.load_requested(registry, request)
    output.mkdir(parents=True, exist_ok=True)
    registry.hook.save_model(model_name=request.entry.name, bundle=bundle, folder=str(output))
    out.print(f"merged {args.lora} into {args.model or 'its base model'}: {output}")
    return EXIT_OK


# -- checkpoint split / merge (tensor-parallel rank shards) ----------------------------------------

#: Files of a checkpoint folder that hold its weights (everything else is copied alongside).
_WEIGHT_FILE = re.compile(
    r"model(-\d+-of-\d+)?\.safetensors|model\.safetensors\.index\.json|"
    r"model\.tp\d+-of-\d+\.safetensors"
)


def _empty_output(output: Path, out: Output) -> bool:
    from mixcore.config.run_checks import output_folder_problem

    problem = output_folder_problem(output, what="--output")
    if problem is None and output.exists() and any(output.iterdir()):
        problem = f"--output: {output} exists and is not empty; give a new or empty folder"
    if problem:
        out.error(problem)
        return False
    return True


def _copy_other_files(source: Path, output: Path) -> list[str]:
    import shutil

    copied = []
    for path in sorted(source.iterdir()):
        if path.is_file() and not _WEIGHT_FILE.fullmatch(path.name):
            shutil.copy2(path, output / path.name)
            copied.append(path.name)
    return copied


def cmd_checkpoint_split(args: argparse.Namespace, registry: Any, out: Output) -> int:
    import tempfile

    from mixcore import inference
    from mixcore.kit.checkpoints import read_weights
    from mixcore.kit.tensor_parallel import (
        mark_owners,
        split_state,
        stored_splits,
        write_rank_shards,
    )
    from mixcore.models import model_parallel_plan

    output = Path(args.output)
    if not _empty_output(output, out):
        return EXIT_USAGE
    options = _json_object(args.model_options, "--model-options")
    request = inference.request_model(registry, args.model, None, options)
    _prepare_paddle()
    bundle = inference.load_requested(registry, request)
    _, resolved = model_parallel_plan(registry, request.entry, bundle, args.degree)
    with tempfile.TemporaryDirectory(prefix="mixcore-split-") as staging:
        # The plugin writes the folder its loader reads, in its own layout (names, transposes).
        real, owners = Path(staging, "weights"), Path(staging, "owners")
        registry.hook.save_model(model_name=request.entry.name, bundle=bundle, folder=str(real))
        tensors = read_weights(real)
        # Saved again with each element replaced by its rank: where each rank's part lies in
        # that layout (the model's weights are gone after this).
        mark_owners(bundle.model, resolved)
        registry.hook.save_model(model_name=request.entry.name, bundle=bundle, folder=str(owners))
        owner_maps = read_weights(owners)
        if owner_maps.keys() != tensors.keys():
            raise MixcoreError(
                f"model {request.entry.name!r} saved different tensors the second time; its "
                "checkpoint cannot be cut into rank files"
            )
        layouts = stored_splits(owner_maps, args.degree)
        shards = split_state(tensors, layouts, args.degree)
        output.mkdir(parents=True, exist_ok=True)
        copied = _copy_other_files(real, output)
    files = write_rank_shards(output, shards, layouts)
    summary = {
        "output": str(output),
        "degree": args.degree,
        "rank_files": [f.name for f in files],
        "split_tensors": len(layouts),
        "replicated_tensors": len(tensors) - len(layouts),
        "other_files": copied,
    }
    if args.json:
        out.json(summary)
    else:
        out.print(
            f"split {args.model} for {args.degree} ranks: {len(layouts)} tensors split, "
            f"{summary['replicated_tensors']} on every rank; wrote {output}"
        )
    return EXIT_OK


def cmd_checkpoint_merge(args: argparse.Namespace, registry: Any, out: Output) -> int:
    from mixcore.kit.checkpoints import write_weights
    from mixcore.kit.tensor_parallel import merge_state, read_rank_shards

    source, output = Path(args.model), Path(args.output)
    if not source.is_dir():
        out.error(f"--model: {source} is not a folder of rank files")
        return EXIT_USAGE
    if not _empty_output(output, out):
        return EXIT_USAGE
    shards, splits = read_rank_shards(source)
    merged = merge_state(shards, splits)
    output.mkdir(parents=True, exist_ok=True)
    copied = _copy_other_files(source, output)
    write_weights(output, merged)
    summary = {"output": str(output), "degree": len(shards), "tensors": len(merged)}
    if args.json:
        out.json({**summary, "other_files": copied})
    else:
        out.print(f"merged {len(shards)} rank files of {source} into {output}")
    return EXIT_OK


def _add_checkpoint_commands(commands: Any) -> None:
    checkpoint = commands.add_parser(
        "checkpoint",
        help="split a checkpoint into tensor-parallel rank files, or merge them back",
        description="Tensor-parallel checkpoints: `split` cuts a model's weights by its "
        "plugin's parallel plan into one safetensors file per rank (model.tpRR-of-NN."
        "safetensors, each recording its rank and how each tensor was cut); `merge` puts a "
        "complete set back into one checkpoint that loads like any other.",
    )
    actions = checkpoint.add_subparsers(dest="checkpoint_command", metavar="ACTION")
    split = actions.add_parser(
        "split",
        help="cut a full checkpoint into rank files for N ranks",
        description="Load the model through its plugin, cut its weights by the plugin's "
        "parallel plan for --degree ranks and write the rank files with the checkpoint's "
        "config, tokenizer and processor files.",
    )
    split.add_argument("--model", required=True, metavar="DIR|ALIAS", help="the full model")
    split.add_argument("--degree", required=True, type=_positive_int, metavar="N")
    split.add_argument("--output", required=True, metavar="DIR", help="a new or empty folder")
    split.add_argument("--model-options", metavar="JSON", help="options of the model")
    split.add_argument("--json", action="store_true", help="machine-readable output")
    split.set_defaults(handler=cmd_checkpoint_split)
    merge = actions.add_parser(
        "merge",
        help="merge a complete set of rank files into one checkpoint",
        description="Read every rank file of --model (an incomplete or inconsistent set is "
        "refused), put each tensor back together and write model.safetensors with the other "
        "files of the folder. Needs no plugin and no Paddle.",
    )
    merge.add_argument("--model", required=True, metavar="DIR", help="folder of rank files")
    merge.add_argument("--output", required=True, metavar="DIR", help="a new or empty folder")
    merge.add_argument("--json", action="store_true", help="machine-readable output")
    merge.set_defaults(handler=cmd_checkpoint_merge)


# -- parser ----------------------------------------------------------------------------------------

DESCRIPTION = """\
Fine-tune vision-language models on PaddlePaddle with plugins for models and datasets.

Models and datasets come from installed plugins (entry point group `mixcore.plugins`).
Set MIXCORE_PLUGINS=name,name to load only some of them (empty: none).
"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mixcore",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mixcore {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    plugins = commands.add_parser(
        "plugins",
        help="list, inspect and check installed plugins",
        description="Inspect the plugins found in the installed packages' entry points.",
    )
    plugin_commands = plugins.add_subparsers(dest="plugins_command", metavar="ACTION")
    listing = plugin_commands.add_parser(
        "list",
        help="one row per plugin: version, status, models, datasets, hooks",
        description="List every plugin with its version, status (and reason when broken), the "
        "models (with capabilities) and datasets it provides, and the hooks it implements.",
    )
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.add_argument("--all", action="store_true", help="include the core's default hooks")
    listing.set_defaults(handler=cmd_plugins_list)
    show = plugin_commands.add_parser(
        "show",
        help="details of one plugin: its models' and datasets' options",
        description="Show one plugin: where it comes from, its hooks, and the option schema "
        "of each model and dataset it registers; for a broken plugin, the full error.",
    )
    show.add_argument("name", help="plugin name as shown by `mixcore plugins list`")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(handler=cmd_plugins_show)
    check = plugin_commands.add_parser(
        "check",
        help="exit 1 if any plugin is broken",
        description="Load and validate every plugin; print the broken ones and exit 1 if any.",
    )
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.set_defaults(handler=cmd_plugins_check)

    validate = commands.add_parser(
        "validate",
        help="check a config file and report every problem at once",
        description="Validate a JSON or YAML config against the schema composed from the core "
        "and the installed plugins. Each problem is reported with its JSON path. Exit code 2 "
        "when the config has problems. The allowed keys: docs/config-reference.md, or "
        "`mixcore schema` for the composed schema with the installed plugins' options.",
    )
    validate.add_argument(
        "--config", required=True, metavar="FILE", help="config file (.json, .yaml)"
    )
    validate.add_argument(
        "--world-size",
        type=int,
        metavar="N",
        help="check the parallel degrees against N processes",
    )
    validate.add_argument("--json", action="store_true", help="machine-readable output")
    validate.set_defaults(handler=cmd_validate)

    train = commands.add_parser(
        "train",
        help="fine-tune a model as a config file says (full SFT or LoRA)",
        description="Validate the config, load the model through its plugin, apply freezing "
        "and LoRA, build the datasets, and train with PaddleNLP's Trainer. Checkpoints are "
        "safetensors that resume_from_checkpoint continues from; output_dir also gets the final "
        "model (or LoRA adapter), log_history.json and loss_curve.png. Several processes "
        "(cards, or CPU processes over gloo): --nproc-per-node N [--nnodes M --master HOST:PORT "
        "--rank R] runs Paddle's launcher (python -m paddle.distributed.launch), every rank's "
        "log in output_dir/logs.",
    )
    train.add_argument("--config", required=True, metavar="FILE", help="config file (.json, .yaml)")
    train.add_argument("--output-dir", metavar="DIR", help="override the config's output_dir")
    train.add_argument("--max-steps", type=int, metavar="N", help="override the config's max_steps")
    train.add_argument(
        "--resume-from-checkpoint", metavar="DIR", help="continue from a checkpoint folder"
    )
    train.add_argument(
        "--dry-run",
        action="store_true",
        help="check the data (mixture, packing, every sample and image) without training",
    )
    train.add_argument("--json", action="store_true", help="print the summary as JSON")
    launch = train.add_argument_group(
        "several processes",
        "Start the run's processes through `python -m paddle.distributed.launch` (GPUs: one per "
        "card; CPU: gloo). The config is validated for nnodes x nproc-per-node processes first; "
        "with --dry-run the data is checked here, in this process, and nothing is launched.",
    )
    launch.add_argument(
        "--nproc-per-node", type=_positive_int, metavar="N", help="processes on this machine"
    )
    launch.add_argument(
        "--nnodes", type=_positive_int, metavar="M", help="machines in the run (default 1)"
    )
    launch.add_argument(
        "--master",
        metavar="HOST:PORT",
        help="rendezvous address of the first machine (needed with --nnodes above 1)",
    )
    launch.add_argument(
        "--rank",
        type=int,
        metavar="R",
        help="this machine's rank among the nodes, 0 to M-1, 0 on the --master machine "
        "(needed with --nnodes above 1)",
    )
    train.add_argument(
        "--verbose",
        action="store_true",
        help="keep PaddleNLP's INFO logging and what Paddle prints at import",
    )
    train.set_defaults(handler=cmd_train)

    infer = commands.add_parser(
        "infer",
        help="answer a prompt about an image, or every record of a data file",
        description="Greedy decoding (beam search with --num-beams) with a trained model. One prompt: --prompt TEXT [--image "
        "FILE]. Batch: --data FILE writes one JSON line per record (prediction and the record's "
        "final reply as reference) to --output, and reports exact-match accuracy.",
    )
    infer.add_argument("--model", metavar="DIR|ALIAS", help="checkpoint folder or model alias")
    infer.add_argument("--lora", metavar="DIR", help="LoRA adapter folder to merge in first")
    infer.add_argument("--model-options", metavar="JSON", help="e.g. '{\"random_init\": true}'")
    infer.add_argument("--prompt", help="the question")
    infer.add_argument("--image", metavar="FILE", help="the image the question is about")
    infer.add_argument("--data", metavar="FILE", help="a data file to answer record by record")
    infer.add_argument(
        "--dataset-name", default="chatml_dataset", help="dataset kind of --data (chatml_dataset)"
    )
    infer.add_argument(
        "--data-options",
        metavar="JSON",
        help="more options of the --data entry, as in a config's dataset.eval, e.g. "
        '\'{"image_root": "images"}\' (paths relative to the data file\'s folder)',
    )
    infer.add_argument("--output", metavar="FILE", help="JSON Lines predictions (default stdout)")
    infer.add_argument("--max-new-tokens", type=int, default=32, metavar="N")
    infer.add_argument(
        "--num-beams",
        type=_positive_int,
        default=1,
        metavar="N",
        help="beam search with N beams (default 1: greedy)",
    )
    infer.add_argument("--batch-size", type=int, default=16, metavar="N")
    infer.add_argument("--show", type=int, default=0, metavar="N", help="print the first N answers")
    infer.add_argument("--json", action="store_true", help="machine-readable output")
    infer.add_argument(
        "--engine",
        choices=[ENGINE_DYNAMIC, ENGINE_PADDLE_INFERENCE],
        default=ENGINE_DYNAMIC,
        help="dynamic (default): the model in Paddle's dynamic mode; paddle-inference: a "
        "folder `mixcore export` wrote, through Paddle Inference's predictor (greedy)",
    )
    infer.set_defaults(handler=cmd_infer)

    merge = commands.add_parser(
        "merge-lora",
        help="fold a LoRA adapter into its base model: a standalone checkpoint",
        description="Load the base model, add the adapter's LoRA deltas to the adapted weights, "
        "carry over the modules trained in full, and save a checkpoint (with tokenizer and "
        "processor files) that loads without the adapter.",
    )
    merge.add_argument(
        "--model", metavar="DIR|ALIAS", help="base model (default: recorded with the adapter)"
    )
    merge.add_argument("--lora", required=True, metavar="DIR", help="LoRA adapter folder")
    merge.add_argument(
        "--output", required=True, metavar="DIR", help="where to write the checkpoint"
    )
    merge.add_argument("--model-options", metavar="JSON", help="options of the base model")
    merge.add_argument("--overwrite", action="store_true", help="write into a non-empty folder")
    merge.set_defaults(handler=cmd_merge_lora)

    export = commands.add_parser(
        "export",
        help="write a trained model as Paddle static inference programs, for deployment",
        description="Load a model as infer does (what infer --model takes: a final model "
        "folder, a merged LoRA model, a preset; or a base with --lora merged on the fly), save "
        "each part (token table, "
        "vision part, language model; encoder and decoder for T5) with paddle.jit.save, and "
        "copy the tokenizer and image processor files, so the folder answers prompts on its "
        "own: `mixcore infer --engine paddle-inference --model DIR`. docs/models.md lists "
        "which models export.",
    )
    export.add_argument("--model", metavar="DIR|ALIAS", help="model folder or alias")
    export.add_argument("--lora", metavar="DIR", help="LoRA adapter folder to merge in first")
    export.add_argument("--model-options", metavar="JSON", help="e.g. '{\"random_init\": true}'")
    export.add_argument("--output", required=True, metavar="DIR", help="the export folder")
    export.add_argument(
        "--max-length",
        type=int,
        metavar="N",
        help="longest prompt plus answer, image tokens included (default: the model's limit, "
        "at most 512); a language part that traces only with fixed shapes takes exactly N "
        "positions",
    )
    export.add_argument(
        "--overwrite", action="store_true", help="replace an earlier export in --output"
    )
    export.add_argument(
        "--no-verify",
        action="store_true",
        help="skip running each saved part through Paddle Inference against the model",
    )
    export.add_argument("--json", action="store_true", help="machine-readable output")
    export.add_argument(
        "--verbose", action="store_true", help="say which part is traced, keep Paddle's output"
    )
    export.set_defaults(handler=cmd_export)

    doctor = commands.add_parser(
        "doctor",
        help="check that the training stack imports and every plugin loads",
        description="Import each package that training needs (Paddle, PaddleNLP and the modules "
        "they import), report versions and import times, and load every plugin. Exit 1 when "
        "anything fails, with the fix.",
    )
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.set_defaults(handler=cmd_doctor)

    schema = commands.add_parser(
        "schema",
        help="print the config JSON Schema (for editor autocompletion)",
        description="Print the JSON Schema (Draft 2020-12) of config files, composed from the "
        "core fields and every installed model's and dataset's options.",
    )
    schema.add_argument("--core", action="store_true", help="core fields only, no plugin options")
    schema.set_defaults(handler=cmd_schema)
    _add_checkpoint_commands(commands)
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    registry_factory: RegistryFactory | None = None,
    out: Output | None = None,
) -> int:
    """Run the CLI and return its exit code (the console script exits with it)."""
    out = out or Output()
    parser = build_parser()
    try:
        # argparse writes help, version and usage errors to sys.stdout / sys.stderr itself.
        with contextlib.redirect_stdout(out.out), contextlib.redirect_stderr(out.err):
            args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(out.out if args.command is None else out.err)
        return EXIT_USAGE if args.command else EXIT_OK
    if registry_factory is None:
        from mixcore.registry import build_registry

        registry_factory = build_registry
    if handler is not cmd_train:
        return _dispatch(args, handler, registry_factory, out)
    code = EXIT_FAILED  # what an exception that escapes (a bug) ends the process with
    try:
        code = _dispatch(args, handler, registry_factory, out)
        return code
    finally:
        from mixcore.train.launch import record_rank_exit

        record_rank_exit(code)  # inside a launch whose logs are the run's: for its parent


def _dispatch(
    args: argparse.Namespace, handler: Any, registry_factory: RegistryFactory, out: Output
) -> int:
    try:
        registry = registry_factory()
        if handler not in (cmd_plugins_list, cmd_plugins_check, cmd_plugins_show, cmd_doctor):
            for plugin in registry.broken:
                out.warn(f"plugin {plugin.name!r} is broken and was skipped: {plugin.reason}")
            for plugin in registry.plugins.values():
                for line in plugin.conflicts:
                    out.warn(f"plugin {plugin.name!r}: {line}")
        return handler(args, registry, out)
    except ConfigError as exc:
        out.error(str(exc))
        return EXIT_USAGE
    except MixcoreError as exc:
        if exc.detail and getattr(args, "verbose", False):
            print(exc.detail.rstrip(), file=out.err)  # a plugin's traceback, for its author
        out.error(str(exc))
        # Bad names and bad data are the user's to fix, like a bad config.
        return EXIT_USAGE if isinstance(exc, (LookupError, DataError, UsageError)) else EXIT_FAILED
    except ImportError as exc:  # a package missing from the environment, not a bug to trace
        from mixcore.environment import missing_module_message

        out.error(missing_module_message(exc))
        return EXIT_FAILED
    except KeyboardInterrupt:
        out.error("interrupted")
        return 130


def run() -> None:
    """Console-script entry point."""
    try:
        code = main()
        # Flush here, not at interpreter exit, where a broken pipe can only be reported as
        # "Exception ignored ... BrokenPipeError".
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader closed the pipe (`mixcore schema | head -1`): nothing more can be said, and
        # nothing is wrong with mixcore. Python's own recipe: point stdout (and stderr, which
        # may be the same pipe) at devnull so the final flush at exit cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                os.dup2(devnull, stream.fileno())
        code = EXIT_BROKEN_PIPE
    sys.exit(code)


if __name__ == "__main__":
    run()
