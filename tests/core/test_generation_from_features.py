"""kit.generation.generate_from_features: prompts as preprocessed features, padded on the left,
embedded with their images in reading order, decoded by the kit's loop."""

from __future__ import annotations

import numpy as np
import paddle

from mixcore.kit.generation import GenerationConfig, generate_from_features

VOCAB = 8


class CountingStep:
    """A language model that always answers token ``(number of real prompt tokens) % VOCAB``
    and then counts up; it records what it was given."""

    def __init__(self) -> None:
        self.masks: list[np.ndarray] = []

    def prefill(self, inputs_embeds, attention_mask, position_ids):
        self.masks.append(attention_mask.numpy())
        real = attention_mask.sum(axis=-1)
        return paddle.nn.functional.one_hot(real % VOCAB, VOCAB), None

    def advance(self, token_ids, cache, attention_mask, position_ids):
        return paddle.nn.functional.one_hot((token_ids[:, 0] + 1) % VOCAB, VOCAB), None

    def reorder(self, cache, rows):
        return cache


def features(ids, images=None):
    f = {"input_ids": np.asarray(ids, dtype=np.int64)}
    if images is not None:
        f["images"] = np.asarray(images, dtype=np.float32)
    return f


def test_prompts_are_left_padded_and_images_joined_in_reading_order():
    seen = {}

    def embed(input_ids, images):
        seen["ids"] = input_ids.numpy()
        seen["images"] = None if images is None else images.numpy()
        return paddle.zeros([*input_ids.shape, 4])

    step = CountingStep()
    batch = [
        features([5, 6, 7], images=np.full((1, 3, 2, 2), 1.0)),
        features([5]),
        features([5, 6], images=np.full((2, 3, 2, 2), 2.0)),
    ]
    config = GenerationConfig(max_new_tokens=3)
    new = generate_from_features(step, embed, batch, 0, config, image_dtype="float64")
    assert seen["ids"].tolist() == [[5, 6, 7], [0, 0, 5], [0, 5, 6]]
    assert step.masks[0].tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]
    assert seen["images"].dtype == np.float64
    assert seen["images"][:, 0, 0, 0].tolist() == [1.0, 2.0, 2.0]
    assert new == [[3, 4, 5], [1, 2, 3], [2, 3, 4]]


def test_images_are_none_when_no_prompt_has_one_and_stop_tokens_end_answers():
    seen = {}

    def embed(input_ids, images):
        seen["images"] = images
        return paddle.zeros([*input_ids.shape, 4])

    empty = np.zeros((0, 3, 2, 2), dtype=np.float32)  # what an image-less prompt's key holds
    batch = [features([1, 2], images=empty), features([1, 2, 3, 4])]
    config = GenerationConfig(max_new_tokens=4, stop_ids=(6,))
    assert generate_from_features(CountingStep(), embed, batch, 0, config) == [[2, 3, 4, 5], [4, 5]]
    assert seen["images"] is None
