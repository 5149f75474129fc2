"""Build a :class:`~mixcore.registry.registry.Registry` from installed and in-memory plugins.

Each plugin is admitted on its own, in stages (load, manifest, hook names and signatures,
contributions, capability claims), and any failure marks only that plugin broken with the reason;
the others keep working. A name another plugin already holds is not a failure of either plugin:
only the contribution claiming it is refused, with a note naming both. First-party plugins are
admitted first, so they always keep their names. Nothing here runs at import time: every command
builds its own registry.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any, TextIO

import pluggy

from mixcore import __version__
from mixcore.api import hookspecs, markers
from mixcore.api.constants import DATASET_ENTRY_SCHEMA
from mixcore.issues import Issue, check_schema, validate
from mixcore.kit.names import nearest
from mixcore.registry import defaults
from mixcore.registry.discovery import EntryPointInfo, iter_entry_points
from mixcore.registry.entries import (
    BROKEN,
    CAPABILITY_HOOKS,
    SLOW_PLUGIN_SECONDS,
    DatasetEntry,
    ModelEntry,
    PluginRecord,
    is_first_party,
)
from mixcore.registry.registry import Registry
from mixcore.registry.verdict_cache import VerdictCache

ENV_PLUGINS = "MIXCORE_PLUGINS"
DEFAULTS_NAME = "mixcore.defaults"
#: Fields the core owns in every ``dataset.train[i]`` entry; a dataset's options may not redefine them.
CORE_DATASET_FIELDS = tuple(DATASET_ENTRY_SCHEMA)

_SCHEMA_DIR = Path(__file__).parent


@cache
def _schema(kind: str) -> dict[str, Any]:
    return json.loads((_SCHEMA_DIR / f"{kind}.schema.json").read_text(encoding="utf-8"))


@cache
def hook_names() -> frozenset[str]:
    """Names of every hook mixcore specifies."""
    return frozenset(n for n in dir(hookspecs) if hasattr(getattr(hookspecs, n), "mixcore_spec"))


class _Rejected(Exception):
    """Internal: the plugin being admitted is broken for the given reason."""

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def _describe_exception(exc: BaseException) -> tuple[str, str]:
    """A one-line reason naming the innermost frame, and the full traceback text."""
    # The innermost frame outside the import machinery is where the plugin's own code failed.
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<")]
    where = f" ({Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    text = str(exc).strip().splitlines()
    reason = f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ") + where
    return reason, "".join(traceback.format_exception(exc))


def _isolate(exc: BaseException) -> None:
    """Re-raise what must stop the command; anything else a plugin raises only breaks it.

    ``SystemExit`` or a custom ``BaseException`` subclass raised by a plugin's code is that
    plugin's failure, like any exception. ``KeyboardInterrupt`` is the user pressing Ctrl-C
    while plugins load (a slow import is exactly when one does): it must stop the command, not
    turn into a "broken plugin" while the command carries on.
    """
    if isinstance(exc, KeyboardInterrupt):
        raise exc


class _DivertedStdout(io.TextIOBase):
    """Stands in for ``sys.stdout`` while one plugin loads.

    Text goes to stderr instead, so a plugin that prints at import or in a register hook cannot
    corrupt a command's result on stdout (``plugins list --json``, ``validate --json``). The
    first part is kept so the plugin can be named as the one that printed. A reference to this
    object kept by the plugin (``logging.StreamHandler(sys.stdout)`` at import) keeps working:
    it writes to stderr from then on.
    """

    _KEEP = 4000

    def __init__(self, target: TextIO) -> None:
        super().__init__()
        self._target = target
        self.kept = ""
        self.recording = True

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._target.write(text)
        if self.recording and len(self.kept) < self._KEEP:
            self.kept = (self.kept + text)[: self._KEEP]
        return len(text)

    def flush(self) -> None:
        self._target.flush()

    def isatty(self) -> bool:
        return self._target.isatty()

    def fileno(self) -> int:
        return self._target.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._target, "encoding", None) or "utf-8"


@dataclass(frozen=True)
class _Conflict:
    """A contribution refused because ``holder`` already holds ``name``."""

    kind: str  # "model", "model alias", "model_type" or "dataset"
    name: str
    holder: str  # the plugin that keeps the name
    meaning: str  # what the name selects there: the holder's model or dataset name
    alternative: str | None = None  # this plugin's own name for the same thing, when it has one


def requested_plugins(environ: Mapping[str, str] | None = None) -> set[str] | None:
    """Plugin names ``MIXCORE_PLUGINS`` restricts loading to; None when unset (load all)."""
    value = (os.environ if environ is None else environ).get(ENV_PLUGINS)
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


class _Builder:
    def __init__(self, cache: VerdictCache) -> None:
        self.pm = pluggy.PluginManager(markers.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.cache = cache
        self.records: dict[str, PluginRecord] = {}
        self.models: dict[str, ModelEntry] = {}
        self.datasets: dict[str, DatasetEntry] = {}
        # Every name a config's model_name_or_path may use, and the model it means.
        self.model_names: dict[str, str] = {}
        # Every checkpoint model_type some model loads, and that model.
        self.model_types: dict[str, str] = {}
        # Refused claims, per plugin, rendered once every plugin is known.
        self.conflicts: dict[str, list[_Conflict]] = {}
        # ("model" | "dataset", name) -> plugins whose claim on it was refused: they are never
        # called for it, not even their wrappers (see Registry.hook).
        self.rivals: dict[tuple[str, str], set[str]] = {}

    # -- validation with the verdict cache ---------------------------------------------------------

    def _check(self, kind: str, document: Any, root: str) -> list[Issue]:
        schema = _schema(kind)
        key = VerdictCache.key(kind, schema, document)
        if key is None:
            return [Issue(root, "must contain only JSON values (str, number, bool, list, dict)")]
        if key in self.cache:
            return []
        issues = validate(document, schema, root=root)
        options = document.get("options_schema") if isinstance(document, dict) else None
        if not issues and options is not None:
            issues = check_schema(options, root=f"{root}.options_schema")
        if not issues:
            self.cache.add(key)
        return issues

    # -- admission ---------------------------------------------------------------------------------

    def admit(self, name: str, module: str, load: Callable[[], Any], **meta: Any) -> None:
        record = PluginRecord(name=name, module=module, **meta)
        if name in self.records:
            other = self.records[name]
            record.status, record.reason = (
                BROKEN,
                (
                    f"plugin name {name!r} is also used by {other.module} "
                    f"({other.distribution or 'in memory'}); rename one entry point"
                ),
            )
            self.records[f"{name} ({module})"] = record
            return
        self.records[name] = record
        stdout = _DivertedStdout(sys.stderr)
        started = time.perf_counter()
        try:
            with contextlib.redirect_stdout(stdout):
                self._admit(record, load)
        finally:
            stdout.recording = False
            record.load_seconds = round(time.perf_counter() - started, 3)
        if stdout.kept:
            record.stdout = stdout.kept
            lines = stdout.kept.strip().splitlines() or [""]
            first = lines[0] if len(lines[0]) <= 80 else lines[0][:77] + "..."
            record.notes.append(
                f"printed {len(lines)} line(s) to stdout while loading, sent to stderr to keep "
                f"mixcore's output clean (first: {first!r}); plugins should log instead"
            )
        if record.load_seconds > SLOW_PLUGIN_SECONDS:
            record.notes.append(
                f"slow to load: {record.load_seconds:.1f} s to import and register (over "
                f"{SLOW_PLUGIN_SECONDS:g} s), paid by every mixcore command; heavy imports "
                "belong inside hook bodies"
            )

    def _admit(self, record: PluginRecord, load: Callable[[], Any]) -> None:
        name, plugin = record.name, None
        try:
            try:
                plugin = load()
            except BaseException as exc:
                _isolate(exc)
                raise _Rejected(*_describe_exception(exc)) from exc
            record.description = self._manifest(plugin)
            self._check_hook_names(plugin)
            try:
                self.pm.register(plugin, name=name)
            except pluggy.PluginValidationError as exc:
                raise _Rejected(f"invalid hook: {exc}") from exc
            except ValueError as exc:
                raise _Rejected(str(exc)) from exc
            record.hooks = sorted(c.name for c in self.pm.get_hookcallers(plugin) or [])
            models, datasets = self._contributions(plugin, name)
            self._check_capabilities(models, set(record.hooks))
            self._commit(record, models, datasets)
        except _Rejected as rejected:
            record.status, record.reason, record.detail = BROKEN, rejected.reason, rejected.detail
            if plugin is not None and self.pm.is_registered(plugin):
                self.pm.unregister(plugin)

    def _manifest(self, plugin: Any) -> str:
        manifest = getattr(plugin, "manifest", None)
        if manifest is None:
            raise _Rejected("defines no `manifest` dict (api_version, description)")
        issues = self._check("manifest", manifest, "manifest")
        if issues:
            raise _Rejected("invalid manifest: " + "; ".join(map(str, issues)))
        return manifest["description"]

    def _check_hook_names(self, plugin: Any) -> None:
        known = hook_names()
        for attr in dir(plugin):
            if attr.startswith("__") or self.pm.parse_hookimpl_opts(plugin, attr) is None:
                continue
            if attr not in known:
                hint = nearest(attr, known)
                raise _Rejected(
                    f"implements unknown hook {attr!r}"
                    + (f" (did you mean {hint!r}?)" if hint else "")
                )

    def _contributions(self, plugin: Any, name: str) -> tuple[list[ModelEntry], list[DatasetEntry]]:
        others = [p for p in self.pm.get_plugins() if p is not plugin]
        models: list[ModelEntry] = []
        datasets: list[DatasetEntry] = []

        def collect(kind: str, into: list[Any]) -> Callable[..., None]:
            def register(**fields: Any) -> None:
                root = f"{kind}[{fields.get('name', len(into))!s}]"
                issues = self._check(kind, fields, root)
                if issues:
                    raise _Rejected(f"invalid {kind} entry: " + "; ".join(map(str, issues)))
                into.append(fields)

            return register

        for hook, kind, into in (
            ("register_models", "model", models),
            ("register_datasets", "dataset", datasets),
        ):
            caller = self.pm.subset_hook_caller(hook, remove_plugins=others)
            try:
                caller(register=collect(kind, into))
            except _Rejected:
                raise
            except BaseException as exc:
                _isolate(exc)
                reason, detail = _describe_exception(exc)
                raise _Rejected(f"{hook} failed: {reason}", detail) from exc

        model_entries = [
            ModelEntry(
                name=f["name"],
                description=f["description"],
                plugin=name,
                options_schema=f.get("options_schema", {"type": "object"}),
                capabilities=dict(f.get("capabilities", {})),
                aliases=tuple(f.get("aliases", ())),
                model_types=tuple(f.get("model_types", ())),
            )
            for f in models
        ]
        dataset_entries = [
            DatasetEntry(
                name=f["name"],
                description=f["description"],
                plugin=name,
                options_schema=f.get("options_schema", {"type": "object"}),
            )
            for f in datasets
        ]
        for entry in dataset_entries:
            clash = set(entry.options_schema.get("properties", {})) & set(CORE_DATASET_FIELDS)
            if clash:
                raise _Rejected(
                    f"dataset {entry.name!r} redefines core entry field(s) {sorted(clash)}; "
                    "the core owns them"
                )
        return model_entries, dataset_entries

    def _check_capabilities(self, models: list[ModelEntry], hooks: set[str]) -> None:
        for model in models:
            for capability, claimed in model.capabilities.items():
                # The core's default collator backs every model, except for packing: it knows
                # nothing of segment_ids, so a packing model must collate its own packs.
                available = hooks if capability == "packing" else hooks | {"collate_batch"}
                missing = [h for h in CAPABILITY_HOOKS[capability] if h not in available]
                if claimed and missing:
                    raise _Rejected(
                        f"model {model.name!r} claims {capability!r} but the plugin implements "
                        f"no {', '.join(missing)} hook"
                    )

    def _commit(
        self, record: PluginRecord, models: list[ModelEntry], datasets: list[DatasetEntry]
    ) -> None:
        """Take the names this plugin registered, except those another plugin already holds.

        A name registered twice by the plugin itself is the plugin's bug: it is broken, nothing
        committed. A name another plugin holds is nobody's bug (two packages chose the same
        name): only that contribution is refused, the rest of the plugin works. The earlier
        plugin keeps the name, and first-party plugins are admitted first (``build_registry``).
        A model whose own name is taken is refused whole: dispatch hooks receive that name, so
        two models cannot share it. A taken alias or model_type is dropped from the model.
        """
        own_names: dict[str, str] = {}
        own_types: dict[str, str] = {}
        for model in models:
            for alias in (model.name, *model.aliases):
                if alias in own_names:
                    raise _Rejected(f"model name {alias!r} is registered twice by this plugin")
                own_names[alias] = model.name
            for model_type in model.model_types:
                if model_type in own_types:
                    raise _Rejected(
                        f"model_type {model_type!r} is claimed by two of this plugin's models "
                        f"({own_types[model_type]!r} and {model.name!r})"
                    )
                own_types[model_type] = model.name
        own_datasets: set[str] = set()
        for dataset in datasets:
            if dataset.name in own_datasets:
                raise _Rejected(f"dataset {dataset.name!r} is registered twice by this plugin")
            own_datasets.add(dataset.name)

        kept_models: list[ModelEntry] = []
        for model in models:
            holder = self.model_names.get(model.name)
            if holder is not None:
                self._refuse(record.name, "model", model.name, self.models[holder])
                continue
            aliases = []
            for alias in model.aliases:
                holder = self.model_names.get(alias)
                if holder is None:
                    aliases.append(alias)
                else:
                    self._refuse(record.name, "model alias", alias, self.models[holder], model.name)
            model_types = []
            for model_type in model.model_types:
                holder = self.model_types.get(model_type)
                if holder is None:
                    model_types.append(model_type)
                else:
                    self._refuse(
                        record.name, "model_type", model_type, self.models[holder], model.name
                    )
            kept_models.append(
                replace(model, aliases=tuple(aliases), model_types=tuple(model_types))
            )
        kept_datasets: list[DatasetEntry] = []
        for dataset in datasets:
            if dataset.name in self.datasets:
                self._refuse(record.name, "dataset", dataset.name, self.datasets[dataset.name])
            else:
                kept_datasets.append(dataset)

        for model in kept_models:
            self.models[model.name] = model
            for alias in (model.name, *model.aliases):
                self.model_names[alias] = model.name
            for model_type in model.model_types:
                self.model_types[model_type] = model.name
        for dataset in kept_datasets:
            self.datasets[dataset.name] = dataset
        record.models = sorted(m.name for m in kept_models)
        record.datasets = sorted(d.name for d in kept_datasets)

    def _refuse(
        self,
        plugin: str,
        kind: str,
        name: str,
        held_by: ModelEntry | DatasetEntry,
        alternative: str | None = None,
    ) -> None:
        conflict = _Conflict(kind, name, held_by.plugin, held_by.name, alternative)
        self.conflicts.setdefault(plugin, []).append(conflict)
        space = "dataset" if isinstance(held_by, DatasetEntry) else "model"
        self.rivals.setdefault((space, held_by.name), set()).add(plugin)

    def render_conflicts(self) -> None:
        """Write each refused claim into its plugin's record, now that every plugin is known."""
        loaded = sorted(
            key
            for key, record in self.records.items()
            if key == record.name and not record.builtin and record.module != "?"
        )
        for plugin, conflicts in self.conflicts.items():
            record = self.records[plugin]
            for conflict in conflicts:
                record.conflicts.append(self._conflict_message(conflict, loaded))

    def _conflict_message(self, conflict: _Conflict, loaded: list[str]) -> str:
        holder = self.records[conflict.holder]
        origin = f"{holder.distribution} {holder.version}" if holder.distribution else "in memory"
        who = f"{'built-in plugin' if holder.first_party else 'plugin'} {holder.name!r} ({origin})"
        name, kind = conflict.name, conflict.kind
        if kind == "dataset":
            effect = f"dataset entries named {name!r} use {holder.name!r}'s dataset"
        elif kind == "model_type":
            effect = f"checkpoints of model_type {name!r} load as its model {conflict.meaning!r}"
        else:
            effect = f"configs naming {name!r} get its model {conflict.meaning!r}"
        others = [p for p in loaded if p != holder.name]
        leave_out = f"leave {holder.name!r} out with MIXCORE_PLUGINS={','.join(others)}"
        if conflict.alternative and kind == "model_type":
            choice = f"set the config's `model` to {conflict.alternative!r}, or {leave_out}"
        elif conflict.alternative:
            choice = f"name it {conflict.alternative!r}, or {leave_out}"
        else:
            choice = leave_out
        noun = "dataset" if kind == "dataset" else "model"
        return (
            f"{kind} {name!r} refused: {who} already has it, so {effect}. "
            f"To use this plugin's {noun} instead, {choice}"
        )


def build_registry(
    plugins: Iterable[tuple[str, Any]] = (),
    *,
    entry_points: bool | Iterable[EntryPointInfo] = True,
    environ: Mapping[str, str] | None = None,
    cache: VerdictCache | None = None,
) -> Registry:
    """Discover, validate and register plugins; return a fresh :class:`Registry`.

    :param plugins: in-memory plugins as ``(name, object)`` pairs, admitted after the installed
        ones exactly like them (tests and embedding applications use this).
    :param entry_points: True to load the installed ``mixcore.plugins`` entry points, False for
        none, or an explicit list.
    :param environ: where to read ``MIXCORE_PLUGINS`` (default: ``os.environ``). When set, only
        the named plugins load; an empty value loads none.
    """
    builder = _Builder(cache if cache is not None else VerdictCache())
    builder.pm.register(defaults, name=DEFAULTS_NAME)
    builder.records[DEFAULTS_NAME] = PluginRecord(
        name=DEFAULTS_NAME,
        module=defaults.__name__,
        distribution="mixcore",
        version=__version__,
        description=defaults.manifest["description"],
        hooks=sorted(c.name for c in builder.pm.get_hookcallers(defaults) or []),
        builtin=True,
        first_party=True,
    )
    wanted = requested_plugins(environ)

    if entry_points is True:
        found = iter_entry_points()
    elif entry_points is False:
        found = []
    else:
        found = list(entry_points)
    in_memory = list(plugins)

    available = {ep.name for ep in found} | {name for name, _ in in_memory}
    # Admission order decides who keeps a contested name: first-party plugins first, then the
    # others by entry-point name (then distribution), so the outcome never depends on sys.path.
    for ep in sorted(
        found, key=lambda e: (not is_first_party(e.distribution), e.name, e.distribution)
    ):
        if wanted is not None and ep.name not in wanted:
            continue
        builder.admit(
            ep.name,
            ep.value,
            lambda ep=ep: _load_entry_point(ep),
            distribution=ep.distribution,
            version=ep.version,
            first_party=is_first_party(ep.distribution),
        )
    for name, plugin in in_memory:
        if wanted is not None and name not in wanted:
            continue
        builder.admit(name, getattr(plugin, "__name__", type(plugin).__name__), lambda p=plugin: p)
    for name in sorted((wanted or set()) - available):
        hint = nearest(name, available)
        record = PluginRecord(name=name, module="?", status=BROKEN)
        record.reason = f"named in {ENV_PLUGINS} but not installed" + (
            f" (did you mean {hint!r}?)" if hint else ""
        )
        builder.records[name] = record

    builder.render_conflicts()
    builder.cache.save()
    return Registry(
        builder.pm,
        plugins=dict(sorted(builder.records.items())),
        models=dict(sorted(builder.models.items())),
        datasets=dict(sorted(builder.datasets.items())),
        model_names=builder.model_names,
        rivals={key: frozenset(names) for key, names in builder.rivals.items()},
    )


def _load_entry_point(ep: EntryPointInfo) -> Any:
    import importlib

    obj = importlib.import_module(ep.module)
    if ep.attr:
        for part in ep.attr.split("."):
            obj = getattr(obj, part)
    return obj
