"""Reading a JSON file with errors that name the file and say what is wrong with it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mixcore.errors import DataError


def read_json(path: Path, what: str) -> Any:
    """The parsed content of ``path``; ``what`` names the file in errors ("data file").

    Raises :class:`DataError` naming ``path`` when the file is missing, a folder, unreadable,
    not UTF-8 (a UTF-8 byte-order mark is accepted), or not valid JSON (with line and column).
    """
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{what} not found", source=source) from None
    except IsADirectoryError:
        raise DataError(f"{what} is a directory, expected a JSON file", source=source) from None
    except OSError as exc:
        raise DataError(f"cannot read {what}: {exc.strerror or exc}", source=source) from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{what} is not UTF-8 text (invalid byte 0x{raw[exc.start]:02x} at offset "
            f"{exc.start}); re-save it as UTF-8",
            source=source,
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", source=source
        ) from None
