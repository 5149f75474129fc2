"""The processed-data cache: records checked and lengths measured once, not at every start.

Building a dataset entry means reading and checking every record of its files (structure, text,
image paths), and packing or an over-long policy also needs every sample's length in tokens.
For a million records that is minutes, and a resumed run, a dry run and the next experiment on
the same data would pay it again. The cache keeps both results on disk:

* a **source** is one ``dataset.train`` / ``dataset.eval`` entry after its plugin built it: the
  samples in a plain, model-independent form (one JSON value per sample in ``samples.bin``, found
  through ``offsets.npy``) and the records the plugin refused (``meta.json``). The key is the
  dataset kind, its plugin's version, mixcore's, the entry's options and the *content* (SHA-256)
  of every file the kind's option schema marks ``"format": "path"``; a file's digest is memoised
  by its size, modification time and inode, so an unchanged file is not read again. A kind
  whose schema names no file (generated data) is not cached: its options alone might not say
  what it reads.
* the **lengths** of a source's samples for one model: ``int32`` per sample, ``-1`` for a sample
  the model could not encode (the reasons beside). The key adds the model plugin, its version,
  ``model_name_or_path`` (for a folder, the content of its small files: configuration,
  tokenizer, templates, not the weights) and the model options.

Cached samples are read back memory-mapped (:class:`CachedSamples`): a run holds the offsets
(8 bytes a sample) and the pages it touches, not a million Python objects. Every entry is
written into a staging folder and renamed into place, so an entry is complete or absent; a
process that loses the race to another one that wrote the same entry keeps the other's. The
cache only ever writes under its own folder (``dataset.cache_dir``, else ``$MIXCORE_CACHE_DIR``,
else ``~/.cache/mixcore``; an empty ``MIXCORE_CACHE_DIR`` turns it off); deleting that folder is
always safe.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import tempfile
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np

from mixcore import __version__
from mixcore.api.records import Message, Sample
from mixcore.registry.verdict_cache import cache_dir

#: Bumped whenever what an entry holds, or how it is keyed, changes.
CACHE_FORMAT = 2
SAMPLES_FILE = "samples.bin"
OFFSETS_FILE = "offsets.npy"
META_FILE = "meta.json"
#: Files of a model folder that say how it tokenises (weights are keyed by nothing here).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pdparams", ".pt", ".pth", ".h5", ".ckpt", ".npz")
_SMALL_FILE = 64 * 1024 * 1024


def default_cache_dir() -> Path | None:
    """mixcore's cache folder, or None when ``MIXCORE_CACHE_DIR`` is set empty (no caches)."""
    if os.environ.get("MIXCORE_CACHE_DIR") == "":
        return None
    return cache_dir()


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _digest(parts: Any) -> str:
    return hashlib.sha256(canonical(parts).encode("utf-8")).hexdigest()[:32]


class DataCache:
    """The cache folder: file digests, sources and lengths (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root) / "data"

    # -- file content ----------------------------------------------------------------------

    def file_digest(self, path: Path) -> str:
        """SHA-256 of ``path``'s content, memoised by its size, modification time and inode."""
        info = os.stat(path)
        stamp = [info.st_size, info.st_mtime_ns, info.st_ino]
        memo = self.root / "digests" / f"{_digest(str(Path(path).resolve()))}.json"
        try:
            known = json.loads(memo.read_text(encoding="utf-8"))
            if known.get("stamp") == stamp:
                return str(known["sha256"])
        except (OSError, ValueError, KeyError):
            pass
        sha = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 22):
                sha.update(chunk)
        value = sha.hexdigest()
        _write_atomic(memo, json.dumps({"path": str(path), "stamp": stamp, "sha256": value}))
        return value

    def folder_digest(self, folder: Path) -> list[tuple[str, str]]:
        """Digests of a model folder's small non-weight files (what decides its tokenisation)."""
        found = []
        for path in sorted(Path(folder).rglob("*")):
            if (
                path.is_file()
                and path.suffix not in _WEIGHT_SUFFIXES
                and path.stat().st_size <= _SMALL_FILE
                and not any(part.startswith(".") for part in path.relative_to(folder).parts)
            ):
                found.append((str(path.relative_to(folder)), self.file_digest(path)))
        return found

    # -- keys ------------------------------------------------------------------------------

    def source_key(
        self,
        *,
        kind: str,
        plugin_version: str | None,
        options: dict[str, Any],
        base_dir: Path,
        files: Sequence[Path],
    ) -> str:
        return _digest(
            {
                "format": CACHE_FORMAT,
                "mixcore": __version__,
                "kind": kind,
                "plugin_version": plugin_version,
                "options": options,
                "base_dir": str(base_dir),
                "files": [(str(f), self.file_digest(f)) for f in files],
            }
        )

    def model_key(
        self,
        *,
        model: str,
        plugin_version: str | None,
        model_name_or_path: str,
        model_options: dict[str, Any],
    ) -> str:
        folder = Path(model_name_or_path)
        return _digest(
            {
                "format": CACHE_FORMAT,
                "mixcore": __version__,
                "model": model,
                "plugin_version": plugin_version,
                "source": model_name_or_path,
                "files": self.folder_digest(folder) if folder.is_dir() else None,
                "options": model_options,
            }
        )

    # -- sources ---------------------------------------------------------------------------

    def source_folder(self, key: str) -> Path:
        return self.root / "sources" / key

    def open_source(self, key: str) -> CachedSamples | None:
        folder = self.source_folder(key)
        if not (folder / META_FILE).is_file():
            return None
        try:
            return CachedSamples(folder)
        except (OSError, ValueError, KeyError):
            return None  # damaged by hand: rebuilt (into a fresh folder) by the caller

    def write_source(
        self, key: str, samples: Iterable[Sample], skipped: Sequence[tuple[str, int, str]]
    ) -> CachedSamples:
        """Store ``samples`` (and the records their plugin refused) under ``key``."""
        target = self.source_folder(key)

        def fill(staging: Path) -> None:
            write_samples(staging, samples, skipped)

        _publish(target, fill)
        return CachedSamples(target)

    def write_source_parts(
        self,
        key: str,
        write: Callable[[Path], tuple[Sequence[PartWritten], Sequence[tuple[str, int, str]]]],
    ) -> CachedSamples:
        """Store the entry ``key`` whose rows ``write(staging)`` writes as parts inside the
        staging folder (:func:`write_part`), returning them in order with the refused records."""
        target = self.source_folder(key)

        def fill(staging: Path) -> None:
            parts, skipped = write(staging)
            join_parts(staging, parts, skipped)

        _publish(target, fill)
        return CachedSamples(target)

    # -- lengths ---------------------------------------------------------------------------

    def lengths_file(self, source_key: str, model_key: str) -> Path:
        return self.root / "lengths" / source_key / f"{model_key}.npz"

    def read_lengths(self, source_key: str, model_key: str) -> LengthRecord | None:
        path = self.lengths_file(source_key, model_key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                lengths = np.asarray(data["lengths"], dtype=np.int32)
                reasons = json.loads(bytes(data["reasons"]).decode("utf-8"))
        except (OSError, ValueError, KeyError):
            return None
        return LengthRecord(lengths, {int(k): v for k, v in reasons.items()})

    def write_lengths(self, source_key: str, model_key: str, record: LengthRecord) -> None:
        path = self.lengths_file(source_key, model_key)
        path.parent.mkdir(parents=True, exist_ok=True)
        reasons = np.frombuffer(canonical(record.reasons).encode("utf-8"), dtype=np.uint8)
        handle, staging = tempfile.mkstemp(dir=path.parent, prefix=".staging-", suffix=".npz")
        try:
            with os.fdopen(handle, "wb") as out:
                np.savez(out, lengths=record.lengths.astype(np.int32), reasons=reasons)
            os.replace(staging, path)
        except BaseException:
            Path(staging).unlink(missing_ok=True)
            raise


class LengthRecord:
    """Every sample's length in tokens for one model (``-1``: unencodable, reason beside)."""

    def __init__(self, lengths: np.ndarray, reasons: dict[int, str]) -> None:
        self.lengths = lengths
        self.reasons = reasons


# -- the sample store ------------------------------------------------------------------------


def write_samples(
    folder: Path, samples: Iterable[Sample], skipped: Sequence[tuple[str, int, str]]
) -> int:
    """Write ``samples`` into ``folder`` in the form :class:`CachedSamples` reads."""
    folder.mkdir(parents=True, exist_ok=True)
    part = write_part(folder / SAMPLES_FILE, samples)
    return join_parts(folder, [part], skipped)


class PartWritten:
    """What :func:`write_part` wrote: a file of rows, their end offsets and the name tables
    their numbers refer to. Picklable: a worker process hands it back."""

    def __init__(self, path: Path, ends: np.ndarray, tables: dict[str, list[str]]) -> None:
        self.path, self.ends, self.tables = path, ends, tables


def write_part(path: Path, samples: Iterable[Sample]) -> PartWritten:
    """Write ``samples`` as rows into the file ``path``: one part of an entry (its source,
    dataset and template names numbered within the part)."""
    tables: dict[str, dict[str, int]] = {"sources": {}, "datasets": {}, "templates": {}}

    def number(table: str, value: str) -> int:
        known = tables[table]
        if value not in known:
            known[value] = len(known)
        return known[value]

    ends = array("q")
    end = 0
    with open(path, "wb") as out:
        for sample in samples:
            row = [
                [[m.role, m.content] for m in sample.messages],
                [str(p) for p in sample.images],
                number("sources", sample.source),
                sample.index,
                number("datasets", sample.dataset),
                number("templates", canonical(sample.chat_template)),
            ]
            data = json.dumps(row, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
            out.write(data)
            end += len(data)
            ends.append(end)
        out.flush()
        os.fsync(out.fileno())
    return PartWritten(
        path, np.frombuffer(ends, dtype=np.int64), {k: list(v) for k, v in tables.items()}
    )


def join_parts(
    folder: Path, parts: Sequence[PartWritten], skipped: Sequence[tuple[str, int, str]]
) -> int:
    """Make the entry in ``folder`` out of ``parts`` (written in order, inside ``folder``): their
    rows one after the other in ``samples.bin``, the offsets, and each part's name tables."""
    target = folder / SAMPLES_FILE
    if len(parts) != 1 or parts[0].path != target:
        with open(target, "wb") as out:
            for part in parts:
                with open(part.path, "rb") as handle:
                    shutil.copyfileobj(handle, out, 1 << 22)
            out.flush()
            os.fsync(out.fileno())
        for part in parts:
            part.path.unlink()
    offsets, base = [np.zeros(1, dtype=np.int64)], 0
    for part in parts:
        offsets.append(part.ends + base)
        base += int(part.ends[-1]) if len(part.ends) else 0
    offsets_array = np.concatenate(offsets)
    np.save(folder / OFFSETS_FILE, offsets_array)
    meta = {
        "format": CACHE_FORMAT,
        "count": len(offsets_array) - 1,
        "parts": [
            {
                "count": len(part.ends),
                "sources": part.tables["sources"],
                "datasets": part.tables["datasets"],
                "templates": [json.loads(t) for t in part.tables["templates"]],
            }
            for part in parts
        ],
        "skipped": [list(s) for s in skipped],
    }
    (folder / META_FILE).write_text(json.dumps(meta), encoding="utf-8")
    return len(offsets_array) - 1


class CachedSamples(Sequence[Sample]):
    """The samples of a cache entry, decoded one at a time from a memory-mapped file.

    Picklable (data-loader workers started by spawn reopen the files); ``skipped`` lists the
    records the dataset's plugin refused when the entry was made.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        meta = json.loads((self.folder / META_FILE).read_text(encoding="utf-8"))
        if meta.get("format") != CACHE_FORMAT:
            raise ValueError(f"cache entry {folder} has format {meta.get('format')}")
        parts = meta["parts"]
        # Row i belongs to the last part starting at or before it (one part, nearly always).
        self._part_starts = np.cumsum([0] + [p["count"] for p in parts[:-1]], dtype=np.int64)
        self._tables = [(p["sources"], p["datasets"], p["templates"]) for p in parts]
        self.skipped: list[tuple[str, int, str]] = [tuple(s) for s in meta["skipped"]]
        self._offsets = np.load(self.folder / OFFSETS_FILE, mmap_mode="r", allow_pickle=False)
        if len(self._offsets) != meta["count"] + 1:
            raise ValueError(f"cache entry {folder} is damaged (offsets do not match)")
        self._map: mmap.mmap | None = None

    def _data(self) -> mmap.mmap | bytes:
        if self._map is None:
            if self._offsets[-1] == 0:
                return b""
            with open(self.folder / SAMPLES_FILE, "rb") as handle:
                self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        return self._map

    def __len__(self) -> int:
        return len(self._offsets) - 1

    @overload
    def __getitem__(self, item: int) -> Sample: ...

    @overload
    def __getitem__(self, item: slice) -> list[Sample]: ...

    def __getitem__(self, item: int | slice) -> Sample | list[Sample]:
        if isinstance(item, slice):
            return [self[i] for i in range(*item.indices(len(self)))]
        if item < 0:
            item += len(self)
        if not 0 <= item < len(self):
            raise IndexError(item)
        start, end = int(self._offsets[item]), int(self._offsets[item + 1])
        messages, images, source, index, dataset, template = json.loads(self._data()[start:end])
        part = (
            0 if len(self._tables) == 1 else int(self._part_starts.searchsorted(item, "right")) - 1
        )
        sources, datasets, templates = self._tables[part]
        return Sample(
            messages=[Message(role, content) for role, content in messages],
            images=[Path(p) for p in images],
            source=sources[source],
            index=index,
            dataset=datasets[dataset],
            chat_template=templates[template],
        )

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]

    def __getstate__(self) -> dict[str, Any]:
        return {"folder": self.folder}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["folder"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"CachedSamples({self.folder}, {len(self)} samples)"


# -- writing entries -------------------------------------------------------------------------


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(dir=path.parent, prefix=".staging-")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def _publish(target: Path, fill: Any) -> None:
    """Fill a staging folder beside ``target`` and rename it into place (complete or absent)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".staging-{target.name}-"))
    try:
        fill(staging)
        if target.exists():  # damaged, or just written by another process: replace or keep
            if (target / META_FILE).is_file() and _readable(target):
                shutil.rmtree(staging)
                return
            shutil.rmtree(target)
        try:
            os.rename(staging, target)
        except OSError:
            if not _readable(target):
                raise
            shutil.rmtree(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _readable(folder: Path) -> bool:
    try:
        CachedSamples(folder)
    except (OSError, ValueError, KeyError):
        return False
    return True
