"""The kit's per-segment attention equals dense block-diagonal masked attention."""

from __future__ import annotations

import math

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from mixcore.kit.nn.segment_attention import SegmentLayout, replaced, segment_attention
from mixcore.kit.packing import block_diagonal_causal_mask

HEADS, HEAD_DIM = 3, 8


def _dense(query, key, value, keep):
    """Attention under a boolean ``[rows, 1, L, L]`` keep mask, as PaddleNLP's QWen does it."""
    q, k, v = (t.transpose([0, 2, 1, 3]) for t in (query, key, value))
    scores = paddle.matmul(q / math.sqrt(q.shape[-1]), k, transpose_y=True)
    mask = paddle.where(
        paddle.to_tensor(keep),
        paddle.zeros(keep.shape, "float32"),
        paddle.full(keep.shape, paddle.finfo(paddle.float32).min, "float32"),
    )
    probs = F.softmax(scores + mask, axis=-1, dtype="float32")
    return paddle.matmul(probs, v).transpose([0, 2, 1, 3])


def _inputs(rows, length, seed=0):
    rng = np.random.default_rng(seed)
    tensors = []
    for _ in range(3):
        t = paddle.to_tensor(rng.standard_normal((rows, length, HEADS, HEAD_DIM)).astype("float32"))
        t.stop_gradient = False
        tensors.append(t)
    return tensors


def _values_and_grads(fn, tensors, weight):
    out = fn(*tensors)
    (out * weight).sum().backward()
    grads = [t.grad.numpy().copy() for t in tensors]
    for t in tensors:
        t.clear_gradient()
    return out.numpy(), grads


SEGMENTS = {
    "one row, no padding": [[1, 1, 1, 2, 2, 3, 3, 3, 3, 3]],
    "padding at the end": [[1, 1, 1, 1, 2, 2, 2, 0, 0, 0]],
    "batch of rows, padding": [
        [1, 1, 2, 2, 2, 2, 3, 0, 0, 0],
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        [1, 1, 1, 2, 0, 0, 0, 0, 0, 0],
    ],
    "one-token segments": [[1, 2, 3, 4, 4, 0, 0, 5, 5, 0]],
}


@pytest.mark.parametrize("segment_ids", SEGMENTS.values(), ids=SEGMENTS.keys())
def test_causal_segments_equal_the_dense_block_diagonal_mask(segment_ids):
    segment_ids = np.asarray(segment_ids)
    layout = SegmentLayout.from_segment_ids(segment_ids)
    keep = block_diagonal_causal_mask(segment_ids)
    assert np.array_equal(layout.keep_mask(), keep)
    rows, length = segment_ids.shape
    tensors = _inputs(rows, length)
    weight = paddle.to_tensor(
        np.random.default_rng(1).standard_normal((rows, length, HEADS, HEAD_DIM)).astype("float32")
    )
    dense, dense_grads = _values_and_grads(lambda q, k, v: _dense(q, k, v, keep), tensors, weight)
    mine, my_grads = _values_and_grads(
        lambda q, k, v: segment_attention(q, k, v, layout), tensors, weight
    )
    assert np.max(np.abs(dense - mine)) <= 1e-5
    for a, b in zip(dense_grads, my_grads, strict=True):
        assert np.max(np.abs(a - b)) <= 1e-5


def test_prefix_segments_equal_a_custom_dense_mask():
    """ChatGLM's form: each segment's prefix is bidirectional, the rest causal."""
    segment_ids = np.asarray([[1, 1, 1, 1, 2, 2, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1, 0, 0, 0, 0]])
    prefixes = [3, 2, 4]
    layout = SegmentLayout.from_segment_ids(segment_ids, prefixes)
    keep = np.zeros((2, 1, 10, 10), dtype=bool)
    keep[:, 0, np.arange(10), np.arange(10)] = True
    for (row, start, stop), prefix in zip([(0, 0, 4), (0, 4, 9), (1, 0, 6)], prefixes, strict=True):
        n = stop - start
        block = np.tril(np.ones((n, n), dtype=bool))
        block[:, :prefix] = True
        keep[row, 0, start:stop, start:stop] = block
    assert np.array_equal(layout.keep_mask(), keep)
    tensors = _inputs(2, 10, seed=3)
    weight = paddle.to_tensor(
        np.random.default_rng(4).standard_normal((2, 10, HEADS, HEAD_DIM)).astype("float32")
    )
    dense, dense_grads = _values_and_grads(lambda q, k, v: _dense(q, k, v, keep), tensors, weight)
    mine, my_grads = _values_and_grads(
        lambda q, k, v: segment_attention(q, k, v, layout), tensors, weight
    )
    assert np.max(np.abs(dense - mine)) <= 1e-5
    for a, b in zip(dense_grads, my_grads, strict=True):
        assert np.max(np.abs(a - b)) <= 1e-5


def test_layout_costs_and_cumulative_lengths():
    layout = SegmentLayout.from_segment_ids(np.asarray([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 1, 1]]))
    assert [(s.row, s.start, s.stop) for s in layout.segments] == [(0, 0, 3), (0, 3, 5), (1, 0, 6)]
    assert layout.cost == 9 + 4 + 36 and layout.dense_cost == 2 * 36
    assert layout.cumulative_lengths().tolist() == [0, 3, 5, 6, 12]
    assert [(a, b, s is None) for a, b, s in layout.runs(0)] == [
        (0, 3, False),
        (3, 5, False),
        (5, 6, True),
    ]


def test_a_segment_split_in_two_runs_is_refused():
    with pytest.raises(ValueError, match="segment 1 of row 0 is not contiguous"):
        SegmentLayout.from_segment_ids(np.asarray([[1, 1, 2, 1]]))


def test_the_layout_must_match_the_queries():
    layout = SegmentLayout.from_segment_ids(np.asarray([[1, 1, 1]]))
    q, k, v = _inputs(1, 4)
    with pytest.raises(ValueError, match="segment layout is"):
        segment_attention(q, k, v, layout)


def test_replaced_swaps_an_instance_attribute_and_restores_it():
    class Core(paddle.nn.Layer):
        def attend(self):
            return "class"

    a, b, other = Core(), Core(), Core()
    with replaced([a, b], "attend", lambda layer: lambda: f"segments {id(layer) == id(a)}"):
        assert a.attend() == "segments True" and b.attend() == "segments False"
        assert other.attend() == "class"
        with replaced([a], "attend", lambda layer: lambda: "inner"):
            assert a.attend() == "inner"
        assert a.attend() == "segments True"
    assert a.attend() == b.attend() == "class" and "attend" not in a.__dict__
