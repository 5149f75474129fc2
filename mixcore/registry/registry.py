"""The registry one command works with: plugins, models, datasets, and the hooks to call."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pluggy

from mixcore.errors import PluginError, UnknownNameError
from mixcore.registry.entries import DatasetEntry, ModelEntry, PluginRecord
from mixcore.registry.hookcalls import HookRelay


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
    ) -> None:
        self.pm = pm
        self.plugins = dict(plugins)
        self.models = dict(models)
        self.datasets = dict(datasets)
        self._model_names = dict(model_names)
        self._hook = HookRelay(pm)

    @property
    def hook(self) -> HookRelay:
        """The hook relay: ``registry.hook.load_model(model_name=..., ...)``, like pluggy's, but
        an implementation's unexpected exception becomes a
        :class:`~mixcore.errors.PluginHookError` naming its plugin and the hook (see
        :mod:`mixcore.registry.hookcalls`)."""
        return self._hook

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
        in the ``config.json`` of a local checkpoint folder.
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
            model_type = _checkpoint_model_type(folder)
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


def _checkpoint_model_type(folder: Path) -> str | None:
    config = folder / "config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PluginError(f"checkpoint folder {str(folder)!r} has no config.json") from None
    except (OSError, ValueError) as exc:
        raise PluginError(f"cannot read {config}: {exc}") from None
    if not isinstance(data, dict):
        raise PluginError(f"{config} does not hold a JSON object")
    mixcore_meta = data.get("mixcore")
    if isinstance(mixcore_meta, dict) and isinstance(mixcore_meta.get("model"), str):
        return mixcore_meta["model"]
    return data.get("model_type")
