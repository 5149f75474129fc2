"""A Hugging Face folder with PyTorch `.bin` weights reads like its safetensors twin, no torch."""

from __future__ import annotations

import json
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from mixcore_qwen_vl.checkpoint import has_weights, read_hf_weights

from mixcore.kit.torch_bin import TorchBinError
from mixcore.kit.weights import read_safetensors

FIXTURES = Path(__file__).parent.parent / "fixtures" / "torch_bin"


def _same(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert np.array_equal(a[name].data, b[name].data), name


@pytest.mark.parametrize("sharded", [False, True])
def test_bin_weights_equal_their_safetensors_twin(tmp_path, sharded):
    twin = read_safetensors(FIXTURES / "model.safetensors")
    if sharded:
        shard = "pytorch_model-00001-of-00001.bin"
        shutil.copy(FIXTURES / "pytorch_model.bin", tmp_path / shard)
        index = {"metadata": {}, "weight_map": dict.fromkeys(twin, shard)}
        (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    else:
        shutil.copy(FIXTURES / "pytorch_model.bin", tmp_path / "pytorch_model.bin")
    assert has_weights(tmp_path)
    _same(read_hf_weights(tmp_path), twin)


def test_a_bin_shard_holding_code_is_refused(tmp_path):
    class RunsCode:
        def __reduce__(self):
            return (print, ("ran",))

    with zipfile.ZipFile(tmp_path / "pytorch_model.bin", "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"w": RunsCode()}))
    with pytest.raises(TorchBinError, match=r"references builtins\.print"):
        read_hf_weights(tmp_path)
