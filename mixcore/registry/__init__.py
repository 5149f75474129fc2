"""Plugin discovery, validation and lookup. See :func:`build_registry`."""

from mixcore.registry.entries import DatasetEntry, ModelEntry, PluginRecord
from mixcore.registry.loader import ENV_PLUGINS, build_registry, hook_names
from mixcore.registry.registry import Registry

__all__ = [
    "ENV_PLUGINS",
    "DatasetEntry",
    "ModelEntry",
    "PluginRecord",
    "Registry",
    "build_registry",
    "hook_names",
]
