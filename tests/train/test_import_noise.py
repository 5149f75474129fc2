"""What importing the training stack prints stays out of a normal run's output, and only that."""

from __future__ import annotations

import contextlib
import io
import logging
import sys

import pytest

from mixcore.train.runtime import quiet_import


@pytest.fixture
def root_level():
    root = logging.getLogger()
    before = root.level
    yield root
    root.setLevel(before)


def paddle_like_import() -> logging.Handler:
    """What ``import paddle`` does to the process: its thread warning, print by print, a root
    logger at INFO with a handler on the stderr of the moment."""
    print("WARNING: OMP_NUM_THREADS set to 2, not 1. The computation speed ...", file=sys.stderr)
    print("PLEASE USE OMP_NUM_THREADS WISELY.", file=sys.stderr)
    print("something else the user must see", file=sys.stderr)
    handler = logging.StreamHandler()
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    return handler


def test_the_thread_warning_is_dropped_and_other_lines_kept(root_level):
    root_level.setLevel(logging.WARNING)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        with quiet_import():
            handler = paddle_like_import()
        assert sys.stderr is stderr
    root_level.removeHandler(handler)
    assert stderr.getvalue() == "something else the user must see\n"
    # The handler made during the import writes to the real stream, not the filter.
    assert handler.stream is stderr
    assert root_level.level == logging.WARNING  # INFO records of other libraries stay out


def test_verbose_keeps_everything(root_level):
    root_level.setLevel(logging.WARNING)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), quiet_import(verbose=True):
        handler = paddle_like_import()
    root_level.removeHandler(handler)
    assert "OMP_NUM_THREADS WISELY" in stderr.getvalue()
    assert root_level.level == logging.INFO


def test_a_failing_import_still_restores_stderr(root_level):
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        with pytest.raises(ImportError), quiet_import():
            print("partial line without newline", end="", file=sys.stderr)
            raise ImportError("broken")
        assert sys.stderr is stderr
    assert stderr.getvalue() == "partial line without newline"
