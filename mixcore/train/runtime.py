"""Process set-up around the first import of Paddle: threads, and what its import prints."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any, TextIO


def configure_cpu_threads(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Let Paddle's CPU kernels use the machine; returns the variables it set.

    ``import paddle`` pins ``OMP_NUM_THREADS=1`` when the variable is unset, which leaves every
    core but one idle. ``MKL_DEBUG_CPU_TYPE=5`` makes MKL take its AVX2 kernels on AMD
    processors, which it otherwise treats as generic (measured here: 37 -> 172 GFLOP/s on a
    2048x2048 matmul with 2 threads). Values the user set are kept.
    """
    env = os.environ if environ is None else environ
    wanted = {
        "OMP_NUM_THREADS": str(
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1
        ),
        "MKL_DEBUG_CPU_TYPE": "5",
    }
    applied = {}
    for key, value in wanted.items():
        if key not in env:
            env[key] = value
            applied[key] = value
    return applied


def silence_import_noise() -> None:
    """Hide warnings Paddle's import prints on every run that say nothing about the user's job."""
    import warnings

    warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning)
    warnings.filterwarnings(
        "ignore", message="Setuptools is replacing distutils", category=UserWarning
    )


#: Lines ``import paddle`` prints on stderr that say nothing about the user's job: it warns
#: whenever ``OMP_NUM_THREADS`` is above 1, which :func:`configure_cpu_threads` sets on purpose.
IMPORT_NOISE = ("WARNING: OMP_NUM_THREADS set to", "PLEASE USE OMP_NUM_THREADS WISELY.")


class _LineFilter:
    """A text stream that passes whole lines on to ``target``, except those starting with one
    of ``drop`` while :attr:`active`; a pass-through once it is not."""

    def __init__(self, target: TextIO, drop: Sequence[str]) -> None:
        self.target = target
        self.drop = tuple(drop)
        self.active = True
        self._pending = ""

    def write(self, text: str) -> int:
        if not self.active:
            return self.target.write(text)
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            if not line.startswith(self.drop):
                self.target.write(line + "\n")
        return len(text)

    def finish(self) -> None:
        self.active = False
        if self._pending:
            self.target.write(self._pending)
            self._pending = ""

    def flush(self) -> None:
        self.target.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.target, name)


@contextlib.contextmanager
def quiet_import(verbose: bool = False) -> Iterator[None]:
    """Import the training stack inside this block: without ``verbose``, the lines of
    :data:`IMPORT_NOISE` are dropped from stderr, and the root logger, which ``import paddle``
    turns to INFO with a handler of its own, is put back to its level before (WARNING, Python's
    default), so other libraries' INFO records (matplotlib's font cache, ...) stay out.
    With ``verbose`` everything is kept."""
    if verbose:
        yield
        return
    real = sys.stderr
    root = logging.getLogger()
    level = root.level
    filtered = _LineFilter(real, IMPORT_NOISE)
    sys.stderr = filtered  # type: ignore[assignment]
    try:
        yield
    finally:
        if sys.stderr is filtered:
            sys.stderr = real
        filtered.finish()
        # Handlers made during the import hold the stream they found: the real one.
        for logger in [root, *logging.Logger.manager.loggerDict.values()]:
            for handler in getattr(logger, "handlers", []):
                if isinstance(handler, logging.StreamHandler) and handler.stream is filtered:
                    handler.setStream(real)
        root.setLevel(level)
