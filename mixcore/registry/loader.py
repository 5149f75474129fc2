"""Build a :class:`~mixcore.registry.registry.Registry` from installed and in-memory plugins.

Each plugin is admitted on its own, in stages (load, manifest, hook names and signatures,
contributions, capability claims), and any failure marks only that plugin broken with the reason;
the others keep working. Nothing here runs at import time: every command builds its own registry.
"""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import pluggy

from mixcore import __version__
from mixcore.config.schema import DATASET_ENTRY_PROPERTIES
from mixcore.hooks import markers, specs
from mixcore.registry import defaults
from mixcore.registry.discovery import EntryPointInfo, iter_entry_points
from mixcore.registry.entries import (
    BROKEN,
    CAPABILITY_HOOKS,
    DatasetEntry,
    ModelEntry,
    PluginRecord,
)
from mixcore.registry.registry import Registry
from mixcore.schemas import Issue, VerdictCache, check_schema, validate
from mixcore.util import nearest

ENV_PLUGINS = "MIXCORE_PLUGINS"
DEFAULTS_NAME = "mixcore.defaults"
#: Fields the core owns in every ``dataset.train[i]`` entry; a dataset's options may not redefine them.
CORE_DATASET_FIELDS = tuple(DATASET_ENTRY_PROPERTIES)

_SCHEMA_DIR = Path(__file__).parent


@cache
def _schema(kind: str) -> dict[str, Any]:
    return json.loads((_SCHEMA_DIR / f"{kind}.schema.json").read_text(encoding="utf-8"))


@cache
def hook_names() -> frozenset[str]:
    """Names of every hook mixcore specifies."""
    return frozenset(n for n in dir(specs) if hasattr(getattr(specs, n), "mixcore_spec"))


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


def requested_plugins(environ: Mapping[str, str] | None = None) -> set[str] | None:
    """Plugin names ``MIXCORE_PLUGINS`` restricts loading to; None when unset (load all)."""
    value = (os.environ if environ is None else environ).get(ENV_PLUGINS)
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


class _Builder:
    def __init__(self, cache: VerdictCache) -> None:
        self.pm = pluggy.PluginManager(markers.PROJECT)
        self.pm.add_hookspecs(specs)
        self.cache = cache
        self.records: dict[str, PluginRecord] = {}
        self.models: dict[str, ModelEntry] = {}
        self.datasets: dict[str, DatasetEntry] = {}
        # Every name a config's model_name_or_path may use, and the model it means.
        self.model_names: dict[str, str] = {}

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
        plugin = None
        try:
            try:
                plugin = load()
            except (Exception, SystemExit) as exc:
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
            except Exception as exc:
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
        names: dict[str, str] = {}
        for model in models:
            for alias in (model.name, *model.aliases):
                owner = self.model_names.get(alias) or names.get(alias)
                if owner is not None:
                    raise _Rejected(self._duplicate("model name", alias, owner, self.models))
                names[alias] = model.name
        for dataset in datasets:
            if dataset.name in self.datasets:
                raise _Rejected(
                    self._duplicate("dataset", dataset.name, dataset.name, self.datasets)
                )
        self.model_names.update(names)
        for model in models:
            self.models[model.name] = model
        for dataset in datasets:
            self.datasets[dataset.name] = dataset
        record.models = sorted(m.name for m in models)
        record.datasets = sorted(d.name for d in datasets)

    def _duplicate(self, kind: str, name: str, owner_entry: str, entries: Mapping[str, Any]) -> str:
        entry = entries.get(owner_entry)
        plugin = self.records.get(entry.plugin) if entry is not None else None
        if plugin is None:
            return f"{kind} {name!r} is registered twice by this plugin"
        origin = f"{plugin.distribution} {plugin.version}" if plugin.distribution else "in memory"
        return f"{kind} {name!r} is already registered by plugin {plugin.name!r} ({origin})"


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
    for ep in sorted(found, key=lambda e: e.name):
        if wanted is not None and ep.name not in wanted:
            continue
        builder.admit(
            ep.name,
            ep.value,
            lambda ep=ep: _load_entry_point(ep),
            distribution=ep.distribution,
            version=ep.version,
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

    builder.cache.save()
    return Registry(
        builder.pm,
        plugins=dict(sorted(builder.records.items())),
        models=dict(sorted(builder.models.items())),
        datasets=dict(sorted(builder.datasets.items())),
        model_names=builder.model_names,
    )


def _load_entry_point(ep: EntryPointInfo) -> Any:
    import importlib

    obj = importlib.import_module(ep.module)
    if ep.attr:
        for part in ep.attr.split("."):
            obj = getattr(obj, part)
    return obj
