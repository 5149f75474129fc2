"""Greedy decoding with the key/value cache gives exactly what recomputing everything gives."""

from __future__ import annotations

import paddle
import pytest


def _greedy_without_cache(model, prompt, images, steps, vocab):
    """Reference: rerun the whole sequence (image included) for every new token."""
    tokens = list(prompt)
    for _ in range(steps):
        logits = model(
            paddle.to_tensor([tokens]), images=images, use_cache=False, return_dict=True
        ).logits
        tokens.append(int(paddle.argmax(logits[0, -1, :vocab])))
    return tokens[len(prompt) :]


def test_greedy_with_cache_equals_greedy_without(model, image_prompt, make_images, tokenizer):
    prompt = image_prompt()
    images = make_images(1, seed=3)
    generated = model.generate_greedy(
        paddle.to_tensor([prompt]), images, max_new_tokens=8, tokenizer_vocab_size=len(tokenizer)
    )
    expected = _greedy_without_cache(model, prompt, images, 8, len(tokenizer))
    assert generated.numpy().tolist() == [expected]


def test_left_padded_batch_matches_each_prompt_alone(model, image_prompt, make_images, tokenizer):
    short = image_prompt(after=" Red?")
    long = image_prompt(after=" What shape is in the picture, and what colour is it?")
    images = paddle.concat([make_images(1, seed=4), make_images(1, seed=5)])
    width = max(len(short), len(long))
    pad = tokenizer.pad_token_id
    rows = [[pad] * (width - len(p)) + p for p in (short, long)]
    mask = [[0] * (width - len(p)) + [1] * len(p) for p in (short, long)]

    batched = model.generate_greedy(
        paddle.to_tensor(rows),
        images,
        max_new_tokens=6,
        attention_mask=paddle.to_tensor(mask),
        tokenizer_vocab_size=len(tokenizer),
    ).numpy()

    for row, (prompt, image) in enumerate(
        zip((short, long), (images[:1], images[1:]), strict=True)
    ):
        alone = model.generate_greedy(
            paddle.to_tensor([prompt]), image, max_new_tokens=6, tokenizer_vocab_size=len(tokenizer)
        ).numpy()
        assert batched[row].tolist() == alone[0].tolist()


def test_eos_stops_generation_and_pads_finished_rows(model, image_prompt, make_images, tokenizer):
    prompt = image_prompt()
    images = make_images(1, seed=3)
    first = int(model.generate_greedy(paddle.to_tensor([prompt]), images, max_new_tokens=1)[0, 0])
    # Declaring the first greedy token to be end-of-sequence ends decoding right there.
    stopped = model.generate_greedy(
        paddle.to_tensor([prompt]), images, max_new_tokens=10, eos_token_id=first
    )
    assert stopped.numpy().tolist() == [[first]]


@pytest.mark.parametrize("steps", [0, 1])
def test_short_budgets(model, image_prompt, make_images, steps) -> None:
    out = model.generate_greedy(
        paddle.to_tensor([image_prompt()]), make_images(1), max_new_tokens=steps
    )
    assert out.shape == [1, steps]


def test_generation_restores_training_mode(model, image_prompt, make_images) -> None:
    model.train()
    model.generate_greedy(paddle.to_tensor([image_prompt()]), make_images(1), max_new_tokens=2)
    assert model.training
