"""Safetensors files <-> model weights, without torch, including bfloat16.

``safetensors.numpy`` cannot represent bfloat16 (numpy has no such dtype) yet Qwen-VL-Chat is
published in bfloat16, so bfloat16 tensors travel here as their raw 16-bit patterns and become
Paddle bfloat16 tensors by reinterpretation, never through a lossy cast.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import paddle
from safetensors import SafetensorError, TensorSpec, safe_open, serialize_file

from mixcore.kit.files import open_regular_file
from mixcore_qwen_vl.errors import CheckpointError, CorruptCheckpointError, WeightMismatchError

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
#: Safetensors header dtype -> a numpy dtype of the same item size (BF16 travels as uint16).
_NUMPY_DTYPES = {**{h: n for h, n in _SPEC_DTYPES.items() if h != "BF16"}, "BF16": "uint16"}


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


def from_array(data: np.ndarray) -> StoredTensor:
    """A NumPy array (``ml_dtypes.bfloat16`` included, kept bit-exact) as a stored tensor."""
    if data.dtype.name == "bfloat16":
        return StoredTensor(data.view(np.uint16), "BF16")
    if data.dtype.name not in _HEADER_DTYPES:
        raise CheckpointError(f"cannot hold dtype {data.dtype.name} as a checkpoint tensor")
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
    """Read every tensor of a safetensors file.

    The header is checked against the file's size before any tensor is read, so a file cut
    short (an interrupted download or copy), a header length beyond the file, a header that is
    not JSON or a tensor whose bytes lie past the end is a :class:`CorruptCheckpointError`
    naming the file and what is wrong, never a traceback from the reader.
    """
    path = Path(path)
    header, data_start = _read_header(path)
    result: dict[str, StoredTensor] = {}
    try:
        with safe_open(str(path), framework="np") as handle:
            for name, entry in header.items():
                dtype = entry["dtype"]
                if dtype == "BF16":
                    start, end = entry["data_offsets"]
                    bits = np.fromfile(
                        path, dtype=np.uint16, count=(end - start) // 2, offset=data_start + start
                    )
                    result[name] = StoredTensor(bits.reshape(entry["shape"]), dtype)
                else:
                    result[name] = StoredTensor(handle.get_tensor(name), dtype)
    except (OSError, SafetensorError, ValueError) as err:  # what the checks above cannot see
        raise CorruptCheckpointError(
            f"not a readable safetensors file: {err}", source=str(path)
        ) from None
    return result


#: Longest header read, as the ``safetensors`` package allows (real ones are a few MiB at most).
MAX_HEADER_BYTES = 100 * 1024 * 1024


def _read_header(path: Path) -> tuple[dict[str, dict], int]:
    """The tensor entries of ``path``'s header (checked against the file size), and where the
    data begins."""

    def corrupt(reason: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(reason, source=str(path))

    with open_regular_file(path, "safetensors file") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size < 8:
            raise corrupt(f"is {size} bytes long, too short for a safetensors file (truncated?)")
        length = int.from_bytes(handle.read(8), "little")
        if length > MAX_HEADER_BYTES or 8 + length > size:
            raise corrupt(
                f"header length {length:,} is larger than the file ({size:,} bytes): the file "
                "is truncated or not a safetensors file"
            )
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except ValueError as err:
        raise corrupt(f"the header is not valid JSON ({err}): not a safetensors file") from None
    if not isinstance(header, dict):
        raise corrupt("the header is not a JSON object: not a safetensors file")
    header.pop("__metadata__", None)
    data_size = size - 8 - length
    for name, entry in header.items():
        problem = _entry_problem(entry, data_size)
        if problem:
            raise corrupt(f"tensor {name!r}: {problem}")
    return header, 8 + length


def _entry_problem(entry: Any, data_size: int) -> str | None:
    if not isinstance(entry, dict):
        return "its header entry is not a JSON object"
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in _SPEC_DTYPES:
        return f"unsupported dtype {dtype!r}"
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        return f"invalid shape {shape!r}"
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) for o in offsets)
        and 0 <= offsets[0] <= offsets[1]
    ):
        return f"invalid data_offsets {offsets!r}"
    start, end = offsets
    if end > data_size:
        return (
            f"its data ends at byte {end:,} but the file holds {data_size:,} bytes of data: "
            "the file is truncated"
        )
    expected = math.prod(shape) * np.dtype(_NUMPY_DTYPES[dtype]).itemsize
    if end - start != expected:
        return f"holds {end - start:,} bytes but shape {shape} of {dtype} needs {expected:,}"
    return None


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
