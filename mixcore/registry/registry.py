"""The registry one command works with: plugins, models, datasets, and the hooks to call."""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import pluggy

from mixcore.api import hookspecs
from mixcore.api.errors import PluginError, UnknownNameError
from mixcore.registry.entries import DatasetEntry, ModelEntry, PluginRecord
from mixcore.registry.hookcalls import HookCall


class Registry:
    """Lookup by name over what the healthy plugins registered, plus their hook relay.

    Built by :func:`mixcore.registry.build_registry`; never filled at import time.
    """

    def __init__(
        self,
        pm: pluggy.PluginManager,
        *,
        plugins: Mapping[str, PluginRecord],
        models: Mapping[str, ModelEntry],
        datasets: Mapping[str, DatasetEntry],
        model_names: Mapping[str, str],
        rivals: Mapping[tuple[str, str], frozenset[str]] | None = None,
    ) -> None:
        self.pm = pm
        self.plugins = dict(plugins)
        self.models = dict(models)
        self.datasets = dict(datasets)
        self._model_names = dict(model_names)
        self._rivals = dict(rivals or {})
        self._hook = _RoutedRelay(self)

    @property
    def hook(self) -> Any:
        """The hook relay: ``registry.hook.load_model(model_name=..., ...)``.

        Like pluggy's ``pm.hook``, except that a dispatch hook called for a registered name
        reaches only the plugin that owns the name (see :meth:`hook_caller`).
        """
        return self._hook

    def _entry(self, space: str, name: str) -> ModelEntry | DatasetEntry | None:
        if space == "model":
            return self.models.get(self._model_names.get(name, name))
        return self.datasets.get(name)

    def hook_caller(self, hook: str, space: str, name: str) -> Any:
        """The pluggy hook caller that dispatch hook ``hook`` uses for ``name``.

        ``space`` is "model" or "dataset". Firstresult dispatch relies on every plugin
        returning None for names it does not own; one that answers anyway (or whose claim on
        the name was refused for a collision but still implements the hook) would win just by
        being called first. So for a name some plugin registered, the call goes to that plugin,
        the core's defaults, and the wrappers of other plugins (observing or adjusting a
        result is what wrappers are for). Plain implementations of every other plugin are left
        out, and so is everything of a plugin whose claim on this very name was refused. A name
        nobody registered is dispatched to every plugin, as pluggy does.
        """
        caller = getattr(self.pm.hook, hook)
        entry = self._entry(space, name)
        if entry is None:
            return caller
        keep = {entry.plugin} | {p.name for p in self.plugins.values() if p.builtin}
        rivals = self._rivals.get((space, entry.name), frozenset())
        left_out = [
            impl.plugin
            for impl in caller.get_hookimpls()
            if impl.plugin_name not in keep
            and (impl.plugin_name in rivals or not (impl.wrapper or impl.hookwrapper))
        ]
        return self.pm.subset_hook_caller(hook, remove_plugins=left_out) if left_out else caller

    @property
    def broken(self) -> list[PluginRecord]:
        return [p for p in self.plugins.values() if not p.ok]

    def plugin(self, name: str) -> PluginRecord:
        if name not in self.plugins:
            raise UnknownNameError("plugin", name, list(self.plugins))
        return self.plugins[name]

    def model(self, name: str) -> ModelEntry:
        """The model registered under ``name`` or one of its aliases."""
        key = self._model_names.get(name)
        if key is None:
            raise UnknownNameError("model", name, list(self._model_names))
        return self.models[key]

    def dataset(self, name: str) -> DatasetEntry:
        if name not in self.datasets:
            raise UnknownNameError("dataset", name, list(self.datasets))
        return self.datasets[name]

    def resolve_model(self, source: str, explicit: str | None = None) -> ModelEntry:
        """Which registered model loads ``source`` (a config's ``model_name_or_path``).

        In order: the config's explicit ``model`` name; a registered name or alias (a preset
        such as ``qwen_vl/tiny`` or PaddleMIX's ``qwen-vl/qwen-vl-chat-7b``); the ``model_type``
        in the ``config.json`` of a local checkpoint folder, after the record of the model
        that wrote it (:func:`mixcore.kit.checkpoints.write_config`) when that model is
        installed.
        """
        if explicit:
            return self.model(explicit)
        if source in self._model_names:
            return self.models[self._model_names[source]]
        try:
            folder = Path(source).expanduser()
            is_folder = folder.is_dir()
        except (OSError, RuntimeError):  # a name too long for the file system, an unknown ~user
            is_folder = False
        if is_folder:
            written_by, model_type = _checkpoint_model(folder)
            if written_by in self.models:
                return self.models[written_by]
            for entry in self.models.values():
                if model_type in entry.model_types:
                    return entry
            known = sorted({t for e in self.models.values() for t in e.model_types})
            raise PluginError(
                f"no installed plugin loads checkpoint {source!r} (model_type {model_type!r}); "
                f"model types known: {', '.join(known) or 'none'}. Install the plugin for it or "
                "name the model with the config's `model` field"
            )
        raise UnknownNameError("model or local checkpoint folder", source, list(self._model_names))

    def to_json(self, *, include_builtin: bool = False) -> dict[str, Any]:
        return {
            "plugins": [
                p.to_json() for p in self.plugins.values() if include_builtin or not p.builtin
            ],
            "models": [m.to_json() for m in self.models.values()],
            "datasets": [d.to_json() for d in self.datasets.values()],
        }


@cache
def _dispatch_space(hook: str) -> str | None:
    """Which names a hook dispatches on: "model", "dataset", or None (a contribution hook)."""
    spec = getattr(hookspecs, hook, None)
    if spec is None:
        return None
    parameters = inspect.signature(spec).parameters
    if "model_name" in parameters:
        return "model"
    if "dataset_name" in parameters:
        return "dataset"
    return None


class _RoutedHook:
    """One dispatch hook of a registry: called with keywords, routed by the name it is given."""

    def __init__(self, registry: Registry, hook: str, space: str) -> None:
        self._registry, self._hook, self._space = registry, hook, space
        self._callers: dict[str, Any] = {}

    def __getattr__(self, attribute: str) -> Any:
        # pluggy's own API (name, get_hookimpls, ...), over every implementation
        if attribute.startswith("_"):
            raise AttributeError(attribute)
        return getattr(getattr(self._registry.pm.hook, self._hook), attribute)

    def __call__(self, **kwargs: Any) -> Any:
        name = kwargs.get(f"{self._space}_name")
        if not isinstance(name, str):
            return HookCall(getattr(self._registry.pm.hook, self._hook))(**kwargs)
        # The registry does not change once built, so each name's caller is worked out once.
        caller = self._callers.get(name)
        if caller is None:
            routed = self._registry.hook_caller(self._hook, self._space, name)
            caller = self._callers[name] = HookCall(routed)
        return caller(**kwargs)


class _RoutedRelay:
    """``registry.hook``: pluggy's relay with dispatch hooks routed to the owning plugin."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._hooks: dict[str, Any] = {}

    def __getattr__(self, hook: str) -> Any:
        if hook.startswith("_"):
            raise AttributeError(hook)
        found = self._hooks.get(hook)
        if found is None:
            caller = getattr(self._registry.pm.hook, hook)  # AttributeError for unknown hooks
            space = _dispatch_space(hook)
            found = HookCall(caller) if space is None else _RoutedHook(self._registry, hook, space)
            self._hooks[hook] = found
        return found


def _checkpoint_model(folder: Path) -> tuple[str | None, str | None]:
    """The model recorded as the folder's writer (if any) and its ``model_type``."""
    from mixcore.kit.checkpoints import read_model_record  # imports NumPy: only for folders

    config = folder / "config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PluginError(f"checkpoint folder {str(folder)!r} has no config.json") from None
    except (OSError, ValueError) as exc:
        raise PluginError(f"cannot read {config}: {exc}") from None
    if not isinstance(data, dict):
        raise PluginError(f"{config} does not hold a JSON object")
    record = read_model_record(data) or {}
    written_by = record.get("model") if isinstance(record.get("model"), str) else None
    model_type = data.get("model_type")
    return written_by, model_type if isinstance(model_type, str) else None
