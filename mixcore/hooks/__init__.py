"""mixcore's hook specifications and the ``hookimpl`` marker plugins use."""

from mixcore.hooks.markers import PROJECT, hookimpl, hookspec

__all__ = ["PROJECT", "hookimpl", "hookspec"]
