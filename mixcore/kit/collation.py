"""Batches as ``collate_batch`` hooks return them: numpy arrays, made tensors where used.

Collators run inside data-loader worker processes. Creating Paddle tensors there (in a process
forked from one that already runs Paddle) crashes workers now and then with a segmentation fault,
so collators return numpy arrays and Paddle's data loader converts them in the training process.
Code that calls a collator itself, outside a data loader, converts with :func:`to_tensors`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["to_tensors"]


def to_tensors(batch: dict[str, Any]) -> dict[str, Any]:
    """The same batch with every numpy array turned into a Paddle tensor; other values kept."""
    import paddle

    return {
        key: paddle.to_tensor(value) if isinstance(value, np.ndarray) else value
        for key, value in batch.items()
    }
