"""Reading the files a config names (data files, chat templates) without hanging or exhausting memory.

Such a file is read whole into memory, so it must be a regular file no larger than a cap. A named
pipe would block ``open`` until some writer appears (forever, in a training job), and a device
like ``/dev/zero`` never ends; both are refused, from ``os.stat`` before opening (so ``mixcore
validate`` can say so too) and again from ``os.fstat`` on the opened descriptor, which is opened
with ``O_NONBLOCK`` so that a pipe swapped in between the two never blocks. Errors are
:class:`~mixcore.api.errors.DataError` naming the file and saying what is wrong with it.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

from mixcore.api.errors import DataError

#: Environment variable raising (or lowering) the size cap of data files, in MiB.
ENV_MAX_DATA_FILE_MB = "MIXCORE_MAX_DATA_FILE_MB"
#: Default cap of a data file read into memory. Generous: the largest public instruction sets in
#: one JSON file (LLaVA's 665k mixture) are about 1 GiB, and parsing a JSON file takes several
#: times its size in memory.
DEFAULT_MAX_DATA_FILE_MB = 4096

_MIB = 1024 * 1024

_KINDS = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def max_data_file_bytes(environ: Mapping[str, str] | None = None) -> int:
    """The size cap of a data file: ``MIXCORE_MAX_DATA_FILE_MB`` MiB, else the default."""
    value = (os.environ if environ is None else environ).get(ENV_MAX_DATA_FILE_MB, "").strip()
    try:
        megabytes = float(value) if value else DEFAULT_MAX_DATA_FILE_MB
    except ValueError:
        raise DataError(
            f"{ENV_MAX_DATA_FILE_MB}={value!r} is not a number of MiB", source="environment"
        ) from None
    return int(megabytes * _MIB)


def _size(n: int) -> str:
    return f"{n / _MIB:,.1f} MiB" if n >= _MIB else f"{n:,} bytes"


def _limit_hint(limit: int, env_hint: bool) -> str:
    text = f"the limit of {_size(limit)} for a file read into memory"
    if env_hint:
        text += f"; split the file, or raise the limit with {ENV_MAX_DATA_FILE_MB}"
    return text


def _target(path: Path) -> str:
    """`` (a symlink to X)`` when ``path`` is one, so the message shows what was really named."""
    try:
        return f" (a symlink to {os.path.realpath(path)})" if os.path.islink(path) else ""
    except OSError:
        return ""


def stat_problem(
    info: os.stat_result, path: Path, *, limit: int | None, env_hint: bool = True
) -> str | None:
    """Why a file with ``info`` cannot be read as a data file (predicate text), or None."""
    if stat.S_ISDIR(info.st_mode):
        return "is a directory, expected a file"
    for test, kind in _KINDS:
        if test(info.st_mode):
            return f"is {kind}{_target(path)}, not a regular file"
    if not stat.S_ISREG(info.st_mode):
        return f"is not a regular file{_target(path)}"
    if limit is not None and info.st_size > limit:
        return f"is {_size(info.st_size)}, above {_limit_hint(limit, env_hint)}"
    return None


def file_problem(path: Path, *, limit: int | None = None, env_hint: bool = True) -> str | None:
    """Why ``path`` cannot be read as a data file, from ``os.stat`` alone (nothing is opened);
    None when it can. The text is a predicate: ``"is a directory, expected a file"``."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "not found" + (" (a symlink whose target does not exist)" if _target(path) else "")
    except OSError as exc:  # permission, a name too long, a symlink loop
        return f"cannot be checked: {exc.strerror or exc}"
    return stat_problem(info, path, limit=limit, env_hint=env_hint)


def open_regular_file(
    path: Path, what: str, *, limit: int | None = None, env_hint: bool = True
) -> BinaryIO:
    """``path`` opened for reading in binary, if it is a regular file of at most ``limit`` bytes.

    Never blocks: special files are refused before opening, and the descriptor is opened
    non-blocking and checked again (a pipe could replace the file in between). Raises
    :class:`DataError` ``"<what> <problem>"`` naming ``path``.
    """
    source = str(path)

    def fail(problem: str) -> DataError:
        return DataError(f"{what} {problem}", source=source)

    problem = file_problem(path, limit=limit, env_hint=env_hint)
    if problem is not None:
        raise fail(problem)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise fail("not found") from None
    except OSError as exc:
        raise fail(f"cannot be read: {exc.strerror or exc}") from None
    handle = os.fdopen(fd, "rb")
    problem = stat_problem(os.fstat(fd), path, limit=limit, env_hint=env_hint)
    if problem is not None:
        handle.close()
        raise fail(problem)
    return handle


def read_file(path: Path, what: str, *, limit: int | None = None) -> bytes:
    """The bytes of ``path`` (see :func:`open_regular_file`); ``limit`` defaults to
    :func:`max_data_file_bytes`. A file that grows past ``limit`` while read is refused too."""
    env_hint = limit is None  # only the data-file cap is the environment variable's
    limit = max_data_file_bytes() if limit is None else limit
    with open_regular_file(path, what, limit=limit, env_hint=env_hint) as handle:
        try:
            raw = handle.read(limit + 1)
        except OSError as exc:
            raise DataError(f"cannot read {what}: {exc.strerror or exc}", source=str(path)) from exc
    if len(raw) > limit:
        raise DataError(
            f"{what} grew above {_limit_hint(limit, env_hint)} while being read",
            source=str(path),
        )
    return raw


def read_json(path: Path, what: str, *, limit: int | None = None) -> Any:
    """The parsed content of ``path``; ``what`` names the file in errors ("data file").

    Raises :class:`DataError` naming ``path`` when the file is missing, not a regular file (a
    folder, a pipe, a device), larger than ``limit`` bytes (default
    :func:`max_data_file_bytes`), unreadable, not UTF-8 (a UTF-8 byte-order mark is accepted),
    or not valid JSON (with line and column).
    """
    source = str(path)
    raw = read_file(Path(path), what, limit=limit)
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
