"""Reading a data file's records: a JSON document, or JSON Lines (one record per line).

Every dataset kind reads its files through :func:`read_document`. A file whose name ends in
``.jsonl`` (or ``.ndjson``) holds one JSON value per line: blank lines are skipped, and record
``i`` is the ``i``-th non-blank line (counting from 0), so a record index means the same in both
layouts. Any other file is one JSON document. Size and file-type limits are those of
:func:`mixcore.kit.files.read_json`; invalid JSON names the line (and, for JSON Lines, the record).
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mixcore.api.errors import DataError
from mixcore.kit.files import max_data_file_bytes, open_regular_file, read_file, read_json
from mixcore_datasets.base import json_type

__all__ = [
    "JSON_LINES_SUFFIXES",
    "is_json_lines",
    "iter_json_lines",
    "iter_json_list",
    "iter_records",
    "read_document",
    "read_json_lines",
]

#: File name endings read as JSON Lines.
JSON_LINES_SUFFIXES = (".jsonl", ".ndjson")


def is_json_lines(path: Path) -> bool:
    """Whether ``path`` is read as JSON Lines (by its name's ending, any case)."""
    return Path(path).suffix.lower() in JSON_LINES_SUFFIXES


def read_json_lines(path: Path, what: str) -> list[Any]:
    """The values of a JSON Lines file, one per non-blank line, in order."""
    source = str(path)
    raw = read_file(Path(path), what)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{what} is not UTF-8 text (invalid byte 0x{raw[exc.start]:02x} at offset "
            f"{exc.start}); re-save it as UTF-8",
            source=source,
        ) from None
    records: list[Any] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(
                f"invalid JSON on line {number} (record {len(records)}) column {exc.colno}: "
                f"{exc.msg}; a .jsonl file holds one JSON record per line",
                source=source,
            ) from None
    return records


def read_document(path: Path, what: str) -> Any:
    """The content of a data file: a list of records for JSON Lines, else the parsed JSON."""
    if is_json_lines(path):
        return read_json_lines(path, what)
    return read_json(path, what)


#: Bytes read at a time by :func:`iter_json_list`; the text held is a few times this.
_CHUNK = 1 << 22


class _Window:
    """The not yet parsed part of a file's text, read a chunk at a time."""

    def __init__(self, handle: Any, path: Path, what: str) -> None:
        self.handle, self.path, self.what = handle, path, what
        self.decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self.text, self.pos, self.eof = "", 0, False
        self.read_bytes = 0
        self.line = 1  # line number of text[0]
        self.limit = max_data_file_bytes()

    def more(self) -> bool:
        """Read the next chunk; False at the end of the file."""
        if self.eof:
            return False
        chunk = self.handle.read(_CHUNK)
        self.read_bytes += len(chunk)
        if self.read_bytes > self.limit:
            raise DataError(
                f"{self.what} grew above its size cap while being read", source=str(self.path)
            )
        try:
            piece = self.decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError as exc:
            at = self.read_bytes - len(chunk) + exc.start
            raise DataError(
                f"{self.what} is not UTF-8 text (invalid byte 0x{chunk[exc.start]:02x} at "
                f"offset {at}); re-save it as UTF-8",
                source=str(self.path),
            ) from None
        if self.pos > _CHUNK:  # drop what is parsed, counting its lines
            self.line += self.text.count("\n", 0, self.pos)
            self.text, self.pos = self.text[self.pos :], 0
        self.text += piece
        self.eof = not chunk
        return True

    def skip_space(self) -> str:
        """The next non-blank character ("" at the end), not consumed."""
        while True:
            while self.pos < len(self.text) and self.text[self.pos] in " \t\r\n":
                self.pos += 1
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self.more():
                return ""

    def error(self, message: str, at: int | None = None) -> DataError:
        at = self.pos if at is None else at
        line = self.line + self.text.count("\n", 0, at)
        column = at - (self.text.rfind("\n", 0, at) + 1) + 1
        return DataError(
            f"invalid JSON at line {line} column {column}: {message}", source=str(self.path)
        )


def iter_json_list(path: Path, what: str, first: str = "[") -> Iterator[Any]:
    """The elements of the JSON list in file ``path``, one at a time.

    Reading a million-record file whole holds its text and every parsed record at once (gigabytes);
    this holds a few megabytes of text and one record. The checks and messages are those of
    :func:`mixcore.kit.files.read_json` (size cap, UTF-8, line and column of invalid JSON); a file
    whose value is not a list raises ``ValueError`` holding the JSON type it holds ("object"), after reading
    nothing more, so the caller can say what it expected.
    """
    decoder = json.JSONDecoder()
    with open_regular_file(Path(path), what, limit=max_data_file_bytes()) as handle:
        window = _Window(handle, Path(path), what)
        start = window.skip_space()
        if start != first:
            if start == "":
                raise window.error("Expecting value")
            value = read_json(Path(path), what)  # the whole value, for its type or its error
            raise ValueError(json_type(value))
        window.pos += 1
        if window.skip_space() == "]":  # an empty list
            window.pos += 1
        else:
            while True:
                yield _next_value(window, decoder)
                char = window.skip_space()
                if char == "]":
                    window.pos += 1
                    break
                if char != ",":
                    raise window.error("Expecting ',' delimiter")
                window.pos += 1
                if window.skip_space() == "]":
                    raise window.error("Expecting value")
        if window.skip_space() != "":
            raise window.error("Extra data")


def _next_value(window: _Window, decoder: json.JSONDecoder) -> Any:
    """The JSON value at the window's position, reading on until it is complete."""
    while True:
        try:
            value, end = decoder.raw_decode(window.text, window.pos)
        except json.JSONDecodeError as exc:
            if window.more():
                continue
            raise window.error(exc.msg, exc.pos) from None
        # Something must follow a value (at least "]"), or a number cut by the chunk's end
        # would pass for a shorter one.
        if end < len(window.text) or not window.more():
            window.pos = end
            return value


def iter_json_lines(path: Path, what: str) -> Iterator[Any]:
    """The values of a JSON Lines file one at a time (see :func:`read_json_lines`)."""
    source = str(path)
    limit = max_data_file_bytes()
    with open_regular_file(Path(path), what, limit=limit) as handle:
        read, record = 0, 0
        for number, raw in enumerate(handle, start=1):
            read += len(raw)
            if read > limit:
                raise DataError(f"{what} grew above its size cap while being read", source=source)
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{what} is not UTF-8 text (invalid byte 0x{raw[exc.start]:02x} at offset "
                    f"{read - len(raw) + exc.start}); re-save it as UTF-8",
                    source=source,
                ) from None
            line = line.rstrip("\r\n")  # as splitlines() leaves it, for the same columns
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"invalid JSON on line {number} (record {record}) column {exc.colno}: "
                    f"{exc.msg}; a .jsonl file holds one JSON record per line",
                    source=source,
                ) from None
            record += 1
            yield value


def iter_records(path: Path, what: str) -> Iterator[Any]:
    """The records of a data file holding a list of them (JSON Lines or a JSON list), one at a
    time; a JSON file holding something else raises ``ValueError`` with its JSON type."""
    if is_json_lines(path):
        return iter_json_lines(path, what)
    return iter_json_list(path, what)
