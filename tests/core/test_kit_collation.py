"""The toolkit's batches: right padding, packed masks, images, and left padding for prompts."""

from __future__ import annotations

import numpy as np
import pytest

from mixcore.api import IGNORE_INDEX
from mixcore.kit.collation import left_pad, pad_batch
from mixcore.kit.packing import pack_features


def features(ids, images=0, size=2):
    return {
        "input_ids": np.asarray(ids, dtype=np.int64),
        "labels": np.asarray([*ids[1:], IGNORE_INDEX], dtype=np.int64),
        "images": np.full((images, 3, size, size), len(ids), dtype=np.float32),
    }


def test_right_padding_pads_ids_labels_and_mask():
    batch = pad_batch([features([1, 2, 3]), features([4])], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert batch["labels"].tolist() == [[2, 3, IGNORE_INDEX], [IGNORE_INDEX] * 3]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert "images" not in batch  # no sample has an image


def test_images_concatenate_in_reading_order_with_counts():
    batch = pad_batch(
        [features([1, 2], images=2), features([3]), features([4, 5, 6], images=1)],
        pad_id=0,
        image_counts="image_counts",
    )
    assert batch["images"].shape == (3, 3, 2, 2)
    assert batch["images"][:, 0, 0, 0].tolist() == [2, 2, 3]
    assert batch["image_counts"].tolist() == [2, 0, 1]


def test_stacked_images_need_one_per_sample():
    batch = pad_batch([features([1], images=1), features([2, 3], images=1)], 0, images="stack")
    assert batch["images"].shape == (2, 3, 2, 2)
    with pytest.raises(ValueError, match="one image per sample"):
        pad_batch([features([1], images=2), features([2], images=1)], 0, images="stack")


def test_packed_features_get_a_block_diagonal_mask_and_their_own_positions():
    pack = pack_features([features([1, 2]), features([3, 4, 5])])
    batch = pad_batch([pack, pack_features([features([6])])], pad_id=0)
    mask = batch["attention_mask"]
    assert mask.shape == (2, 1, 5, 5) and mask.dtype == bool
    # Token 2 (the second sample's first) sees only itself; token 4 sees 2..4.
    assert mask[0, 0, 2].tolist() == [False, False, True, False, False]
    assert mask[0, 0, 4].tolist() == [False, False, True, True, True]
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1, 2], [0, 0, 0, 0, 0]]
    # Padding attends to itself only, so no softmax row is empty.
    assert mask[1, 0, 3].tolist() == [False, False, False, True, False]


def test_packed_features_keep_their_segment_ids_for_attention_per_segment():
    pack = pack_features([features([1, 2]), features([3, 4, 5])])
    batch = pad_batch([pack, pack_features([features([6])])], 0, packed_attention="segments")
    assert batch["segment_ids"].tolist() == [[1, 1, 2, 2, 2], [1, 0, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1, 2], [0, 0, 0, 0, 0]]
    # Unpacked batches are the same either way; an unknown form is refused.
    plain = [features([1, 2]), features([3])]
    assert pad_batch(plain, 0, packed_attention="segments").keys() == pad_batch(plain, 0).keys()
    with pytest.raises(ValueError, match="packed_attention must be"):
        pad_batch([pack], 0, packed_attention="dense")


def test_a_key_of_varying_shape_is_left_to_the_plugin():
    odd = [
        {**features([1]), "boxes": np.zeros((1, 4))},
        {**features([2]), "boxes": np.zeros((2, 4))},
    ]
    with pytest.raises(ValueError, match="'boxes' has different shapes"):
        pad_batch(odd, pad_id=0)


def test_left_padding_aligns_the_last_tokens():
    padded = left_pad([[7, 8, 9], [5]], pad_id=0)
    assert padded.input_ids.tolist() == [[7, 8, 9], [0, 0, 5]]
    assert padded.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
