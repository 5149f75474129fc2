"""Exception types the library raises. Only the CLI turns them into exit codes and text."""

from __future__ import annotations


class MixcoreError(Exception):
    """Base of every error mixcore raises for a user to act on."""


class PluginError(MixcoreError):
    """A plugin could not be loaded, validated or called."""


class UnknownNameError(MixcoreError, LookupError):
    """A model, dataset or plugin name that is not registered.

    The message lists the valid names and the nearest match.
    """

    def __init__(self, kind: str, name: str, valid: list[str]) -> None:
        from mixcore.util import nearest

        self.kind, self.name, self.valid = kind, name, sorted(valid)
        hint = nearest(name, self.valid)
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
