"""A truncated or corrupt safetensors file is a clear error naming the file: exit 2 from the real
`mixcore infer` and `mixcore train`, no traceback; in the library a CorruptCheckpointError."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from mixcore_qwen_vl.checkpoint import save_checkpoint

from mixcore.api.errors import DataError
from mixcore.kit.images import ImagePreprocessor
from mixcore.kit.weights import CheckpointError, CorruptCheckpointError, read_safetensors

WEIGHTS = "model.safetensors"


def truncate(path: Path) -> str:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return "the file is truncated"


def huge_header_length(path: Path) -> str:
    data = path.read_bytes()
    path.write_bytes((2**40).to_bytes(8, "little") + data[8:])
    return "header length 1,099,511,627,776 is larger than the file"


def invalid_json(path: Path) -> str:
    data = bytearray(path.read_bytes())
    data[8:12] = b"{{{{"
    path.write_bytes(bytes(data))
    return "the header is not valid JSON"


def too_short(path: Path) -> str:
    path.write_bytes(b"\x01\x02\x03")
    return "3 bytes long, too short for a safetensors file"


def wrong_size(path: Path) -> str:
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [*header[name]["shape"], 2]
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + length :])
    return f"tensor {name!r}: holds"


CORRUPTIONS = {
    "truncated": truncate,
    "header length beyond the file": huge_header_length,
    "invalid JSON header": invalid_json,
    "too short": too_short,
    "shape disagrees with the data": wrong_size,
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    import paddle
    from mixcore_qwen_vl.configuration import config_from_preset
    from mixcore_qwen_vl.modeling import QwenVLForConditionalGeneration
    from mixcore_qwen_vl.tokenization import QwenVLTokenizer, write_tiny_vocab

    config = config_from_preset("qwen_vl/tiny")
    paddle.seed(3)
    model = QwenVLForConditionalGeneration(config)
    vocab = write_tiny_vocab(tmp_path_factory.mktemp("vocab"))
    tokenizer = QwenVLTokenizer.from_pretrained(str(vocab))
    processor = ImagePreprocessor(int(config.visual["image_size"]))
    return save_checkpoint(model, tokenizer, processor, tmp_path_factory.mktemp("ckpt") / "good")


def corrupted(checkpoint: Path, tmp_path: Path, kind: str) -> tuple[Path, str]:
    folder = tmp_path / "ckpt"
    shutil.copytree(checkpoint, folder)
    return folder, CORRUPTIONS[kind](folder / WEIGHTS)


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupt_safetensors_is_an_error_naming_the_file(checkpoint, tmp_path, kind):
    folder, reason = corrupted(checkpoint, tmp_path, kind)
    with pytest.raises(CorruptCheckpointError) as info:
        read_safetensors(folder / WEIGHTS)
    assert str(info.value).startswith(f"{folder / WEIGHTS}: ")
    assert reason in str(info.value)
    assert isinstance(info.value, CheckpointError) and isinstance(info.value, DataError)


def test_the_intact_checkpoint_still_reads(checkpoint):
    assert len(read_safetensors(checkpoint / WEIGHTS)) > 10


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind", ["truncated", "header length beyond the file", "invalid JSON header"]
)
def test_infer_with_a_corrupt_checkpoint_exits_2_naming_the_file(
    run_mixcore, checkpoint, tmp_path, kind
):
    folder, reason = corrupted(checkpoint, tmp_path, kind)
    result = run_mixcore("infer", "--model", str(folder), "--prompt", "Hi?", timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"error: {folder / WEIGHTS}: " in result.stderr and reason in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_train_from_a_truncated_checkpoint_exits_2_naming_the_file(
    run_mixcore, checkpoint, tmp_path
):
    folder, reason = corrupted(checkpoint, tmp_path, "truncated")
    data = tmp_path / "train.json"
    data.write_text(json.dumps([{"conversations": [["Hi?", "Hello."]]}]))
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "model_name_or_path": str(folder),
                "dataset": {"train": [{"name": "chatml_dataset", "data_files": str(data)}]},
                "output_dir": str(tmp_path / "out"),
                "max_steps": 1,
            }
        )
    )
    result = run_mixcore("train", "--config", str(config), timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"{folder / WEIGHTS}: " in result.stderr and reason in result.stderr
    assert "Traceback" not in result.stderr
