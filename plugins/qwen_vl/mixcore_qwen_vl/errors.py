"""Errors the Qwen-VL library raises; each message says what to change.

Checkpoint errors (unreadable, corrupt, missing or mismatched weights) are the toolkit's
(:mod:`mixcore.kit.weights`), and so is the image-token mismatch
(:mod:`mixcore.kit.image_features`): every model shares them.
"""

from __future__ import annotations

from mixcore.api.errors import MixcoreError


class QwenVLError(MixcoreError):
    """Base of the Qwen-VL plugin's own errors."""


class QwenVLConfigError(QwenVLError, ValueError):
    """A Qwen-VL configuration whose sizes cannot build a working model."""
