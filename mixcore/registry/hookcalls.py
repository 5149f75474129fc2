"""Calling hooks so that a plugin's bug is reported as that plugin's, in the caller's words.

Pluggy re-raises whatever an implementation raised and does not say whose implementation it was.
:class:`HookCall` wraps each hook caller of ``registry.hook``: an exception that is not a
:class:`~mixcore.api.errors.MixcoreError` becomes a :class:`~mixcore.api.errors.PluginHookError` naming
the plugin, the hook and the exception. The plugin is found from the traceback: the innermost
frame running the code of one of the hook's implementations (a plain one or a ``wrapper=True``
one, whose frame is innermost when its own code raised) is the implementation that failed.
Errors a plugin raises on purpose (``DataError``, ``PluginError``, its own ``MixcoreError``
subclasses) pass through unchanged: their messages are written for the user already.
"""

from __future__ import annotations

import inspect
import traceback
from pathlib import Path
from types import CodeType
from typing import Any

import pluggy

from mixcore.api.errors import MixcoreError, PluginHookError

#: Longest exception text a message quotes (a repr of a large array can be megabytes).
MESSAGE_LIMIT = 500


class HookCall:
    """One hook's caller. Other attributes (``get_hookimpls``, ``name``, ...) are pluggy's."""

    def __init__(self, caller: pluggy.HookCaller) -> None:
        self._caller = caller

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._caller, name)

    def __call__(self, **kwargs: Any) -> Any:
        try:
            return self._caller(**kwargs)
        except MixcoreError:
            raise
        except Exception as exc:
            error = plugin_hook_error(self._caller.name, exc, self._caller.get_hookimpls())
            if error is None:  # raised by pluggy or the caller, not by a plugin: a core bug
                raise
            raise error from exc


def plugin_hook_error(
    hook: str, exc: BaseException, impls: list[pluggy.HookImpl]
) -> PluginHookError | None:
    """The :class:`PluginHookError` for ``exc`` raised by one of ``impls``; None if by none."""
    owners: dict[CodeType, set[str]] = {}
    for impl in impls:
        for function in {impl.function, inspect.unwrap(impl.function)}:
            code = getattr(function, "__code__", None)
            if code is not None:
                owners.setdefault(code, set()).add(impl.plugin_name)
    frames = list(traceback.walk_tb(exc.__traceback__))
    for position in range(len(frames) - 1, -1, -1):
        code = frames[position][0].f_code
        names = owners.get(code, set())
        # A code object shared by several plugins (one decorator's inner function) decides
        # nothing; the decorated function's own frame, further in, does.
        if len(names) == 1:
            (plugin,) = names
            return PluginHookError(
                hook,
                type(exc).__name__,
                _text(exc),
                plugin=plugin,
                location=_location(frames[position:], Path(code.co_filename).parent),
                detail="".join(traceback.format_exception(exc)),
            )
    return None


def _text(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 3] + "..."


def _location(frames: list[tuple[Any, int]], package: Path) -> str:
    """``file.py:line`` of the innermost of ``frames`` in the implementation's folder: the
    plugin's own line nearest the failure (not numpy's, say)."""
    for frame, line in reversed(frames):
        path = Path(frame.f_code.co_filename)
        if path.is_relative_to(package):
            return f"{path.name}:{line}"
    return ""


__all__ = ["HookCall", "plugin_hook_error"]
