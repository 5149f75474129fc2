"""Errors the Qwen-VL library raises; each message says what to change."""

from __future__ import annotations

from collections.abc import Sequence

from mixcore.api.errors import DataError, MixcoreError

#: How many names a weight-mismatch message lists per category before summarising the rest.
_LISTED_NAMES = 20


class QwenVLError(MixcoreError):
    """Base of the Qwen-VL plugin's errors."""


class QwenVLConfigError(QwenVLError, ValueError):
    """A Qwen-VL configuration whose sizes cannot build a working model."""


class ImageTokenMismatchError(QwenVLError, ValueError):
    """The image pad tokens in ``input_ids`` do not match the images passed with them."""


class CheckpointError(QwenVLError):
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
