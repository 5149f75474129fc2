"""Safetensors files <-> model weights, without torch, including bfloat16.

``safetensors.numpy`` cannot represent bfloat16 (numpy has no such dtype) yet Qwen-VL-Chat is
published in bfloat16, so bfloat16 tensors travel here as their raw 16-bit patterns and become
Paddle bfloat16 tensors by reinterpretation, never through a lossy cast.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paddle
from safetensors import TensorSpec, safe_open, serialize_file

from mixcore_qwen_vl.errors import CheckpointError, WeightMismatchError

#: Safetensors header dtype -> the dtype name ``TensorSpec`` takes.
_SPEC_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}
_HEADER_DTYPES = {name: header for header, name in _SPEC_DTYPES.items()}


@dataclass(frozen=True)
class StoredTensor:
    """One tensor of a safetensors file. For ``BF16``, ``data`` holds the uint16 bit patterns."""

    data: np.ndarray
    dtype: str

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    def transposed(self) -> StoredTensor:
        return StoredTensor(np.ascontiguousarray(self.data.T), self.dtype)

    def to_paddle(self, dtype: paddle.dtype) -> paddle.Tensor:
        """A Paddle tensor of ``dtype`` holding this tensor's values."""
        tensor = paddle.to_tensor(np.ascontiguousarray(self.data))
        if self.dtype == "BF16":
            tensor = tensor.view(paddle.bfloat16)
        return tensor if tensor.dtype == dtype else tensor.astype(dtype)


def from_paddle(tensor: paddle.Tensor) -> StoredTensor:
    """Snapshot a Paddle tensor (bfloat16 kept bit-exact)."""
    if tensor.dtype == paddle.bfloat16:
        return StoredTensor(tensor.view(paddle.uint16).numpy(), "BF16")
    data = tensor.numpy()
    if data.dtype.name not in _HEADER_DTYPES:
        raise CheckpointError(f"cannot store dtype {data.dtype.name} in safetensors")
    return StoredTensor(data, _HEADER_DTYPES[data.dtype.name])


def write_safetensors(
    path: str | Path, tensors: Mapping[str, StoredTensor], metadata: Mapping[str, str]
) -> int:
    """Write ``tensors`` to one safetensors file; returns the number of data bytes."""
    specs: dict[str, TensorSpec] = {}
    alive: list[np.ndarray] = []  # serialize_file reads raw pointers: keep the arrays alive
    for name, stored in tensors.items():
        array = np.ascontiguousarray(stored.data)
        alive.append(array)
        specs[name] = TensorSpec(
            dtype=_SPEC_DTYPES[stored.dtype],
            shape=list(array.shape),
            data_ptr=array.ctypes.data,
            data_len=array.nbytes,
        )
    serialize_file(specs, str(path), metadata=dict(metadata))
    return sum(array.nbytes for array in alive)


def read_safetensors(path: str | Path) -> dict[str, StoredTensor]:
    """Read every tensor of a safetensors file."""
    path = Path(path)
    header, data_start = _read_header(path)
    result: dict[str, StoredTensor] = {}
    with safe_open(str(path), framework="np") as handle:
        for name, entry in header.items():
            dtype = entry["dtype"]
            if dtype == "BF16":
                start, end = entry["data_offsets"]
                bits = np.fromfile(
                    path, dtype=np.uint16, count=(end - start) // 2, offset=data_start + start
                )
                result[name] = StoredTensor(bits.reshape(entry["shape"]), dtype)
            elif dtype in _SPEC_DTYPES:
                result[name] = StoredTensor(handle.get_tensor(name), dtype)
            else:
                raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {dtype}")
    return result


def _read_header(path: Path) -> tuple[dict[str, dict], int]:
    try:
        with path.open("rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(length))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from err
    header.pop("__metadata__", None)
    return header, 8 + length


def state_tensors(model: paddle.nn.Layer) -> dict[str, StoredTensor]:
    """Every parameter and persistable buffer of ``model`` by its state-dict name."""
    return {name: from_paddle(tensor) for name, tensor in model.state_dict().items()}


def assign_weights(
    model: paddle.nn.Layer,
    stored: Mapping[str, StoredTensor],
    source: str,
    *,
    to_model_name: Callable[[str], str | None] = lambda name: name,
    to_stored_name: Callable[[str], str] = lambda name: name,
    transposed: frozenset[str] = frozenset(),
    ignore: re.Pattern[str] | None = None,
) -> None:
    """Copy ``stored`` into ``model``, refusing partial or misshapen loads.

    ``to_model_name`` maps a stored name to the model's (None: no such weight) and
    ``to_stored_name`` maps back for messages; ``transposed`` names model weights stored as
    their transpose (PyTorch ``Linear``); stored names matching ``ignore`` are skipped. Raises
    :class:`WeightMismatchError` listing every missing, unexpected and misshapen tensor, in the
    checkpoint's own names, before anything is modified.
    """
    state = model.state_dict()
    matched: dict[str, StoredTensor] = {}
    unexpected: list[str] = []
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
    for stored_name, tensor in stored.items():
        if ignore is not None and ignore.search(stored_name):
            continue
        model_name = to_model_name(stored_name)
        if model_name is None or model_name not in state:
            unexpected.append(stored_name)
            continue
        want = tuple(state[model_name].shape)
        if model_name in transposed:
            want = want[::-1]
        if tensor.shape != want:
            mismatched.append((stored_name, tensor.shape, want))
            continue
        matched[model_name] = tensor
    misshapen = {name for name, _, _ in mismatched}
    missing = [to_stored_name(name) for name in state if name not in matched]
    missing = [name for name in missing if name not in misshapen]
    if missing or unexpected or mismatched:
        raise WeightMismatchError(
            source, missing=missing, unexpected=sorted(unexpected), mismatched=mismatched
        )
    with paddle.no_grad():
        for name, target in state.items():
            # Transposed one tensor at a time so a 7B load never holds a second full copy.
            source_tensor = matched[name].transposed() if name in transposed else matched[name]
            target.set_value(source_tensor.to_paddle(target.dtype))
