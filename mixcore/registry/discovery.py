"""Find ``mixcore.plugins`` entry points in the installed packages' metadata.

``importlib.metadata.entry_points()`` parses the metadata of every installed distribution, which
costs tens of milliseconds in an environment holding the Paddle stack. ``mixcore plugins list``
must start fast, so this module reads the same files the standard does (``entry_points.txt`` in
each ``*.dist-info`` / ``*.egg-info`` folder on ``sys.path``) and parses ``METADATA`` only for the
few distributions that declare our group. Resolution follows ``importlib.metadata``: the first
distribution of a given name on the path wins.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass

GROUP = "mixcore.plugins"

_METADATA_SUFFIXES = (".dist-info", ".egg-info")


@dataclass(frozen=True)
class EntryPointInfo:
    """One entry point of the ``mixcore.plugins`` group and the distribution that declares it."""

    name: str
    value: str
    distribution: str
    version: str
    metadata_dir: str

    @property
    def module(self) -> str:
        return self.value.partition(":")[0].strip()

    @property
    def attr(self) -> str | None:
        attr = self.value.partition(":")[2].strip()
        # Extras ("mod:obj [extra]") do not change what is loaded.
        return attr.split("[", 1)[0].strip() or None


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _parse_group(text: str, group: str) -> list[tuple[str, str]]:
    """The ``name = value`` pairs of one ``[group]`` section of an entry_points.txt."""
    pairs: list[tuple[str, str]] = []
    in_group = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            in_group = line[1:-1].strip() == group
            continue
        if in_group and "=" in line:
            name, _, value = line.partition("=")
            pairs.append((name.strip(), value.strip()))
    return pairs


def _read_headers(metadata_dir: str) -> dict[str, str]:
    """``Name`` and ``Version`` from a distribution's METADATA or PKG-INFO header."""
    for filename in ("METADATA", "PKG-INFO"):
        try:
            with open(os.path.join(metadata_dir, filename), encoding="utf-8") as fh:
                headers: dict[str, str] = {}
                for line in fh:
                    if not line.strip():
                        break
                    key, sep, value = line.partition(":")
                    if sep and key in ("Name", "Version"):
                        headers[key] = value.strip()
                return headers
        except OSError:
            continue
    return {}


def iter_entry_points(
    group: str = GROUP, path: Iterable[str] | None = None
) -> list[EntryPointInfo]:
    """Every entry point of ``group`` declared by a distribution on ``path`` (``sys.path``)."""
    found: list[EntryPointInfo] = []
    seen: set[str] = set()
    marker = f"[{group}]"
    for entry in sys.path if path is None else path:
        folder = entry or "."
        try:
            names = os.listdir(folder)
        except OSError:
            continue  # a zip file, a missing folder: no installed metadata of ours lives there
        for dirname in sorted(names):
            if not dirname.endswith(_METADATA_SUFFIXES):
                continue
            stem = dirname.rsplit(".", 1)[0]
            key = _normalize(stem.split("-", 1)[0])
            if key in seen:
                continue
            seen.add(key)
            metadata_dir = os.path.join(folder, dirname)
            try:
                with open(os.path.join(metadata_dir, "entry_points.txt"), encoding="utf-8") as fh:
                    text = fh.read()
            except OSError:
                continue
            if marker not in text:
                continue
            headers = _read_headers(metadata_dir)
            dist = headers.get("Name", stem.split("-", 1)[0])
            version = headers.get("Version", "unknown")
            for name, value in _parse_group(text, group):
                found.append(EntryPointInfo(name, value, dist, version, metadata_dir))
    return found
