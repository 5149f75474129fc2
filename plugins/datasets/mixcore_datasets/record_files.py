"""Reading a data file's records: a JSON document, or JSON Lines (one record per line).

Every dataset kind reads its files through :func:`read_document`. A file whose name ends in
``.jsonl`` (or ``.ndjson``) holds one JSON value per line: blank lines are skipped, and record
``i`` is the ``i``-th non-blank line (counting from 0), so a record index means the same in both
layouts. Any other file is one JSON document. Size and file-type limits are those of
:func:`mixcore.kit.files.read_json`; invalid JSON names the line (and, for JSON Lines, the record).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mixcore.api.errors import DataError
from mixcore.kit.files import read_file, read_json

__all__ = ["JSON_LINES_SUFFIXES", "is_json_lines", "read_document", "read_json_lines"]

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
