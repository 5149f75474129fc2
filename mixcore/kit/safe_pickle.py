"""Read the arrays out of a pickle file without running any code it names.

A pickle can call any importable function while it loads, so a weight file from a folder is
never handed to ``pickle.load`` (nor to ``paddle.load``, which uses it). This reader admits only
the few globals that NumPy arrays and plain containers need to be rebuilt, and refuses a file
that names anything else, saying what it named.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

from mixcore.api.errors import MixcoreError, UsageError

#: (module, name) pairs a file of arrays may reference; nothing else is ever imported.
ALLOWED_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("collections", "OrderedDict"),
    }
)


class UnsafePickleError(UsageError):
    """A pickle file that references code, not only arrays: it was not loaded."""


class _ArraysOnly(pickle.Unpickler):
    def __init__(self, handle: Any, source: Path) -> None:
        super().__init__(handle)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafePickleError(
                f"{self.source} references {module}.{name}, which a file of weights never "
                "needs: it was not loaded, since unpickling it could run code. Re-save it as "
                "safetensors from a copy you trust"
            )
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.source} uses persistent references; it was not loaded")


def load_arrays(path: Path) -> Any:
    """The object a pickle of arrays holds (dicts, lists, tuples, NumPy arrays, numbers)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MixcoreError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return _ArraysOnly(io.BytesIO(data), path).load()
    except UnsafePickleError:
        raise
    except Exception as exc:  # a truncated or corrupt file: say so, do not trace
        raise MixcoreError(f"{path} is not a readable pickle of arrays: {exc}") from None


def state_dict_arrays(path: Path) -> dict[str, Any]:
    """A ``paddle.save``-d state dict as ``{name: numpy array}``."""
    import numpy as np

    loaded = load_arrays(path)
    if not isinstance(loaded, dict):
        raise MixcoreError(f"{path} holds a {type(loaded).__name__}, not a dict of weights")
    out = {}
    # paddle.save adds this table of structured -> parameter names; it holds no weights.
    loaded.pop("StructuredToParameterName@@", None)
    for key, value in loaded.items():
        # paddle.save stores a tensor as (name, array); a plain array stands for itself.
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], np.ndarray):
            value = value[1]
        if not isinstance(key, str) or not isinstance(value, np.ndarray):
            raise MixcoreError(f"{path}: entry {key!r} is not a named array")
        out[key] = value
    return out
