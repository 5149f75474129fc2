"""Check a loaded config against the composed schema and across fields, reporting every problem."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mixcore.api.errors import ConfigError, MixcoreError, PluginError
from mixcore.config.parallel_checks import check_parallel
from mixcore.config.run_checks import check_best_model, check_loggers, check_run
from mixcore.config.schema import (
    PADDLEMIX_SCHEDULERS,
    apply_defaults,
    compose_schema,
    dataset_entry_schema,
)
from mixcore.config.stream_checks import check_streaming
from mixcore.issues import Issue, json_path, short, validate
from mixcore.kit.files import file_problem, max_data_file_bytes, read_json

if TYPE_CHECKING:
    from mixcore.registry import DatasetEntry, ModelEntry, Registry

#: ``format`` values of dataset option schemas that name something on disk, checked by
#: :func:`validate_config`: ``"path"`` a file read whole (a ``.tar`` shard is read as a stream,
#: so the data-file size cap spares it), ``"directory"`` a folder, ``"glob"`` a pattern
#: (``shards/*.jsonl``) that must match at least one file.
PATH_FORMATS = ("path", "directory", "glob")
#: File name endings read as a stream of members, never whole.
STREAMED_SUFFIXES = (".tar",)
#: Largest checkpoint ``config.json`` read to find the language model it names.
CHECKPOINT_CONFIG_BYTES = 16 * 1024 * 1024


def validate_config(
    config: dict[str, Any],
    registry: Registry,
    *,
    base_dir: Path | None = None,
    world_size: int | None = None,
) -> list[Issue]:
    """Every problem with ``config``, sorted by JSON path; empty when it is usable.

    :param base_dir: the config file's folder; when given, ``data_files`` must exist under it.
    :param world_size: the number of processes the run will have; when given, the parallel
        degrees must fit it.
    """
    issues = set(validate(config, compose_schema(registry)))
    if base_dir is not None:
        config = resolve_model_path(config, base_dir)
    max_length_given = "max_length" in config
    # The cross-field checks read the config as a run would: with its defaults.
    config = apply_defaults(config)
    model = _resolve_model(config, registry, issues)
    if model is not None:
        _check_model(config, registry, model, issues)
    _check_fields(config, issues, world_size)
    _check_schedule(config, issues)
    _check_lengths(config, issues, max_length_given)
    check_best_model(config, issues)
    check_loggers(config, issues)
    check_streaming(config, issues)
    if base_dir is not None:
        _check_text_model(config, base_dir, issues)
        _check_data_files(config, registry, base_dir, issues)
        check_run(config, registry, base_dir, model.name if model else None, issues)
    return sorted(issues)


def check_config(
    config: dict[str, Any],
    registry: Registry,
    *,
    source: str = "<config>",
    base_dir: Path | None = None,
    world_size: int | None = None,
) -> None:
    """Raise :class:`ConfigError` listing every problem, or return when the config is usable."""
    issues = validate_config(config, registry, base_dir=base_dir, world_size=world_size)
    if issues:
        raise ConfigError(source, issues)


def resolve_model_path(config: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """``config`` with a relative ``model_name_or_path`` folder made absolute.

    Like data files, a checkpoint folder named in a config is relative to the config file's
    folder; a value that names no folder there (an alias such as ``qwen_vl/tiny``) is kept.
    """
    source = config.get("model_name_or_path")
    if not isinstance(source, str) or not source or Path(source).is_absolute():
        return config
    try:
        candidate = (base_dir / source).resolve()
        if candidate.is_dir():
            return {**config, "model_name_or_path": str(candidate)}
    except (OSError, RuntimeError):
        pass
    return config


def _resolve_model(
    config: dict[str, Any], registry: Registry, issues: set[Issue]
) -> ModelEntry | None:
    source, explicit = config.get("model_name_or_path"), config.get("model")
    if (
        not isinstance(source, str)
        or not source
        or (explicit is not None and not isinstance(explicit, str))
    ):
        return None  # the schema already reported it
    try:
        return registry.resolve_model(source, explicit)
    except MixcoreError as exc:
        if explicit is None:  # with an explicit name the schema's enum already said it
            issues.add(Issue("$.model_name_or_path", str(exc)))
        return None


def model_options_issues(
    registry: Registry,
    model: ModelEntry,
    source: str,
    options: Any,
    *,
    prefix: tuple[Any, ...] = ("model_options",),
    schema_checked: bool = False,
) -> list[Issue]:
    """What is wrong with ``options`` for ``model`` loaded from ``source``, at ``$.<prefix>``.

    First the model's option schema (skipped when ``schema_checked``: the composed config schema
    already did it); when the options pass it, the model's plugin through its
    ``check_model_options`` hook, for what a schema cannot say (a preset that has no weights
    without ``random_init``, a folder whose files do not fit the options). Each problem the
    plugin returns is an issue at the options' path, in the plugin's words. Paddle is never
    imported and no weights are read, so ``validate``, ``train``, ``infer`` and ``merge-lora``
    all call it before loading anything.
    """
    if not schema_checked:
        found = validate(options, model.options_schema, prefix=prefix)
        if found:
            return found
    if not isinstance(options, dict):
        return []  # the schema said so
    problems = registry.hook.check_model_options(
        model_name=model.name, source=source, options=options
    )
    if problems is None:
        return []
    if isinstance(problems, str) or not all(isinstance(p, str) for p in problems):
        raise PluginError(
            f"plugin {model.plugin!r} answered check_model_options for model {model.name!r} "
            f"with {short(problems)}; it must return a list of strings"
        )
    return [Issue(json_path(prefix), problem) for problem in problems]


def _check_model(
    config: dict[str, Any], registry: Registry, model: ModelEntry, issues: set[Issue]
) -> None:
    explicit = config.get("model") is not None
    # With an explicit `model` the composed schema checked the options; its issues are in.
    if not (explicit and any(i.path.startswith("$.model_options") for i in issues)):
        issues.update(
            model_options_issues(
                registry,
                model,
                config["model_name_or_path"],
                config["model_options"],
                schema_checked=explicit,
            )
        )
    can = model.capabilities
    claimed = ", ".join(k for k, v in sorted(can.items()) if v) or "none yet"
    if config["do_train"] is not False and not (can.get("sft") or can.get("pretrain")):
        issues.add(
            Issue(
                "$.model_name_or_path",
                f"model {model.name!r} cannot be trained yet "
                f"(its plugin {model.plugin!r} supports: {claimed})",
            )
        )
    if config["lora"] and not can.get("lora") and not config.get("lora_target_modules"):
        issues.add(
            Issue(
                "$.lora",
                f"model {model.name!r} names no default LoRA targets; "
                "list them in lora_target_modules",
            )
        )
    if config["mixtoken"] and not can.get("packing"):
        issues.add(
            Issue("$.mixtoken", f"model {model.name!r} cannot pack samples (supports: {claimed})")
        )
    degrees = ("tensor_parallel_degree", "pipeline_parallel_degree")
    for key, capability in zip(degrees, ("tensor_parallel", "pipeline_parallel"), strict=True):
        value = config.get(key)
        if isinstance(value, int) and value > 1 and not can.get(capability):
            issues.add(Issue(f"$.{key}", f"model {model.name!r} has no {capability} plan"))


def _check_fields(config: dict[str, Any], issues: set[Issue], world_size: int | None) -> None:
    if config["bf16"] is True and config["fp16"] is True:
        issues.add(Issue("$.fp16", "bf16 and fp16 are both true; choose one"))
    check_parallel(config, issues, world_size)
    dataset = config.get("dataset")
    has_eval = isinstance(dataset, dict) and bool(dataset.get("eval"))
    for key, wants_eval in (
        ("evaluation_strategy", config["evaluation_strategy"] not in (None, "no")),
        ("do_eval", config["do_eval"] is True),
    ):
        if wants_eval and not has_eval:
            issues.add(Issue(f"$.{key}", "evaluation is requested but dataset.eval is empty"))
    targets = config.get("lora_target_modules")
    if isinstance(targets, list):
        for i, pattern in enumerate(targets):
            if isinstance(pattern, str):
                try:
                    re.compile(pattern)
                except re.error as exc:
                    issues.add(
                        Issue(f"$.lora_target_modules[{i}]", f"not a regular expression: {exc}")
                    )
    for split, entries in _dataset_entries(config):
        labels: dict[str, int] = {}
        for i, entry in entries:
            if "weight" in entry and "num_samples" in entry:
                issues.add(
                    Issue(json_path(("dataset", split, i)), "give weight or num_samples, not both")
                )
            label = entry.get("label")
            if isinstance(label, str):
                if label in labels:
                    issues.add(
                        Issue(
                            json_path(("dataset", split, i, "label")),
                            f"label {label!r} is already used by dataset.{split}[{labels[label]}]",
                        )
                    )
                labels.setdefault(label, i)
        budget = (config.get("dataset") or {}).get(f"{split}_samples")
        if budget is not None and not any("weight" in e for _, e in entries):
            issues.add(
                Issue(
                    f"$.dataset.{split}_samples",
                    f"sets how many samples the weighted sources share, but no dataset.{split} "
                    "entry has a weight",
                )
            )


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_schedule(config: dict[str, Any], issues: set[Issue]) -> None:
    """PaddleMIX's scheduler fields: ``lr_scheduler_name`` agrees with ``lr_scheduler_type``, and
    ``eta_min`` / ``warmup_start_lr`` shape a cosine schedule below ``learning_rate``."""
    name, kind = config.get("lr_scheduler_name"), config.get("lr_scheduler_type")
    meant = PADDLEMIX_SCHEDULERS.get(name) if isinstance(name, str) else None
    if meant is not None and isinstance(kind, str) and kind != meant:
        issues.add(
            Issue(
                "$.lr_scheduler_name",
                f"{name!r} is lr_scheduler_type {meant!r}, but lr_scheduler_type is {kind!r}; "
                "keep one of the two",
            )
        )
    rate = config.get("learning_rate")
    for key, what in (("eta_min", "ends at"), ("warmup_start_lr", "starts warmup from")):
        value = config.get(key)
        if not _number(value) or value == 0:
            continue
        if kind != "cosine":
            issues.add(
                Issue(
                    f"$.{key}",
                    f"is the rate the cosine schedule {what}, but the schedule is "
                    f"{short(kind) if kind is not None else 'linear (the default)'}: set "
                    "lr_scheduler_type to 'cosine' (PaddleMIX: lr_scheduler_name "
                    f"'CosineDecayWithWarmup') or remove {key}",
                )
            )
        elif _number(rate) and value > rate:
            issues.add(
                Issue(f"$.{key}", f"{value} is above learning_rate {rate}; it must not exceed it")
            )


def _check_lengths(config: dict[str, Any], issues: set[Issue], max_length_given: bool) -> None:
    """PaddleMIX's ``src_length`` (the longest prompt) leaves room for an answer in
    ``max_length`` (the whole sample)."""
    source, whole = config.get("src_length"), config.get("max_length")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (source, whole)):
        return  # absent, or the schema reported it
    if source >= whole:
        given = "" if max_length_given else " (the default)"
        issues.add(
            Issue(
                "$.src_length",
                f"{source} is not below max_length {whole}{given}: a prompt that long leaves no "
                f"token for the answer; allowed: 1 to {whole - 1}, or remove src_length",
            )
        )


def _folder(base_dir: Path, name: str) -> Path | None:
    """The folder ``name`` names relative to ``base_dir``, or None when it names none."""
    try:
        candidate = (base_dir / name).expanduser().resolve()
        return candidate if candidate.is_dir() else None
    except (OSError, RuntimeError):
        return None


def _recorded_text_model(data: Any) -> str | None:
    """The language model a checkpoint's ``config.json`` (``data``) names: ``text_config`` as a
    name (PaddleMIX) or its ``_name_or_path`` (Hugging Face, PaddleNLP); None when it names none."""
    text = data.get("text_config") if isinstance(data, dict) else None
    if isinstance(text, dict):
        text = text.get("_name_or_path")
    return text if isinstance(text, str) and text.strip() else None


def _same_model(recorded: str, given: str) -> bool:
    """Whether a recorded language-model name is ``given``: equal, or a path ending in it (a
    checkpoint converted from a downloaded copy records where that copy was)."""
    recorded, given = recorded.strip().rstrip("/"), given.strip().rstrip("/")
    return recorded == given or recorded.endswith("/" + given)


def _check_text_model(config: dict[str, Any], base_dir: Path, issues: set[Issue]) -> None:
    """PaddleMIX's ``text_model_name_or_path`` (where its tokenizer comes from) must agree with
    the checkpoint, whose own tokenizer mixcore uses."""
    name, source = config.get("text_model_name_or_path"), config.get("model_name_or_path")
    if not (isinstance(name, str) and name and isinstance(source, str) and source):
        return
    model_folder = _folder(base_dir, source)
    named_folder = _folder(base_dir, name)
    if name == source or (named_folder is not None and named_folder == model_folder):
        return
    where = "$.text_model_name_or_path"
    checkpoint = str(model_folder) if model_folder is not None else repr(source)
    if named_folder is not None:
        issues.add(
            Issue(
                where,
                f"names the folder {named_folder}, but mixcore loads the tokenizer saved with "
                f"the checkpoint ({checkpoint}): copy the tokenizer files into the checkpoint "
                "folder and remove text_model_name_or_path",
            )
        )
        return
    if model_folder is None:
        return  # a registered alias: its checkpoint fixes its language model and tokenizer
    try:
        data = read_json(
            model_folder / "config.json", "checkpoint config", limit=CHECKPOINT_CONFIG_BYTES
        )
    except MixcoreError:
        return  # resolving the model from the folder reported it
    recorded = _recorded_text_model(data)
    if recorded is None:
        issues.add(
            Issue(
                where,
                f"{model_folder / 'config.json'} names no language model (no text_config name), "
                f"so mixcore cannot confirm it is {name!r}; mixcore uses the tokenizer saved in "
                "that folder: remove text_model_name_or_path",
            )
        )
    elif not _same_model(recorded, name):
        issues.add(
            Issue(
                where,
                f"the checkpoint in {model_folder} is built on {recorded!r} (its config.json "
                f"text_config), not {name!r}; mixcore uses the checkpoint's own tokenizer: set "
                f"text_model_name_or_path to {recorded!r} or remove it",
            )
        )


def _dataset_entries(config: dict[str, Any]) -> list[tuple[str, list[tuple[int, dict[str, Any]]]]]:
    dataset = config.get("dataset")
    if not isinstance(dataset, dict):
        return []
    out = []
    for split in ("train", "eval"):
        entries = dataset.get(split)
        if isinstance(entries, list):
            out.append((split, [(i, e) for i, e in enumerate(entries) if isinstance(e, dict)]))
    return out


def _path_format(schema: Any, value: str) -> str | None:
    """What ``value`` names under ``schema``: ``"path"`` (a file) or ``"directory"`` (a folder)
    when a schema (or branch) with that ``format`` holds whose ``pattern``, if any, it matches;
    else None. A chat_template string holding Jinja is not a path."""
    if not isinstance(schema, dict):
        return None
    pattern = schema.get("pattern")
    if isinstance(pattern, str) and not re.search(pattern, value):
        return None
    if schema.get("format") in PATH_FORMATS:
        return schema["format"]
    branches = [*schema.get("anyOf", []), *schema.get("oneOf", []), schema.get("items")]
    return next(
        (kind for b in branches if (kind := _path_format(b, value)) is not None),
        None,
    )


def _check_data_files(
    config: dict[str, Any], registry: Registry, base_dir: Path, issues: set[Issue]
) -> None:
    """Files named by dataset options whose schema says ``"format": "path"`` must be regular
    files no larger than the data-file cap (a pipe or a device would hang or never end when
    read); those marked ``"format": "directory"`` must be folders. Only ``os.stat`` is used."""
    limit = max_data_file_bytes()
    for split, entries in _dataset_entries(config):
        for i, entry in entries:
            name = entry.get("name")
            kind = registry.datasets.get(name) if isinstance(name, str) else None
            if kind is not None:
                _check_entry_paths(entry, kind, base_dir, ("dataset", split, i), limit, issues)


def _check_entry_paths(
    entry: dict[str, Any],
    kind: DatasetEntry,
    base_dir: Path,
    prefix: tuple[Any, ...],
    limit: int,
    issues: set[Issue],
) -> None:
    for key, schema in kind.options_schema.get("properties", {}).items():
        value = entry.get(key)
        if value is None:
            continue
        files = value if isinstance(value, list) else [value]
        for j, name in enumerate(files):
            if not isinstance(name, str) or not name:
                continue
            form = _path_format(schema, name)
            if form is None:
                continue
            path = (*prefix, key) + ((j,) if isinstance(value, list) else ())
            problem = _path_problem(base_dir, name, form, limit)
            if problem is not None:
                issues.add(Issue(json_path(path), problem))


def entry_files(entry: dict[str, Any], kind: DatasetEntry, base_dir: Path) -> list[Path]:
    """The files a dataset entry names through options its kind's schema marks
    ``"format": "path"`` (not folders), resolved against ``base_dir``, in option order."""
    found = []
    for key, schema in kind.options_schema.get("properties", {}).items():
        value = entry.get(key)
        for name in value if isinstance(value, list) else [value]:
            if isinstance(name, str) and name and _path_format(schema, name) == "path":
                found.append((base_dir / name).expanduser())
    return found


def dataset_entry_issues(registry: Registry, entry: dict[str, Any], base_dir: Path) -> list[Issue]:
    """What is wrong with one dataset entry given on its own (``mixcore infer --data``), at
    ``$.<key>``: the checks a ``dataset.train[i]`` entry of a config gets, against its kind's
    option schema with the core entry fields, and its files relative to ``base_dir``."""
    name = entry.get("name")
    kind = registry.datasets.get(name) if isinstance(name, str) else None
    if kind is None:
        names = {"type": "object", "properties": {"name": {"enum": sorted(registry.datasets)}}}
        return (
            validate({"name": name}, names)
            if isinstance(name, str)
            else [Issue("$.name", f"expected string, got {short(name)}")]
        )
    issues = set(validate(entry, dataset_entry_schema(kind.options_schema)))
    _check_entry_paths(entry, kind, base_dir, (), max_data_file_bytes(), issues)
    return sorted(issues)


def _path_problem(base_dir: Path, name: str, form: str, limit: int) -> str | None:
    try:
        target = (base_dir / name).expanduser()
    except RuntimeError as exc:  # an unknown ~user
        return f"cannot check {short(name)}: {exc}"
    if form == "directory":
        try:
            if target.is_dir():
                return None
            if target.exists():
                return f"not a folder: {target}"
            return f"folder not found: {target}" + _beside_cwd(base_dir, name)
        except OSError as exc:  # too long a name
            return f"cannot check {short(name)}: {exc.strerror or exc}"
    if form == "glob":
        import glob

        if any(Path(found).is_file() for found in glob.iglob(str(target), recursive=True)):
            return None
        return f"no file matches {target}" + _beside_cwd(base_dir, name)
    if target.name.lower().endswith(STREAMED_SUFFIXES):
        limit = None
    problem = file_problem(target, limit=limit)
    if problem is None:
        return None
    if problem.startswith("not found"):
        return (
            f"file not found: {target}"
            + problem.removeprefix("not found")
            + _beside_cwd(base_dir, name)
        )
    if problem.startswith("cannot be checked"):
        return f"cannot check {short(name)}: " + problem.removeprefix("cannot be checked: ")
    return f"{target} {problem}"


def _beside_cwd(base_dir: Path, name: str) -> str:
    """What a missing relative ``name`` is in the working folder, where PaddleMIX resolves data
    paths (mixcore resolves them against the config file's folder, ``base_dir``)."""
    try:
        if Path(name).expanduser().is_absolute():
            return ""
        cwd = Path.cwd()
        if cwd.resolve() == base_dir.resolve():
            return ""
        there = cwd / name
        found = there.exists()
    except (OSError, RuntimeError):
        return ""
    if found:
        return (
            f" (paths are relative to the config file's folder; it is in the working folder, "
            f"where PaddleMIX looks: give {there} or a path relative to {base_dir})"
        )
    return (
        " (paths are relative to the config file's folder; it is not in the working folder "
        f"{cwd}, where PaddleMIX looks, either)"
    )
