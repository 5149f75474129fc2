"""The Qwen-VL model: shapes, where image features go, masks for packing, components."""

from __future__ import annotations

import numpy as np
import paddle
import pytest
from mixcore_qwen_vl.configuration import config_from_preset
from mixcore_qwen_vl.modeling import (
    COMPONENTS,
    QwenVLForConditionalGeneration,
    component_of,
    component_pattern,
    resize_positional_table,
    sincos_2d_positions,
)

from mixcore.kit.image_features import ImageTokenMismatchError


def _ids(rows):
    return paddle.to_tensor(rows, dtype="int64")


def test_forward_shapes_and_loss(model, config, image_prompt, make_images) -> None:
    prompt = image_prompt()
    input_ids = _ids([prompt, prompt])
    labels = _ids([[-100] * (len(prompt) - 1) + [prompt[-1]]] * 2)

    out = model(input_ids, images=make_images(2), labels=labels, return_dict=True)

    assert out.logits.shape == [2, len(prompt), config.vocab_size]
    assert out.loss.shape == []
    assert np.isfinite(float(out.loss))
    features = model.visual(make_images(3))
    assert features.shape == [3, config.n_queries, config.hidden_size]


def test_tuple_output_follows_paddlenlp(model, image_prompt, make_images) -> None:
    prompt = image_prompt()
    labels = _ids([[-100] * (len(prompt) - 1) + [prompt[-1]]])
    loss, logits = model(_ids([prompt]), images=make_images(1), labels=labels, use_cache=False)
    assert loss.shape == [] and logits.shape[1] == len(prompt)


def test_image_changes_logits_only_after_the_image(model, image_prompt, make_images) -> None:
    prompt = image_prompt()
    first_pad = prompt.index(model.config.image_pad_id)
    input_ids = _ids([prompt])

    a = model(input_ids, images=make_images(1, seed=1), return_dict=True).logits.numpy()
    b = model(input_ids, images=make_images(1, seed=2), return_dict=True).logits.numpy()

    np.testing.assert_allclose(a[0, :first_pad], b[0, :first_pad], atol=1e-6)
    last_text = np.abs(a[0, -1] - b[0, -1]).max()
    assert last_text > 1e-3


def test_images_fill_spans_in_reading_order(model, image_prompt, make_images) -> None:
    prompt = image_prompt()
    first, second = make_images(1, seed=1), make_images(1, seed=2)
    input_ids = _ids([prompt, prompt])

    forward = model(input_ids, images=paddle.concat([first, second]), return_dict=True).logits
    swapped = model(input_ids, images=paddle.concat([second, first]), return_dict=True).logits

    np.testing.assert_allclose(forward[0].numpy(), swapped[1].numpy(), atol=1e-5)
    np.testing.assert_allclose(forward[1].numpy(), swapped[0].numpy(), atol=1e-5)


def test_two_images_in_one_sample(model, image_prompt, make_images) -> None:
    prompt = image_prompt(images=2)
    out = model(_ids([prompt]), images=make_images(2), return_dict=True)
    assert out.logits.shape[1] == len(prompt)


@pytest.mark.parametrize(
    ("spans", "images", "truncate"),
    [(2, 1, 0), (1, 2, 0), (0, 1, 0), (1, 0, 0), (1, 1, 3)],
    ids=["too-few-images", "too-many-images", "image-without-span", "span-without-image", "cut"],
)
def test_pad_count_mismatch_is_a_clear_error(
    model, image_prompt, make_images, spans, images, truncate
) -> None:
    prompt = image_prompt(images=spans, after="")
    if truncate:
        prompt = prompt[: -(truncate + 1)]
    with pytest.raises(
        ImageTokenMismatchError, match=r"image placeholder tokens .* image\(s\) need"
    ):
        model(_ids([prompt]), images=make_images(images) if images else None)


def test_tiny_preset_has_a_few_hundred_thousand_parameters(model) -> None:
    count = sum(int(p.size) for p in model.parameters())
    assert 150_000 <= count <= 500_000, count


def test_components_partition_the_parameters(model) -> None:
    groups = model.named_parameters_by_component()
    names = [name for name, _ in model.named_parameters()]
    grouped = [name for members in groups.values() for name, _ in members]
    assert sorted(grouped) == sorted(names)
    assert all(component_of(n) != "vision" for n in names if n.startswith("visual.attn_pool."))
    assert component_of("visual.transformer.resblocks.0.attn.in_proj.weight") == "vision"
    assert component_of("visual.proj") == "adapter"
    assert component_of("llm.qwen.h.0.attn.c_attn.weight") == "language_model"
    assert set(groups) == set(COMPONENTS)
    import re

    assert re.match(component_pattern("adapter"), "visual.ln_post.weight")
    assert not re.match(component_pattern("adapter"), "visual.ln_pre.weight")


def test_language_model_keeps_paddlenlp_names(model) -> None:
    names = {name for name, _ in model.named_sublayers()}
    assert {"llm.qwen.h.0.attn.c_attn", "llm.qwen.h.1.mlp.w2", "llm.lm_head"} <= names


def test_gradients_reach_vision_tower_and_queries(model, image_prompt, make_images) -> None:
    model.train()
    prompt = image_prompt()
    labels = _ids([[-100] * (len(prompt) - 1) + [prompt[-1]]])
    out = model(_ids([prompt]), images=make_images(1), labels=labels, return_dict=True)
    out.loss.backward()
    assert float(model.visual.conv1.weight.grad.abs().sum()) > 0
    assert float(model.visual.attn_pool.query.grad.abs().sum()) > 0
    assert model.visual.attn_pool.pos_embed.stop_gradient  # a fixed table, not a weight


def test_positional_table_is_resized_bicubically() -> None:
    table = paddle.to_tensor(np.random.default_rng(0).standard_normal((256, 8)).astype("float32"))
    assert resize_positional_table(table, 256) is table
    small = resize_positional_table(table, 16)
    assert small.shape == [16, 8]
    constant = paddle.full([256, 8], 0.25)
    np.testing.assert_allclose(resize_positional_table(constant, 36).numpy(), 0.25, atol=1e-6)
    # A ramp along the columns: bicubic reproduces it away from the borders, sampled at pixel
    # centres (align_corners=False, as PyTorch's resize in Hugging Face Qwen-VL).
    ramp = np.tile(np.arange(16, dtype="float32"), (16, 1)).reshape(256, 1)
    resized = resize_positional_table(paddle.to_tensor(ramp), 64).numpy().reshape(8, 8)
    expected = np.broadcast_to(np.arange(2.5, 13.0, 2.0, dtype="float32"), (8, 6))
    np.testing.assert_allclose(resized[:, 1:-1], expected, atol=1e-5)
    with pytest.raises(ValueError, match="square"):
        resize_positional_table(table, 15)


def test_vision_tower_accepts_other_image_sizes(model, make_images, config) -> None:
    # 84 px -> a 6x6 patch grid: the 256-row table and the resampler's key positions are resized.
    features = model.visual(make_images(2, size=84))
    assert features.shape == [2, config.n_queries, config.hidden_size]


def test_sincos_positions_layout() -> None:
    table = sincos_2d_positions(16, 4)
    assert table.shape == (16, 16)
    # Position (row 0, column 0): sines are 0, cosines 1.
    np.testing.assert_allclose(table[0], [0, 0, 0, 0, 1, 1, 1, 1] * 2, atol=1e-7)
    # First half encodes the column, second half the row (Hugging Face's order).
    row0_col1, row1_col0 = table[1], table[4]
    np.testing.assert_allclose(row0_col1[8:], table[0, 8:], atol=1e-7)
    np.testing.assert_allclose(row1_col0[:8], table[0, :8], atol=1e-7)
    assert np.isclose(row0_col1[0], np.sin(1.0))


def test_block_diagonal_4d_mask_isolates_packed_samples(model, tokenizer) -> None:
    first = tokenizer("What colour is the square?")["input_ids"]
    second = tokenizer("The circle is red.")["input_ids"]
    n1, n2 = len(first), len(second)
    total = n1 + n2
    mask = np.zeros((1, 1, total, total), dtype=bool)
    mask[0, 0, :n1, :n1] = np.tril(np.ones((n1, n1), dtype=bool))
    mask[0, 0, n1:, n1:] = np.tril(np.ones((n2, n2), dtype=bool))
    position_ids = _ids([list(range(n1)) + list(range(n2))])

    packed = model(
        _ids([first + second]),
        attention_mask=paddle.to_tensor(mask),
        position_ids=position_ids,
        return_dict=True,
    ).logits.numpy()
    alone_1 = model(_ids([first]), return_dict=True).logits.numpy()
    alone_2 = model(_ids([second]), return_dict=True).logits.numpy()

    np.testing.assert_allclose(packed[0, :n1], alone_1[0], atol=1e-5)
    np.testing.assert_allclose(packed[0, n1:], alone_2[0], atol=1e-5)


def test_same_seed_builds_the_same_model() -> None:
    config = config_from_preset("qwen_vl/tiny")
    paddle.seed(7)
    a = QwenVLForConditionalGeneration(config)
    paddle.seed(7)
    b = QwenVLForConditionalGeneration(config)
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        np.testing.assert_array_equal(pa.numpy(), pb.numpy(), err_msg=name)
