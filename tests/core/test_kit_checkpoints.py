"""The toolkit's checkpoint folders: sharded safetensors, the writer's record, damaged files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mixcore.api import MODEL_RECORD_KEY, ModelBundle
from mixcore.kit.checkpoints import (
    INDEX_NAME,
    WEIGHTS_NAME,
    compute_dtype,
    read_config,
    read_model_record,
    read_weights,
    write_config,
    write_weights,
)
from mixcore.kit.model_plugin import ModelPlugin
from mixcore.kit.weights import (
    CheckpointError,
    WeightsNotFoundError,
    from_array,
    safetensors_problem,
)
from mixcore.testing import make_registry


def tensors(n: int = 5) -> dict:
    rng = np.random.default_rng(0)
    return {
        f"layer.{i}.weight": from_array(rng.standard_normal((i + 1, 3)).astype("float32"))
        for i in range(n)
    }


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and np.array_equal(a[k].data, b[k].data) for k in a
    )


@pytest.mark.parametrize("shards", [1, 3])
def test_weights_round_trip_single_or_sharded(tmp_path: Path, shards: int):
    written = write_weights(tmp_path, tensors(), shards=shards)
    if shards == 1:
        assert [p.name for p in written] == [WEIGHTS_NAME]
    else:
        index = json.loads((tmp_path / INDEX_NAME).read_text())
        assert sorted(set(index["weight_map"].values())) == [
            f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)
        ]
    assert same(read_weights(tmp_path), tensors())


def test_bfloat16_is_kept_bit_exact(tmp_path: Path):
    import ml_dtypes

    values = np.array([[1.0, -2.5], [3.140625, 1e-3]], dtype=ml_dtypes.bfloat16)
    write_weights(tmp_path, {"w": from_array(values)})
    again = read_weights(tmp_path)["w"]
    assert again.dtype == "BF16"
    np.testing.assert_array_equal(again.data, values.view(np.uint16))


def test_a_missing_shard_or_an_unlisted_tensor_is_named(tmp_path: Path):
    write_weights(tmp_path, tensors(), shards=2)
    index_path = tmp_path / INDEX_NAME
    index = json.loads(index_path.read_text())
    index["weight_map"]["ghost.weight"] = "model-00001-of-00002.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"lists tensors no shard holds: \[.ghost\.weight.\]"):
        read_weights(tmp_path)
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(WeightsNotFoundError, match=r"model-00002-of-00002\.safetensors is listed"):
        read_weights(tmp_path)


def test_an_index_naming_a_file_outside_the_folder_is_refused(tmp_path: Path):
    write_weights(tmp_path / "ckpt", tensors(2), shards=2)
    index_path = tmp_path / "ckpt" / INDEX_NAME
    index = json.loads(index_path.read_text())
    index["weight_map"] = {k: "../elsewhere.safetensors" for k in index["weight_map"]}
    index_path.write_text(json.dumps(index))
    with pytest.raises(WeightsNotFoundError, match="listed"):
        read_weights(tmp_path / "ckpt")


def test_no_weights_names_the_layouts_looked_for(tmp_path: Path):
    with pytest.raises(
        WeightsNotFoundError, match=r"model\.safetensors\.index\.json.*pytorch_model\.bin"
    ):
        read_weights(tmp_path)


def test_bytes_after_the_last_tensor_mark_the_file_damaged(tmp_path: Path):
    write_weights(tmp_path, tensors(2))
    path = tmp_path / WEIGHTS_NAME
    assert safetensors_problem(path) is None
    with path.open("ab") as handle:
        handle.write(b"\0" * 8)
    assert "holds something else after them" in safetensors_problem(path)


def test_the_writer_record_resolves_a_folder_whatever_its_model_type(tmp_path: Path):
    class Writer(ModelPlugin):
        name = "writer_model"
        model_types = ("llama",)  # a model_type many plugins might claim

        def load(self, source, options):
            return ModelBundle(name=self.name, model=None, tokenizer=None)

    class Rival(Writer):
        name = "rival_model"

    write_config(tmp_path, {"model_type": "llama"}, plugin="writer", model="writer_model")
    record = read_model_record(read_config(tmp_path))
    assert record["plugin"] == "writer" and record["model"] == "writer_model"
    assert MODEL_RECORD_KEY in json.loads((tmp_path / "config.json").read_text())
    registry = make_registry(("rival", Rival()), ("writer", Writer()))
    assert registry.resolve_model(str(tmp_path)).name == "writer_model"


def test_checkpoints_are_built_in_float32_on_a_cpu():
    assert compute_dtype("bfloat16", device="cpu") == "float32"
    assert compute_dtype("torch.float16", device="cpu") == "float32"
    assert compute_dtype(None, device="cpu") == "float32"
