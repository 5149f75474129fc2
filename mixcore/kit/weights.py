"""Tensor files without torch: safetensors read and written, PyTorch ``.bin`` read, weights
copied into a Paddle model.

``safetensors.numpy`` cannot represent bfloat16 (NumPy has no such dtype) yet most published
vision-language checkpoints are bfloat16, so bfloat16 tensors travel here as their raw 16-bit
patterns and become Paddle bfloat16 tensors by reinterpretation, never through a lossy cast.
Paddle is imported only inside the functions that make or read Paddle tensors.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mixcore.api.errors import DataError, MixcoreError
from mixcore.kit.files import open_regular_file

__all__ = [
    "CheckpointError",
    "CorruptCheckpointError",
    "StateSubset",
    "StoredTensor",
    "WeightMismatchError",
    "WeightsNotFoundError",
    "assign_weights",
    "from_array",
    "from_paddle",
    "parameter_dtype",
    "read_safetensors",
    "safetensors_problem",
    "split_evenly",
    "state_tensors",
    "write_safetensors",
]

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
#: Safetensors header dtype -> a NumPy dtype of the same item size (BF16 travels as uint16).
_NUMPY_DTYPES = {**{h: n for h, n in _SPEC_DTYPES.items() if h != "BF16"}, "BF16": "uint16"}
#: Longest header read, as the ``safetensors`` package allows (real ones are a few MiB at most).
MAX_HEADER_BYTES = 100 * 1024 * 1024
#: How many names a weight-mismatch message lists per category before summarising the rest.
_LISTED_NAMES = 20


class CheckpointError(MixcoreError):
    """A checkpoint folder that cannot be read or written."""


class CorruptCheckpointError(CheckpointError, DataError):
    """A checkpoint file that is truncated or not what its name says: the user's file to
    replace (exit 2), reported as ``"<file>: <what is wrong>"``."""


class WeightsNotFoundError(CheckpointError, FileNotFoundError):
    """Pretrained weights were requested but none exist where they are expected."""


class WeightMismatchError(CheckpointError):
    """Stored weights do not fit the model: missing, unexpected or differently shaped tensors."""

    def __init__(
        self,
        source: str,
        *,
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        mismatched: Sequence[tuple[str, tuple[int, ...], tuple[int, ...]]] = (),
    ) -> None:
        self.source = source
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)
        parts = [f"weights in {source} do not match the model"]
        if self.missing:
            parts.append(_listing("missing keys (the model needs them)", self.missing))
        if self.unexpected:
            parts.append(
                _listing("unexpected keys (the model has no such weight)", self.unexpected)
            )
        if self.mismatched:
            rows = [
                f"{name}: checkpoint {list(got)} vs model {list(want)}"
                for name, got, want in self.mismatched
            ]
            parts.append(_listing("shape mismatches", rows))
        super().__init__("\n".join(parts))


def _listing(title: str, names: Sequence[str]) -> str:
    shown = "\n  ".join(names[:_LISTED_NAMES])
    rest = len(names) - _LISTED_NAMES
    more = f"\n  ... and {rest} more" if rest > 0 else ""
    return f"{len(names)} {title}:\n  {shown}{more}"


@dataclass(frozen=True)
class StoredTensor:
    """One tensor of a checkpoint file. For ``BF16``, ``data`` holds the uint16 bit patterns."""

    data: np.ndarray
    dtype: str

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    def transposed(self) -> StoredTensor:
        return StoredTensor(np.ascontiguousarray(self.data.T), self.dtype)

    def to_paddle(self, dtype: Any) -> Any:
        """A Paddle tensor of ``dtype`` holding this tensor's values."""
        import paddle

        tensor = paddle.to_tensor(np.ascontiguousarray(self.data))
        if self.dtype == "BF16":
            tensor = tensor.view(paddle.bfloat16)
        return tensor if tensor.dtype == dtype else tensor.astype(dtype)


def from_paddle(tensor: Any) -> StoredTensor:
    """Snapshot a Paddle tensor (bfloat16 kept bit-exact)."""
    import paddle

    if tensor.dtype == paddle.bfloat16:
        return StoredTensor(tensor.view(paddle.uint16).numpy(), "BF16")
    return from_array(tensor.numpy())


def from_array(data: np.ndarray) -> StoredTensor:
    """A NumPy array (``ml_dtypes.bfloat16`` included, kept bit-exact) as a stored tensor."""
    if data.dtype.name == "bfloat16":
        return StoredTensor(data.view(np.uint16), "BF16")
    if data.dtype.name not in _HEADER_DTYPES:
        raise CheckpointError(f"cannot hold dtype {data.dtype.name} as a checkpoint tensor")
    return StoredTensor(data, _HEADER_DTYPES[data.dtype.name])


def parameter_dtype(model: Any) -> str:
    """The dtype of a Paddle layer's first parameter as a name (``"float32"``, ``"bfloat16"``)."""
    first = next(iter(model.parameters()), None)
    return "float32" if first is None else str(first.dtype).removeprefix("paddle.")


def state_tensors(model: Any) -> dict[str, StoredTensor]:
    """Every parameter and persistable buffer of a Paddle layer by its state-dict name."""
    return {name: from_paddle(tensor) for name, tensor in model.state_dict().items()}


# --- safetensors ---------------------------------------------------------------------------


def write_safetensors(
    path: str | Path, tensors: Mapping[str, StoredTensor], metadata: Mapping[str, str]
) -> int:
    """Write ``tensors`` to one safetensors file; returns the number of data bytes."""
    from safetensors import TensorSpec, serialize_file

    specs: dict[str, Any] = {}
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
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    header, data_start = _checked_header(path)
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


def safetensors_problem(path: str | Path) -> str | None:
    """What is wrong with a safetensors file's header, read alone (cheap at any size), or None.

    The header must be a JSON object within the file, each tensor entry well formed with a
    byte range that fits its shape and dtype, and the tensors must end exactly where the file
    does: a cut, a stray write over the header, or another file under the name breaks that.
    Tensor bytes themselves are not read.
    """
    try:
        _checked_header(Path(path))
    except CorruptCheckpointError as err:
        return err.reason
    return None


def _checked_header(path: Path) -> tuple[dict[str, dict], int]:
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
    except (ValueError, UnicodeDecodeError) as err:
        raise corrupt(f"the header is not valid JSON ({err}): not a safetensors file") from None
    if not isinstance(header, dict):
        raise corrupt("the header is not a JSON object: not a safetensors file")
    header.pop("__metadata__", None)
    data_size = size - 8 - length
    for name, entry in header.items():
        problem = _entry_problem(entry, data_size)
        if problem:
            raise corrupt(f"tensor {name!r}: {problem}")
    end = max((entry["data_offsets"][1] for entry in header.values()), default=0)
    if end != data_size:
        raise corrupt(
            f"its tensors end at byte {end:,} of {data_size:,} bytes of data: the file holds "
            "something else after them"
        )
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


# --- PyTorch .bin --------------------------------------------------------------------------


def read_torch_bin(path: str | Path) -> dict[str, StoredTensor]:
    """Every tensor of a ``torch.save`` file, read by :mod:`mixcore.kit.torch_bin` (no torch,
    no code run: a pickle that references anything but tensor records is refused)."""
    from mixcore.kit.torch_bin import load_torch_bin

    return {name: from_array(array) for name, array in load_torch_bin(path).items()}


# --- into a model --------------------------------------------------------------------------


def split_evenly(tensors: Mapping[str, StoredTensor], shards: int) -> list[dict[str, StoredTensor]]:
    """Consecutive groups of roughly equal byte size; exactly ``shards`` of them when there are
    at least that many tensors, and never an empty one."""
    shards = max(1, min(shards, len(tensors)))
    total = sum(tensor.data.nbytes for tensor in tensors.values())
    groups: list[dict[str, StoredTensor]] = [{}]
    filled = 0
    names = list(tensors)
    for position, name in enumerate(names):
        groups_left = shards - len(groups)
        must_open = groups_left >= len(names) - position
        wants_open = filled >= total * len(groups) / shards
        if groups[-1] and groups_left > 0 and (must_open or wants_open):
            groups.append({})
        groups[-1][name] = tensors[name]
        filled += tensors[name].data.nbytes
    return groups


def assign_weights(
    model: Any,
    stored: Mapping[str, StoredTensor],
    source: str,
    *,
    to_model_name: Callable[[str], str | None] = lambda name: name,
    to_stored_name: Callable[[str], str] = lambda name: name,
    transposed: frozenset[str] = frozenset(),
    ignore: re.Pattern[str] | None = None,
) -> None:
    """Copy ``stored`` into ``model`` (a Paddle layer), refusing partial or misshapen loads.

    ``to_model_name`` maps a stored name to the model's (None: no such weight) and
    ``to_stored_name`` maps back for messages; ``transposed`` names model weights stored as
    their transpose (PyTorch ``Linear``); stored names matching ``ignore`` are skipped. Raises
    :class:`WeightMismatchError` listing every missing, unexpected and misshapen tensor, in the
    checkpoint's own names, before anything is modified. Each tensor is converted to the dtype
    of the model's parameter, so a bfloat16 checkpoint fills a float32 model and the other way.
    """
    import paddle

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


class StateSubset:
    """A view of a model whose ``state_dict`` holds only the names ``keep`` accepts, so each
    part of a model (its image side, its language model) is loaded and checked for
    completeness by :func:`assign_weights` on its own."""

    def __init__(self, model: Any, keep: Callable[[str], bool]) -> None:
        self._model, self._keep = model, keep

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self._model.state_dict().items() if self._keep(k)}


def linear_weights(model: Any, extra_types: tuple[type, ...] = ()) -> frozenset[str]:
    """State-dict names of the ``weight`` of every ``paddle.nn.Linear`` (and ``extra_types``)
    sublayer: the weights Paddle stores ``[in, out]`` where PyTorch stores ``[out, in]``."""
    from paddle import nn

    kinds = (nn.Linear, *extra_types)
    return frozenset(
        f"{prefix}.weight" for prefix, layer in model.named_sublayers() if isinstance(layer, kinds)
    )
