"""The toolkit's decoding loop on Qwen-VL: the key/value cache changes nothing, left padding
changes nothing, stop tokens stop, and beam search finds what an exhaustive search finds."""

from __future__ import annotations

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from mixcore.kit.collation import left_pad
from mixcore.kit.generation import CausalLMStep, GenerationConfig, generate


def _generate(model, tokenizer, prompts, images, steps, *, stop=(), beams=1):
    padded = left_pad(prompts, tokenizer.pad_token_id)
    embeds = model.embed_inputs(paddle.to_tensor(padded.input_ids), images)
    config = GenerationConfig(
        max_new_tokens=steps, stop_ids=tuple(stop), num_beams=beams, vocab_size=len(tokenizer)
    )
    return generate(CausalLMStep(model.llm), embeds, padded.attention_mask, config)


def _last_logits(model, tokens, images, vocab):
    out = model(paddle.to_tensor([tokens]), images=images, use_cache=False, return_dict=True)
    return out.logits[0, -1, :vocab]


def _greedy_without_cache(model, prompt, images, steps, vocab):
    """Reference: rerun the whole sequence (image included) for every new token."""
    tokens = list(prompt)
    for _ in range(steps):
        tokens.append(int(paddle.argmax(_last_logits(model, tokens, images, vocab))))
    return tokens[len(prompt) :]


def test_greedy_with_cache_equals_greedy_without(model, image_prompt, make_images, tokenizer):
    prompt = image_prompt()
    images = make_images(1, seed=3)
    generated = _generate(model, tokenizer, [prompt], images, 8)
    assert generated == [_greedy_without_cache(model, prompt, images, 8, len(tokenizer))]


@pytest.mark.parametrize("beams", [1, 3])
def test_left_padded_batch_matches_each_prompt_alone(
    model, image_prompt, make_images, tokenizer, beams
):
    short = image_prompt(after=" Red?")
    long = image_prompt(after=" What shape is in the picture, and what colour is it?")
    images = paddle.concat([make_images(1, seed=4), make_images(1, seed=5)])
    batched = _generate(model, tokenizer, [short, long], images, 6, beams=beams)
    for row, (prompt, image) in enumerate(
        zip((short, long), (images[:1], images[1:]), strict=True)
    ):
        alone = _generate(model, tokenizer, [prompt], image, 6, beams=beams)
        assert batched[row] == alone[0]


def test_a_stop_token_ends_the_answer_before_it(model, image_prompt, make_images, tokenizer):
    prompt = image_prompt()
    images = make_images(1, seed=3)
    first, second = _generate(model, tokenizer, [prompt], images, 2)[0]
    assert _generate(model, tokenizer, [prompt], images, 10, stop=[first]) == [[]]
    assert _generate(model, tokenizer, [prompt], images, 10, stop=[second]) == [[first]]


@pytest.mark.parametrize("steps", [0, 1])
def test_short_budgets(model, image_prompt, make_images, tokenizer, steps) -> None:
    out = _generate(model, tokenizer, [image_prompt()], make_images(1), steps)
    assert len(out[0]) == steps


def test_beam_search_finds_the_best_two_token_answer_among_its_first_choices(
    model, image_prompt, make_images, tokenizer
):
    # With one live beam at the start, beam search keeps the top-k first tokens and then picks
    # the best pair among all their continuations: exactly this exhaustive search.
    prompt, images, vocab, k = image_prompt(), make_images(1, seed=7), len(tokenizer), 4
    first = F.log_softmax(_last_logits(model, prompt, images, vocab)).numpy()
    best, best_score = None, -np.inf
    for t1 in np.argsort(-first)[:k]:
        second = F.log_softmax(_last_logits(model, [*prompt, int(t1)], images, vocab)).numpy()
        t2 = int(np.argmax(second))
        if first[t1] + second[t2] > best_score:
            best, best_score = [int(t1), t2], first[t1] + second[t2]
    assert _generate(model, tokenizer, [prompt], images, 2, beams=k) == [best]
    greedy = _generate(model, tokenizer, [prompt], images, 2)[0]
    greedy_score = (
        first[greedy[0]]
        + F.log_softmax(_last_logits(model, [*prompt, greedy[0]], images, vocab)).numpy()[greedy[1]]
    )
    assert best_score >= greedy_score - 1e-6


def test_beam_search_prefers_a_finished_answer_that_scores_better(
    model, image_prompt, make_images, tokenizer
):
    # Declare the greedy first token a stop token: the one-step empty answer competes with
    # every longer one, and beam search returns whichever scores best after length penalty.
    prompt, images = image_prompt(), make_images(1, seed=8)
    first = _generate(model, tokenizer, [prompt], images, 1)[0][0]
    answer = _generate(model, tokenizer, [prompt], images, 5, stop=[first], beams=3)[0]
    assert first not in answer
    assert len(answer) in (0, 5)
