"""Attention per packed segment: a pack costs the sum of its samples' squared lengths.

A packed row holds several samples end to end (:mod:`mixcore.kit.packing`). Masking it with a
dense ``[len, len]`` block-diagonal mask is exact but pays for the whole square: a 2048-token
pack of four 500-token samples computes 4.2 M attention scores per head to keep 1 M of them,
and the mask itself is one more ``len x len`` tensor per batch. This module computes each
segment's attention on its own instead:

* :class:`SegmentLayout` says where the segments of a batch lie (from ``segment_ids``
  ``[batch, len]``, 1, 2, ... per sample, 0 for padding) and, per segment, how many leading
  tokens form a bidirectional *prefix* (0: plain causal; ChatGLM's context before ``<sop>``);
* :func:`segment_attention` is the attention core: ``softmax(q k^T * scale + causal/prefix
  mask) v`` per segment, on ``[batch, len, heads, head_dim]`` tensors. On CPU (and whenever
  flash attention cannot be used) it loops over segments, so its cost is ``sum(n_i^2)``; on a
  GPU, for float16/bfloat16 causal segments, it is one call of Paddle's variable-length flash
  attention with cumulative sequence lengths (``flash_attn_unpadded``);
* :func:`replaced` swaps an attribute (an attention core method, a mask builder) on given layer
  *instances* for the length of a ``with`` block, which is how a model plugin routes its
  language model's attention through :func:`segment_attention` for one forward pass without
  touching the class (other instances, generation with a KV cache, LoRA's wrapped ``Linear``
  layers are all unaffected).

Values and gradients equal the dense block-diagonal masked attention (the collator's
``attention_mask``) to float rounding; ``tests/core/test_segment_attention.py`` compares them.
Padding tokens (segment 0) attend only to themselves, as under the dense mask (their output is
their own value vector); on the flash path a run of padding is treated as one more causal
segment, which changes only outputs at padding positions, which carry no loss and are attended
by no real token.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import paddle
import paddle.nn.functional as F

__all__ = ["Segment", "SegmentLayout", "replaced", "segment_attention"]


@dataclass(frozen=True)
class Segment:
    """One sample of a packed batch: row ``row``, tokens ``start:stop``; its first ``prefix``
    tokens attend to each other both ways (every token attends to the whole prefix), the rest
    causally."""

    row: int
    start: int
    stop: int
    prefix: int = 0

    @property
    def length(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class SegmentLayout:
    """Where the segments of a ``[rows, length]`` batch lie; every other token is padding."""

    rows: int
    length: int
    segments: tuple[Segment, ...]
    _masks: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_segment_ids(
        cls, segment_ids: Any, prefix_lengths: Sequence[int] | None = None
    ) -> SegmentLayout:
        """The layout of ``segment_ids`` ``[rows, length]`` (numpy or Paddle; 1-D is one row):
        each run of one nonzero id is a segment, 0 is padding. ``prefix_lengths`` gives each
        segment's bidirectional prefix, in row-major segment order (default 0: causal). A
        segment id that occurs in two separate runs of a row is a ``ValueError``."""
        ids = segment_ids.numpy() if isinstance(segment_ids, paddle.Tensor) else segment_ids
        ids = np.asarray(ids)
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2:
            raise ValueError(f"segment_ids must be [rows, length], got shape {ids.shape}")
        rows, length = ids.shape
        segments: list[Segment] = []
        for row in range(rows):
            line = ids[row]
            cuts = np.flatnonzero(np.diff(line)) + 1
            starts = np.concatenate([[0], cuts])
            stops = np.concatenate([cuts, [length]])
            seen: set[int] = set()
            for start, stop in zip(starts.tolist(), stops.tolist(), strict=True):
                number = int(line[start])
                if number == 0:
                    continue
                if number in seen:
                    raise ValueError(f"segment {number} of row {row} is not contiguous")
                seen.add(number)
                segments.append(Segment(row, start, stop))
        if prefix_lengths is not None:
            if len(prefix_lengths) != len(segments):
                raise ValueError(
                    f"{len(prefix_lengths)} prefix lengths for {len(segments)} segments"
                )
            segments = [
                Segment(s.row, s.start, s.stop, min(max(int(p), 0), s.length))
                for s, p in zip(segments, prefix_lengths, strict=True)
            ]
        return cls(rows, length, tuple(segments))

    @property
    def cost(self) -> int:
        """Attention scores per head computed per segment: the sum of squared lengths."""
        return sum(s.length**2 for s in self.segments)

    @property
    def dense_cost(self) -> int:
        """Attention scores per head a dense mask pays for: ``rows * length**2``."""
        return self.rows * self.length**2

    def in_row(self, row: int) -> list[Segment]:
        """The segments of row ``row``, left to right."""
        return [s for s in self.segments if s.row == row]

    def runs(self, row: int) -> list[tuple[int, int, Segment | None]]:
        """Row ``row`` cut into consecutive ``(start, stop, segment)`` runs covering it all;
        ``segment`` is None for a run of padding."""
        runs: list[tuple[int, int, Segment | None]] = []
        at = 0
        for s in self.in_row(row):
            if s.start > at:
                runs.append((at, s.start, None))
            runs.append((s.start, s.stop, s))
            at = s.stop
        if at < self.length:
            runs.append((at, self.length, None))
        return runs

    def keep_mask(self) -> np.ndarray:
        """The dense equivalent, boolean ``[rows, 1, length, length]`` (True = may attend):
        what this module avoids building, for tests and for models that need it anyway."""
        keep = np.zeros((self.rows, 1, self.length, self.length), dtype=bool)
        keep[:, 0, np.arange(self.length), np.arange(self.length)] = True  # padding: itself
        for s in self.segments:
            keep[s.row, 0, s.start : s.stop, s.start : s.stop] = _keep_block(s.length, s.prefix)
        return keep

    def cumulative_lengths(self) -> np.ndarray:
        """``cu_seqlens`` (int32) over the ``rows * length`` tokens flattened row by row, each
        run of padding counted as one more segment, so every token belongs to one."""
        bounds = {0, self.rows * self.length}
        for row in range(self.rows):
            bounds.update((row * self.length, (row + 1) * self.length))
        for s in self.segments:
            bounds.update((s.row * self.length + s.start, s.row * self.length + s.stop))
        return np.asarray(sorted(bounds), dtype=np.int32)

    def additive_mask(self, length: int, prefix: int, dtype: Any) -> paddle.Tensor:
        """``[length, length]`` 0 / dtype-minimum mask of one segment (cached per layout)."""
        key = (length, prefix, str(dtype))
        mask = self._masks.get(key)
        if mask is None:
            keep = paddle.to_tensor(_keep_block(length, prefix))
            mask = paddle.where(
                keep,
                paddle.zeros([length, length], dtype=dtype),
                paddle.full([length, length], paddle.finfo(dtype).min, dtype=dtype),
            )
            mask.stop_gradient = True
            self._masks[key] = mask
        return mask


def _keep_block(length: int, prefix: int) -> np.ndarray:
    keep = np.tril(np.ones((length, length), dtype=bool))
    keep[:, :prefix] = True
    return keep


def segment_attention(
    query: paddle.Tensor,
    key: paddle.Tensor,
    value: paddle.Tensor,
    layout: SegmentLayout,
    *,
    scale: float | None = None,
    dropout: float = 0.0,
    training: bool = False,
) -> paddle.Tensor:
    """Attention of ``[batch, len, heads, head_dim]`` queries, keys and values, each segment of
    ``layout`` attending only to itself (causally after its prefix); padding attends to itself.

    Scores are ``(q * scale) k^T`` (``scale`` defaults to ``1/sqrt(head_dim)``), softmax runs in
    float32 and is cast back to ``value``'s dtype, then ``dropout`` (when ``training``) as in
    PaddleNLP's QWen and ChatGLM. Returns ``[batch, len, heads, head_dim]``.
    """
    rows, length, _, head_dim = query.shape
    if [rows, length] != [layout.rows, layout.length] or key.shape[1] != length:
        raise ValueError(
            f"segment layout is [{layout.rows}, {layout.length}] but the queries are "
            f"{query.shape} and the keys {key.shape} (segment attention has no KV cache)"
        )
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    if _flash_applies(query, layout, dropout, training):
        return _flash(query, key, value, layout, scale, dropout, training)
    # [batch, heads, len, head_dim], split into rows and each row into its runs of tokens with
    # unbind and split (whose gradients are one stack and one concat, where slicing would add
    # a zero-filled copy of the whole tensor per slice).
    q, k, v = (
        paddle.unbind(t.transpose([0, 2, 1, 3]), axis=0) for t in (query * scale, key, value)
    )
    out_rows = []
    for row in range(rows):
        runs = layout.runs(row)
        sizes = [stop - start for start, stop, _ in runs]
        parts = [
            paddle.split(t[row], sizes, axis=1) if len(runs) > 1 else [t[row]] for t in (q, k, v)
        ]
        pieces = []
        for (_, _, segment), qs, ks, vs in zip(runs, *parts, strict=True):
            if segment is None:  # padding: attends only to itself, so its output is its value
                pieces.append(vs)
                continue
            scores = paddle.matmul(qs, ks, transpose_y=True)
            scores = scores + layout.additive_mask(segment.length, segment.prefix, scores.dtype)
            probs = _softmax(scores, value.dtype)
            if dropout and training:
                probs = F.dropout(probs, dropout, training=True)
            pieces.append(paddle.matmul(probs, vs))
        out_rows.append(pieces[0] if len(pieces) == 1 else paddle.concat(pieces, axis=1))
    return paddle.stack(out_rows).transpose([0, 2, 1, 3])


def _softmax(scores: paddle.Tensor, dtype: Any) -> paddle.Tensor:
    """Softmax over the last axis in float32, cast to ``dtype`` (no cast when already so)."""
    if scores.dtype != paddle.float32:
        scores = scores.astype("float32")
    probs = F.softmax(scores, axis=-1)
    return probs if probs.dtype == dtype else probs.astype(dtype)


def _flash_applies(query: paddle.Tensor, layout: SegmentLayout, dropout: float, training: bool):
    """Paddle's variable-length flash attention: GPU, half precision, causal segments only."""
    if not paddle.is_compiled_with_cuda() or query.dtype not in (paddle.float16, paddle.bfloat16):
        return False
    if not query.place.is_gpu_place() or any(s.prefix for s in layout.segments):
        return False
    try:
        from paddle.nn.functional.flash_attention import flash_attn_unpadded  # noqa: F401
    except ImportError:
        return False
    return True


def _flash(query, key, value, layout, scale, dropout, training):  # pragma: no cover - GPU only
    from paddle.nn.functional.flash_attention import flash_attn_unpadded

    rows, length, heads, head_dim = query.shape
    cu = layout.cumulative_lengths()
    longest = int(np.max(np.diff(cu)))
    cu_seqlens = paddle.to_tensor(cu, dtype="int32", place=query.place)
    flat = [t.reshape([rows * length, heads, head_dim]) for t in (query, key, value)]
    out, _ = flash_attn_unpadded(
        *flat,
        cu_seqlens,
        cu_seqlens,
        longest,
        longest,
        scale,
        dropout=dropout if training else 0.0,
        causal=True,
        training=training,
    )
    return out.reshape([rows, length, heads, head_dim])


_MISSING = object()


@contextmanager
def replaced(layers: Iterable[Any], name: str, make: Callable[[Any], Any]) -> Iterator[None]:
    """Within the block, ``layer.<name>`` is ``make(layer)`` on each of ``layers`` (instances,
    not their class); afterwards each gets back what it had (its class's method again, or an
    instance attribute of its own). Blocks nest."""
    layers = list(layers)
    saved = [layer.__dict__.get(name, _MISSING) for layer in layers]
    try:
        for layer in layers:
            object.__setattr__(layer, name, make(layer))
        yield
    finally:
        for layer, before in zip(layers, saved, strict=True):
            if before is _MISSING:
                layer.__dict__.pop(name, None)
            else:
                object.__setattr__(layer, name, before)
