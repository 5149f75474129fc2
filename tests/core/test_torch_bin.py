"""PyTorch `.bin` checkpoints are read without torch and without running their pickle's code.

The fixtures were written by real PyTorch 2.13 (tests/fixtures/torch_bin/make_fixture.py, run in
a separate venv): a `torch.save` state dict and its safetensors twin.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mixcore.kit.torch_bin import TorchBinError, load_torch_bin
from mixcore.kit.weights import read_safetensors

FIXTURES = Path(__file__).parent.parent / "fixtures" / "torch_bin"


def test_a_torch_saved_state_dict_equals_its_safetensors_twin():
    tensors = load_torch_bin(FIXTURES / "pytorch_model.bin")
    twin = read_safetensors(FIXTURES / "model.safetensors")
    assert tensors.keys() == twin.keys()
    for name, array in tensors.items():
        stored = twin[name]
        assert array.shape == stored.shape, name
        if stored.dtype == "BF16":  # the twin keeps bfloat16 as its bit patterns
            assert array.dtype.name == "bfloat16"
            assert np.array_equal(array.view(np.uint16), stored.data), name
        else:
            assert np.array_equal(array, stored.data), name
    # Views come back as their own contiguous values: two views of one storage, a transpose.
    assert not np.shares_memory(tensors["view_a"], tensors["view_b"])
    assert np.array_equal(tensors["view_a"][3:], tensors["view_b"][:1])


def _bin_with_pickle(path: Path, payload: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/version", "3\n")
    return path


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_bin_whose_pickle_names_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = _bin_with_pickle(tmp_path / "pytorch_model.bin", pickle.dumps({"w": _RunsCode(marker)}))
    with pytest.raises(TorchBinError, match=r"references (posix|os)\.system"):
        load_torch_bin(path)
    assert not marker.exists()


def test_a_bin_that_is_not_a_zip_or_misses_a_storage_is_a_clear_error(tmp_path):
    legacy = tmp_path / "legacy.bin"
    legacy.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(TorchBinError, match="not a zip checkpoint"):
        load_torch_bin(legacy)

    # The real checkpoint with one storage record taken out of the zip.
    cut = tmp_path / "cut.bin"
    with (
        zipfile.ZipFile(FIXTURES / "pytorch_model.bin") as source,
        zipfile.ZipFile(cut, "w") as out,
    ):
        for item in source.infolist():
            if not item.filename.endswith("/data/0"):
                out.writestr(item, source.read(item))
    with pytest.raises(TorchBinError, match="lacks the storage pytorch_model/data/0"):
        load_torch_bin(cut)
