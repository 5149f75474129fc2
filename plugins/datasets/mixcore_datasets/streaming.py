"""Streaming ``chatml_dataset`` sources: JSON Lines, JSON list and webdataset ``.tar`` shards.

With ``streaming: true`` a ``chatml_dataset`` entry is a
:class:`~mixcore.api.records.ShardedSource`: each data file is a shard, read record by record
when the training stream reaches it, from any record position (a resumed run starts mid-shard).
Records are checked as the map-style reader checks them (:func:`~mixcore_datasets.chatml
.record_to_sample`, every layout), one at a time; a bad record is yielded as a
:class:`~mixcore.api.errors.DataError` naming the shard and its index, for the core to skip or
stop at by ``on_bad_sample``.

Shards by file name:

* ``.jsonl`` / ``.ndjson``: one record per non-blank line; record ``i`` is the ``i``-th
  non-blank line. A line that is not JSON is a bad record (map-style reading refuses the file).
* ``.tar`` (the webdataset layout): the members of one sample are consecutive and share a *key*,
  the member's path up to the first dot of its file name (``000017.json``, ``000017.jpg``).
  Record ``i`` is the ``i``-th key. ``KEY.json`` holds one record in any layout; image paths in
  it name members of the shard (``000017.jpg``). A record that names no image gets the key's
  image members (``.jpg``, ``.jpeg``, ``.png``, ``.webp``, ``.bmp``, ``.gif``, ``.tif``,
  ``.tiff``), placed first in its first user turn. Image members are extracted on first read
  into ``extract_dir`` (one folder per shard, named from the shard's path, size and
  modification time, so a changed shard is extracted afresh) and model plugins read them from
  there like any image file.
* anything else: a JSON list of records, read whole when the stream reaches it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from mixcore.api.errors import DataError
from mixcore.api.records import IMAGE_PLACEHOLDER, Message, Sample
from mixcore.kit.files import open_regular_file
from mixcore.kit.images import ImageResolver
from mixcore_datasets.chatml import record_to_sample
from mixcore_datasets.layouts import FORMATS
from mixcore_datasets.record_files import is_json_lines, iter_json_list

__all__ = ["IMAGE_MEMBER_SUFFIXES", "ChatmlShards", "sample_key"]

#: Members of a webdataset sample read as its images, by file name ending.
IMAGE_MEMBER_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
#: Members of a webdataset sample read as its record.
RECORD_MEMBER_SUFFIX = ".json"


def sample_key(member: str) -> tuple[str, str]:
    """``(key, extension)`` of a tar member: ``a/b/000017.seg.png`` -> ``(a/b/000017, seg.png)``."""
    path = PurePosixPath(member)
    stem, dot, rest = path.name.partition(".")
    key = str(path.parent / stem) if str(path.parent) != "." else stem
    return key, rest if dot else ""


class ChatmlShards:
    """A streamed ``chatml_dataset``: every data file a shard (see the module docstring)."""

    def __init__(
        self,
        data_files: Iterable[Path],
        *,
        on_bad_sample: str = "error",
        label: str = "",
        chat_template: dict[str, Any] | str | None = None,
        image_root: Path | None = None,
        format: str = "auto",
        extract_dir: Path | None = None,
    ) -> None:
        if format not in FORMATS:
            raise DataError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
        self.files = [Path(f) for f in data_files]
        self.shards: Sequence[str] = [str(f) for f in self.files]
        self.on_bad_sample = on_bad_sample
        self.label = label
        self.chat_template = chat_template
        self.image_root = None if image_root is None else Path(image_root)
        self.format = format
        self.extract_dir = Path(extract_dir) if extract_dir is not None else None
        self.resolver = ImageResolver()
        #: Nothing is read up front, so nothing is skipped at build time.
        self.skipped: list[tuple[str, int, str]] = []

    def __repr__(self) -> str:
        return f"ChatmlShards({len(self.files)} shards, label={self.label!r})"

    def read_shard(self, shard: int, start: int = 0) -> Iterator[tuple[int, Sample | DataError]]:
        path = self.files[shard]
        if path.name.lower().endswith(".tar"):
            yield from self._tar(path, start)
        elif is_json_lines(path):
            yield from self._json_lines(path, start)
        else:
            try:
                for index, record in enumerate(iter_json_list(path, "data file")):
                    if index >= start:
                        yield index, self._sample(record, index, path)
            except ValueError as exc:  # the file holds another JSON value than a list
                raise DataError(
                    f"a chatml file must hold a JSON list of records, found a JSON {exc}",
                    source=str(path),
                ) from None

    def count_records(self, shard: int) -> int | None:
        """How many records shard number ``shard`` holds (bad ones too), read without checking
        them; None for a ``.tar`` shard, which is not counted (it is read by one process)."""
        path = self.files[shard]
        if path.name.lower().endswith(".tar"):
            return None
        if is_json_lines(path):
            return sum(1 for _ in self._json_lines(path, start=-1, check=False))
        try:
            return sum(1 for _ in iter_json_list(path, "data file"))
        except ValueError as exc:
            raise DataError(
                f"a chatml file must hold a JSON list of records, found a JSON {exc}",
                source=str(path),
            ) from None

    def _sample(
        self, record: Any, index: int, path: Path, image_root: Path | None = None
    ) -> Sample | DataError:
        try:
            return record_to_sample(
                record,
                index,
                data_file=path,
                dataset_label=self.label,
                chat_template=self.chat_template,
                image_root=image_root or self.image_root,
                fmt=self.format,
                resolver=self.resolver,
            )
        except DataError as exc:
            return exc

    def _json_lines(
        self, path: Path, start: int, check: bool = True
    ) -> Iterator[tuple[int, Sample | DataError | None]]:
        # ``check=False`` yields ``(index, None)`` for every record: counting, no parsing.
        source = str(path)
        with open_regular_file(path, "data file") as handle:
            index = -1
            for number, raw in enumerate(handle, start=1):
                try:
                    line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(
                        f"line {number} is not UTF-8 text (invalid byte 0x{raw[exc.start]:02x}); "
                        "re-save the shard as UTF-8",
                        source=source,
                    ) from None
                if not line.strip():
                    continue
                index += 1
                if not check:
                    yield index, None
                    continue
                if index < start:
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield (
                        index,
                        DataError(
                            f"invalid JSON on line {number} column {exc.colno}: {exc.msg}",
                            source=source,
                            index=index,
                        ),
                    )
                    continue
                yield index, self._sample(record, index, path)

    # -- webdataset .tar shards ------------------------------------------------------------------

    def _shard_folder(self, path: Path) -> Path:
        if self.extract_dir is None:
            raise DataError(
                "a .tar shard needs a folder to extract its images into (extract_dir)",
                source=str(path),
            )
        info = path.stat()
        tag = f"{path.resolve()}\0{info.st_size}\0{info.st_mtime_ns}"
        digest = hashlib.sha1(tag.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        return self.extract_dir / f"{path.name}-{digest}"

    def _tar(self, path: Path, start: int) -> Iterator[tuple[int, Sample | DataError]]:
        source = str(path)
        folder = self._shard_folder(path)
        with open_regular_file(path, "shard") as handle:
            try:
                # Closed by _tar_groups, which reads it to the end.
                archive = tarfile.open(fileobj=handle, mode="r|*")  # noqa: SIM115
            except tarfile.TarError as exc:
                raise DataError(f"not a readable tar archive: {exc}", source=source) from None
            try:
                yield from self._tar_groups(path, folder, archive, start)
            except tarfile.TarError as exc:  # truncated or damaged after its first members
                raise DataError(f"the tar archive is damaged: {exc}", source=source) from None

    def _tar_groups(
        self, path: Path, folder: Path, archive: tarfile.TarFile, start: int
    ) -> Iterator[tuple[int, Sample | DataError]]:
        with archive:
            index = -1
            key: str | None = None
            members: dict[str, bytes] = {}
            problem: str | None = None
            for member in archive:
                if not member.isfile():
                    continue
                name_key, ext = sample_key(member.name)
                if name_key != key:
                    if key is not None and index >= start:
                        yield index, self._tar_sample(path, folder, index, key, members, problem)
                    key, members, problem = name_key, {}, None
                    index += 1
                if index < start:
                    continue
                if _unsafe(member.name):
                    problem = f"member {member.name!r} leaves the shard (absolute or '..' path)"
                    continue
                data = archive.extractfile(member)
                members[ext] = data.read() if data is not None else b""
            if key is not None and index >= start:
                yield index, self._tar_sample(path, folder, index, key, members, problem)

    def _tar_sample(
        self,
        path: Path,
        folder: Path,
        index: int,
        key: str,
        members: dict[str, bytes],
        problem: str | None,
    ) -> Sample | DataError:
        source = str(path)
        if problem is not None:
            return DataError(f"sample {key!r}: {problem}", source=source, index=index)
        ext = RECORD_MEMBER_SUFFIX.lstrip(".")
        if ext not in members:
            found = ", ".join(f"{key}.{e}" for e in sorted(members)) or "none"
            return DataError(
                f"sample {key!r} has no {key}.json member holding its record (members: {found})",
                source=source,
                index=index,
            )
        try:
            record = json.loads(members[ext].decode("utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return DataError(f"{key}.json is not JSON text: {exc}", source=source, index=index)
        images = sorted(e for e in members if f".{e.lower()}".endswith(IMAGE_MEMBER_SUFFIXES))
        extracted = [folder / f"{key}.{e}" for e in images]
        for target, e in zip(extracted, images, strict=True):
            _extract(target, members[e])
        # Image paths in the record name members, so they resolve against the shard's folder.
        sample = self._sample(record, index, path, image_root=folder)
        if isinstance(sample, DataError):
            return DataError(f"sample {key!r}: {sample.reason}", source=source, index=index)
        if not sample.images and extracted:
            sample = _with_images(sample, extracted)
        return sample


def _unsafe(name: str) -> bool:
    path = PurePosixPath(name)
    return path.is_absolute() or ".." in path.parts


def _extract(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` once (atomically); an existing file of that size is kept."""
    try:
        if target.stat().st_size == len(data):
            return
    except FileNotFoundError:
        pass
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)


def _with_images(sample: Sample, images: list[Path]) -> Sample:
    """``sample`` with ``images`` placed first in its first user turn, one per line."""
    messages = list(sample.messages)
    first = next(i for i, m in enumerate(messages) if m.role == "user")
    marks = "".join(f"{IMAGE_PLACEHOLDER}\n" for _ in images)
    messages[first] = Message("user", marks + messages[first].content)
    return Sample(
        messages=messages,
        images=images,
        source=sample.source,
        index=sample.index,
        dataset=sample.dataset,
        chat_template=sample.chat_template,
    )
