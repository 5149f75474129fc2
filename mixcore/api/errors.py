"""Exception types the library raises. Only the CLI turns them into exit codes and text."""

from __future__ import annotations


class MixcoreError(Exception):
    """Base of every error mixcore raises for a user to act on."""

    #: Longer text for whoever debugs it (a traceback), shown by the CLI with ``--verbose`` only.
    detail: str = ""


class PluginError(MixcoreError):
    """A plugin could not be loaded, validated or called."""


class UnknownNameError(MixcoreError, LookupError):
    """A model, dataset or plugin name that is not registered.

    The message lists the valid names and the nearest match.
    """

    def __init__(self, kind: str, name: str, valid: list[str]) -> None:
        import difflib

        self.kind, self.name, self.valid = kind, name, sorted(valid)
        close = difflib.get_close_matches(name, self.valid, n=1, cutoff=0.6)
        hint = close[0] if close else None
        shown = name if len(name) <= 80 else name[:77] + "..."
        msg = f"unknown {kind} {shown!r}"
        if hint:
            msg += f" (did you mean {hint!r}?)"
        msg += "; valid: " + (
            ", ".join(self.valid) if self.valid else f"none (no {kind} is installed)"
        )
        super().__init__(msg)


class DataError(MixcoreError):
    """A data file or one of its records is unusable. The message names the file and index."""

    def __init__(self, message: str, *, source: str = "", index: int | None = None) -> None:
        self.source, self.index, self.reason = source, index, message
        where = source
        if index is not None:
            where = f"{source} record {index}" if source else f"record {index}"
        super().__init__(f"{where}: {message}" if where else message)


class ConfigError(MixcoreError):
    """A config file that cannot be used. Holds every problem found, each with its JSON path."""

    def __init__(self, source: str, issues: list) -> None:
        self.source, self.issues = source, list(issues)
        lines = [f"{source}: {len(self.issues)} problem(s)"] + [f"  {i}" for i in self.issues]
        super().__init__("\n".join(lines))


class EnvironmentProblem(MixcoreError):
    """The installed packages cannot run the command (a module is missing or fails to import)."""


class UsageError(MixcoreError):
    """What the user asked for cannot be done as asked (a folder, a checkpoint, an option).

    Like a bad config, the user's to fix: the CLI exits 2.
    """


class PluginHookError(PluginError):
    """A plugin's hook implementation raised an exception that is not a :class:`MixcoreError`.

    That is a bug in the plugin (or in a file only it reads, such as a ``preprocessor_config.json``),
    not in the user's data or config, so the CLI exits 1. The message names the plugin, the hook
    and the exception; ``detail`` holds the traceback for ``--verbose``. Raised by the registry's
    hook callers (:attr:`mixcore.registry.Registry.hook`), which find the plugin from the
    traceback; ``plugin`` is None when no implementation's frame is in it.
    """

    def __init__(
        self,
        hook: str,
        exc_type: str,
        message: str,
        *,
        plugin: str | None = None,
        location: str = "",
        detail: str = "",
    ) -> None:
        self.hook, self.exc_type, self.message = hook, exc_type, message
        self.plugin, self.location, self.detail = plugin, location, detail
        who = f"plugin {plugin!r} failed in hook {hook}" if plugin else f"hook {hook} failed"
        what = f"{exc_type}: {message}" if message else exc_type
        super().__init__(f"{who}: {what}" + (f" ({location})" if location else ""))

    def to_json(self) -> dict[str, str | None]:
        """The fields, as JSON values (to carry the error out of a data-loader worker)."""
        return {
            "hook": self.hook,
            "exc_type": self.exc_type,
            "message": self.message,
            "plugin": self.plugin,
            "location": self.location,
            "detail": self.detail,
        }

    @classmethod
    def from_json(cls, data: dict[str, str | None]) -> PluginHookError:
        return cls(
            str(data["hook"]),
            str(data["exc_type"]),
            str(data.get("message") or ""),
            plugin=data.get("plugin"),
            location=str(data.get("location") or ""),
            detail=str(data.get("detail") or ""),
        )
