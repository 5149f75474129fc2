"""The output folder of a run: one writer at a time, and a record of what mixcore wrote there.

`mixcore validate` has already refused folders that belong to the user (see
:mod:`mixcore.config.run_checks`; the folder's layout is :mod:`mixcore.run_folder`'s). Here, at
run time, the folder is locked against a second `mixcore train`, an earlier run's files are
removed when ``overwrite_output_dir`` asks for it (only the files that run recorded as its own),
and the files this run writes are recorded in :data:`~mixcore.run_folder.RUN_RECORD`, whose
``status`` says whether it finished.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mixcore import __version__
from mixcore.api.errors import UsageError
from mixcore.run_folder import LOCK_FILE, RUN_RECORD, foreign_entries, read_run_record
from mixcore.train import checkpoints


class OutputDirError(UsageError):
    """The output folder cannot be used by this run."""


class OutputLock:
    """An exclusive lock on ``folder`` for the life of the process that holds it.

    ``flock`` locks end with the process, however it ends (a kill -9 included), so a stale
    lock file never blocks a later run.
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode("ascii", "replace").strip() or "another process"
            os.close(fd)
            raise OutputDirError(
                f"{self.path.parent} is in use by another mixcore train (pid {holder}); wait "
                "for it to end or choose another output_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode("ascii"))
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def clear_earlier_run(folder: Path, keep: Sequence[str] = ()) -> list[str]:
    """Remove what an earlier mixcore run recorded in ``folder`` (for ``overwrite_output_dir``),
    except the entries named in ``keep`` (this launch's log folder); refuses when anything else
    is there. Returns the names removed."""
    foreign = [name for name in foreign_entries(folder) if name not in keep]
    if foreign:  # validation refuses this too; the folder may have changed since
        raise OutputDirError(f"{folder} holds files no mixcore run wrote: {', '.join(foreign)}")
    removed = []
    for entry in sorted(folder.iterdir()):
        if entry.name == LOCK_FILE or entry.name in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        removed.append(entry.name)
    return removed


def start_run(folder: Path, own: Sequence[str] = ()) -> None:
    """Record that a run writes into ``folder``; keeps the files an earlier part of it wrote.
    ``own`` names entries that are this run's from the start (its launch's log folder)."""
    earlier = read_run_record(folder)
    write_run_record(
        folder,
        {
            "written_by": f"mixcore {__version__}",
            "status": "running",
            "files": sorted(set(earlier.get("files", [])) | set(own)),
        },
    )


def prepare_launch(
    folder: Path, logs: str, *, overwrite: bool, resume: bool, record: bool = True
) -> None:
    """Before `mixcore train --nproc-per-node` starts the launcher, whose ranks write their logs
    into ``folder/logs`` (``logs/node-R`` of several machines): an earlier run's log folder is
    removed when ``overwrite`` (and not ``resume``) says the earlier run is to be replaced, and
    with ``record`` (the machine of rank 0) a run still training there is refused and the log
    folder is recorded as this run's, so a run that stops before its first process starts leaves
    no file mixcore would not know as its own. Only what a mixcore run recorded is removed."""
    if record:
        OutputLock(folder).acquire().release()  # a run still training there: refused, untouched
    top = Path(logs).parts[0]
    target = folder / logs
    if overwrite and not resume and top in read_run_record(folder).get("files", []):
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
    if record:
        start_run(folder, own=[top])
    else:
        folder.mkdir(parents=True, exist_ok=True)


def finish_run(folder: Path, written: list[str]) -> None:
    record = read_run_record(folder)
    files = set(record.get("files", [])) | set(written)
    record.update(status="finished", files=sorted(files))
    write_run_record(folder, record)


def write_run_record(folder: Path, record: dict[str, Any]) -> None:
    checkpoints.write_json_atomic(folder / RUN_RECORD, record)
