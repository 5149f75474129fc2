"""The language-modelling loss of models whose features carry pre-shifted labels."""

from __future__ import annotations

import paddle
import paddle.nn.functional as F

from mixcore.api.constants import IGNORE_INDEX

__all__ = ["token_loss"]


def token_loss(logits: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
    """Cross-entropy averaged over the positions whose label is not ignored, in float32.
    ``labels`` are already shifted (``labels[t]`` is the token after position ``t``), so
    nothing is shifted here; a batch without a trainable label gives 0, not NaN."""
    summed = F.cross_entropy(
        logits.astype("float32"), labels.unsqueeze(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    count = (labels != IGNORE_INDEX).astype("float32").sum()
    return summed / paddle.clip(count, min=1.0)
