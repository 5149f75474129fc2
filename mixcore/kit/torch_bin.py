"""Read a PyTorch ``.bin`` checkpoint (``torch.save``'s zip layout) without torch and without
running any code it holds.

Published checkpoints often come as ``pytorch_model-0000N-of-0000M.bin`` shards. ``torch.load``
unpickles them, and a pickle may call any importable function. This reader opens the zip,
rebuilds tensors from their raw storage bytes with NumPy, and admits only the handful of
globals a state dict of tensors uses (the tensor and parameter rebuild functions, the typed
storage classes, ``OrderedDict``). A file that names anything else is refused, unrun, with the
name it used.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mixcore.kit.safe_pickle import UnsafePickleError

#: torch's typed storage classes, as a pickle names them, and the NumPy type of their elements.
STORAGE_TYPES = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}


class TorchBinError(UnsafePickleError):
    """A ``.bin`` checkpoint that is not a zip of tensors, or that references code."""


@dataclass(frozen=True)
class _StorageType:
    dtype: str


def _numpy_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes  # shipped with Paddle's dependencies; NumPy has no bfloat16

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _rebuild_tensor(
    storage: np.ndarray, offset: int, size: tuple, stride: tuple, *_: Any
) -> np.ndarray:
    """A tensor from its storage: ``size`` and ``stride`` count elements, as torch's do."""
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:],
        shape=tuple(size),
        strides=tuple(s * itemsize for s in stride),
        writeable=False,
    )
    return np.array(view, copy=True)  # its own writable values, not a view into the zip


def _rebuild_parameter(data: np.ndarray, *_: Any) -> np.ndarray:
    return data


class _TensorsOnly(pickle.Unpickler):
    def __init__(self, handle: Any, source: Path, read_storage: Any) -> None:
        super().__init__(handle)
        self.source = source
        self.read_storage = read_storage

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in STORAGE_TYPES:
            return _StorageType(STORAGE_TYPES[name])
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        raise TorchBinError(
            f"{self.source} references {module}.{name}, which a checkpoint of tensors never "
            "needs: it was not loaded, since unpickling it could run code"
        )

    def persistent_load(self, pid: Any) -> np.ndarray:
        # ("storage", storage type, key, location, number of elements)
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise TorchBinError(f"{self.source}: unexpected persistent record {pid!r:.80}")
        kind, key = pid[1], pid[2]
        if not isinstance(kind, _StorageType) or not isinstance(key, str):
            raise TorchBinError(f"{self.source}: a storage record of unknown type {kind!r:.80}")
        return self.read_storage(key, _numpy_dtype(kind.dtype))


def load_torch_bin(path: Path) -> dict[str, np.ndarray]:
    """``{name: array}`` from a ``torch.save``-d state dict, read without torch or pickle code."""
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise TorchBinError(
            f"{path} is not a zip checkpoint of torch.save ({exc}); legacy non-zip .bin files "
            "are not read"
        ) from None
    with archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise TorchBinError(f"{path} has {len(pickles)} data.pkl records, not 1")
        prefix = pickles[0][: -len("data.pkl")]
        storages: dict[str, np.ndarray] = {}

        def read_storage(key: str, dtype: np.dtype) -> np.ndarray:
            if key not in storages:
                member = f"{prefix}data/{key}"
                if member not in names:
                    raise TorchBinError(f"{path} lacks the storage {member}")
                storages[key] = np.frombuffer(archive.read(member), dtype=dtype)
            return storages[key]

        try:
            state = _TensorsOnly(io.BytesIO(archive.read(pickles[0])), path, read_storage).load()
        except UnsafePickleError:
            raise
        except Exception as exc:  # truncated or malformed: name the file, no traceback
            raise TorchBinError(f"{path} is not a readable checkpoint of tensors: {exc}") from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, np.ndarray) for k, v in state.items()
    ):
        raise TorchBinError(f"{path} does not hold a state dict of named tensors")
    return dict(state)
