"""Pickled weights are read as arrays only: a file that names code is refused, unrun."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from mixcore.kit.safe_pickle import UnsafePickleError, load_arrays, state_dict_arrays


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_calls_a_function_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "lora_model_state.pdparams"
    path.write_bytes(pickle.dumps({"w": _RunsCode(marker)}))
    with pytest.raises(UnsafePickleError, match=r"references (posix|os)\.system"):
        load_arrays(path)
    assert not marker.exists()


def test_paddle_saved_state_dict_reads_as_arrays(tmp_path):
    import paddle

    path = tmp_path / "state.pdparams"
    paddle.save({"a.weight": paddle.arange(6, dtype="float32").reshape([2, 3])}, str(path))
    arrays = state_dict_arrays(path)
    assert list(arrays) == ["a.weight"]
    assert np.array_equal(arrays["a.weight"], np.arange(6, dtype="float32").reshape(2, 3))


def test_truncated_pickle_is_a_clear_error(tmp_path):
    path = tmp_path / "cut.pdparams"
    path.write_bytes(pickle.dumps({"a": np.zeros(100)})[:50])
    with pytest.raises(Exception, match="not a readable pickle of arrays"):
        load_arrays(path)
