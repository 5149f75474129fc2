"""The verdict cache: which plugin documents were found valid before, by content hash.

Plugin manifests and entries are the same on every run until a plugin changes, so their verdicts
are remembered in a small content-addressed cache (:class:`VerdictCache`): the key is a hash of the
schema and the exact JSON being validated, so a cached "valid" can never be stale. That keeps
``jsonschema`` (about 40 ms to import) off the path of ``mixcore plugins list``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def cache_dir() -> Path:
    """mixcore's cache folder: ``$MIXCORE_CACHE_DIR``, else ``$XDG_CACHE_HOME/mixcore``, else
    ``~/.cache/mixcore`` (an empty ``MIXCORE_CACHE_DIR`` turns the caches off: see callers)."""
    explicit = os.environ.get("MIXCORE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mixcore"


class VerdictCache:
    """Remembers which (schema, document) pairs were found valid, keyed by their content hash.

    Only "valid" verdicts are stored: a document that fails is validated again every time, so its
    messages always come from the current code. A cache that cannot be read or written is simply
    not used; ``MIXCORE_CACHE_DIR`` moves it, and an empty value turns it off.
    """

    # The version names the checks a verdict stands for: v2 added regex and $ref checks of
    # option schemas, so a v1 "valid" must not be trusted.
    _FILE = "valid-documents-v2.json"
    _LIMIT = 4096

    def __init__(self, folder: Path | None = None, *, enabled: bool = True) -> None:
        enabled = enabled and os.environ.get("MIXCORE_CACHE_DIR") != ""
        self._file = (folder or cache_dir()) / self._FILE if enabled else None
        self._known: set[str] | None = None
        self._added: list[str] = []

    @staticmethod
    def key(kind: str, schema: Any, document: Any) -> str | None:
        """The cache key of a document, or None when it is not plain JSON (never cached)."""
        try:
            text = json.dumps([kind, schema, document], sort_keys=True, allow_nan=False)
        except (TypeError, ValueError, RecursionError):
            return None
        return hashlib.sha256(text.encode()).hexdigest()

    def _load(self) -> set[str]:
        if self._known is None:
            self._known = set()
            if self._file is not None:
                try:
                    data = json.loads(self._file.read_text(encoding="utf-8"))
                    self._known = {k for k in data if isinstance(k, str)}
                except (OSError, ValueError, TypeError):
                    pass
        return self._known

    def __contains__(self, key: str | None) -> bool:
        return self._file is not None and key is not None and key in self._load()

    def add(self, key: str | None) -> None:
        if key is not None and key not in self._load():
            self._known.add(key)  # type: ignore[union-attr]
            self._added.append(key)

    def save(self) -> None:
        """Write new verdicts atomically, so concurrent processes never read a torn file."""
        if not self._added or self._file is None:
            return
        keys = sorted(self._load())[-self._LIMIT :]
        try:
            self._file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._file.with_name(f"{self._file.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(keys), encoding="utf-8")
            os.replace(tmp, self._file)
            self._added.clear()
        except OSError:
            pass
