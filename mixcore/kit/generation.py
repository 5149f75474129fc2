"""Text generation for vision-language models: a key/value-cache loop over a causal language
model whose prompt arrives as embeddings (text embeddings with image features written in).

Greedy decoding (``num_beams=1``) and beam search, batched over left-padded prompts, stopping
at any of ``stop_ids`` or after ``max_new_tokens``. The loop talks to the model only through a
:class:`DecodeStep`, so a model whose language model wants other inputs (ChatGLM's 2-row
position ids, say) supplies its own step and reuses the rest. :func:`generate_from_features`
is a model's whole ``generate`` hook but for turning ids into text: prompts encoded as training
samples are, left-padded, embedded with their images, decoded; :func:`generate_text` adds a
PaddleNLP tokenizer's settings and the decoding to text. Paddle is imported only when a
function runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from mixcore.kit.collation import left_pad

__all__ = [
    "CausalLMStep",
    "DecodeStep",
    "GenerationConfig",
    "evaluating",
    "generate",
    "generate_from_features",
    "generate_text",
    "trim_at_stop",
]


@dataclass(frozen=True)
class GenerationConfig:
    """How to decode. ``vocab_size`` keeps ids the tokenizer cannot decode (embedding tables
    are usually padded beyond the vocabulary) from being chosen; ``length_penalty`` divides a
    finished beam's summed log-probability by ``length ** length_penalty``."""

    max_new_tokens: int = 32
    stop_ids: tuple[int, ...] = ()
    num_beams: int = 1
    vocab_size: int | None = None
    length_penalty: float = 1.0


class DecodeStep(Protocol):
    """One forward pass of the language model, with its key/value cache.

    ``prefill`` runs the prompt (embeddings ``[rows, len, hidden]``, 2-D padding mask, position
    ids) and ``advance`` one new token per row (ids ``[rows, 1]``, the mask over everything so
    far, the new positions); both return ``(logits of the last position [rows, vocab], cache)``.
    ``reorder`` picks cache rows (beam search keeps the best beams)."""

    def prefill(
        self, inputs_embeds: Any, attention_mask: Any, position_ids: Any
    ) -> tuple[Any, Any]: ...

    def advance(
        self, token_ids: Any, cache: Any, attention_mask: Any, position_ids: Any
    ) -> tuple[Any, Any]: ...

    def reorder(self, cache: Any, rows: Any) -> Any: ...


class CausalLMStep:
    """:class:`DecodeStep` for a PaddleNLP causal LM (QWen, LLaMA, OPT, ...) that accepts
    ``inputs_embeds``, ``past_key_values`` and ``use_cache``. Position ids are always passed:
    PaddleNLP's QWen otherwise rotates a cached step as if it were position 0. ``batch_axis``
    is the axis of the cache tensors that indexes rows."""

    def __init__(self, language_model: Any, *, batch_axis: int = 0) -> None:
        self.language_model = language_model
        self.batch_axis = batch_axis

    def prefill(
        self, inputs_embeds: Any, attention_mask: Any, position_ids: Any
    ) -> tuple[Any, Any]:
        out = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            return_dict=True,
        )
        return out.logits[:, -1, :], out.past_key_values

    def advance(
        self, token_ids: Any, cache: Any, attention_mask: Any, position_ids: Any
    ) -> tuple[Any, Any]:
        out = self.language_model(
            input_ids=token_ids,
            past_key_values=cache,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            return_dict=True,
        )
        return out.logits[:, -1, :], out.past_key_values

    def reorder(self, cache: Any, rows: Any) -> Any:
        import paddle

        if isinstance(cache, paddle.Tensor):
            return paddle.index_select(cache, rows, axis=self.batch_axis)
        if isinstance(cache, (list, tuple)):
            return type(cache)(self.reorder(part, rows) for part in cache)
        return cache


def generate(
    step: DecodeStep, inputs_embeds: Any, attention_mask: Any, config: GenerationConfig
) -> list[list[int]]:
    """New token ids for each prompt (its stop token and anything after it left out).

    ``inputs_embeds`` ``[batch, len, hidden]`` and ``attention_mask`` ``[batch, len]`` (1 = real
    token) hold left-padded prompts, as :func:`mixcore.kit.collation.left_pad` makes them.
    """
    import paddle

    mask = paddle.to_tensor(attention_mask).astype("int64")
    with paddle.no_grad():
        if config.num_beams <= 1:
            return _greedy(step, inputs_embeds, mask, config)
        return _beam_search(step, inputs_embeds, mask, config)


@contextlib.contextmanager
def evaluating(model: Any) -> Iterator[None]:
    """Run the block with ``model`` in evaluation mode (no dropout), then restore its mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def generate_from_features(
    step: DecodeStep,
    embed: Callable[[Any, Any], Any],
    features: Sequence[Mapping[str, Any]],
    pad_id: int,
    config: GenerationConfig,
    *,
    image_key: str = "images",
    image_dtype: str | None = None,
) -> list[list[int]]:
    """New token ids for prompts given as features, as a model's ``preprocess_sample`` makes
    them (so prompts are encoded exactly as training samples are).

    The prompts' ``input_ids`` are left-padded with ``pad_id``
    (:func:`mixcore.kit.collation.left_pad`); ``embed(input_ids, images)`` turns the padded ids
    (a Paddle tensor) into embeddings with the images written in, where ``images`` are the
    prompts' ``image_key`` arrays concatenated in reading order (cast to ``image_dtype`` when
    given) or None when no prompt has one; :func:`generate` decodes.
    """
    import paddle

    padded = left_pad([f["input_ids"] for f in features], pad_id)
    arrays = [np.asarray(f[image_key]) for f in features if len(f.get(image_key, ()))]
    images = paddle.to_tensor(np.concatenate(arrays)) if arrays else None
    if images is not None and image_dtype is not None:
        images = images.astype(image_dtype)
    with paddle.no_grad():
        embeds = embed(paddle.to_tensor(padded.input_ids), images)
        return generate(step, embeds, padded.attention_mask, config)


def generate_text(
    step: DecodeStep,
    embed: Callable[[Any, Any], Any],
    features: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    max_new_tokens: int,
    *,
    stop_ids: Sequence[int] | None = None,
    num_beams: int = 1,
    image_dtype: str | None = None,
) -> list[str]:
    """Answers as text: :func:`generate_from_features` with a PaddleNLP tokenizer's settings
    (its pad id, its vocabulary size as the limit of what may be chosen, and ``stop_ids``,
    default its end-of-sequence token), each answer decoded without special tokens and
    stripped of surrounding white space."""
    stops = tuple(stop_ids) if stop_ids is not None else (tokenizer.eos_token_id,)
    config = GenerationConfig(max_new_tokens, stops, num_beams, vocab_size=len(tokenizer))
    pad_id = tokenizer.pad_token_id
    new = generate_from_features(step, embed, features, pad_id, config, image_dtype=image_dtype)
    return [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in new]


def _positions(mask: Any) -> Any:
    import paddle

    return paddle.clip(paddle.cumsum(mask, axis=-1) - 1, min=0)


def _greedy(step: DecodeStep, embeds: Any, mask: Any, config: GenerationConfig) -> list[list[int]]:
    import paddle

    rows = int(embeds.shape[0])
    positions = _positions(mask)
    logits, cache = step.prefill(embeds, mask, positions)
    next_position = positions[:, -1:] + 1
    stops = paddle.to_tensor(list(config.stop_ids) or [-1], dtype="int64")
    finished = paddle.zeros([rows], dtype="bool")
    generated: list[Any] = []
    for n in range(config.max_new_tokens):
        if config.vocab_size is not None:
            logits = logits[:, : config.vocab_size]
        token = paddle.argmax(logits, axis=-1).astype("int64")
        generated.append(token)
        finished = paddle.logical_or(finished, (token.unsqueeze(-1) == stops).any(axis=-1))
        if n + 1 == config.max_new_tokens or bool(finished.all()):
            break
        mask = paddle.concat([mask, paddle.ones([rows, 1], dtype="int64")], axis=-1)
        logits, cache = step.advance(token.unsqueeze(-1), cache, mask, next_position)
        next_position = next_position + 1
    if not generated:
        return [[] for _ in range(rows)]
    tokens = paddle.stack(generated, axis=1).numpy()
    return [trim_at_stop(row, config.stop_ids) for row in tokens.tolist()]


def trim_at_stop(tokens: Sequence[int], stop_ids: Sequence[int]) -> list[int]:
    """``tokens`` up to (not including) the first stop token."""
    kept: list[int] = []
    for token in tokens:
        if token in stop_ids:
            break
        kept.append(int(token))
    return kept


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _beam_search(
    step: DecodeStep, embeds: Any, mask: Any, config: GenerationConfig
) -> list[list[int]]:
    """Beam search: each prompt keeps ``num_beams`` running beams; a beam that emits a stop
    token is finished (scored by length-penalised log-probability) and the prompt is done when
    it has ``num_beams`` finished beams that no running beam can beat any more."""
    import paddle

    batch, beams = int(embeds.shape[0]), config.num_beams
    expand = paddle.to_tensor(np.repeat(np.arange(batch), beams), dtype="int64")
    embeds = paddle.index_select(embeds, expand, axis=0)
    mask = paddle.index_select(mask, expand, axis=0)
    positions = _positions(mask)
    logits, cache = step.prefill(embeds, mask, positions)
    next_position = positions[:, -1:] + 1
    # Only the first beam of each prompt is live at the start, so the beams do not all repeat it.
    scores = np.tile(np.array([0.0] + [-np.inf] * (beams - 1)), batch)
    sequences: list[list[int]] = [[] for _ in range(batch * beams)]
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
    done = [False] * batch
    stops = set(config.stop_ids)

    def penalised(score: float, length: int) -> float:
        return score / max(length, 1) ** config.length_penalty

    for n in range(config.max_new_tokens):
        values = logits.astype("float32").numpy()
        if config.vocab_size is not None:
            values = values[:, : config.vocab_size]
        vocab = values.shape[-1]
        candidates = (scores[:, None] + _log_softmax(values)).reshape(batch, beams * vocab)
        new_rows, new_tokens, new_scores = [], [], []
        for b in range(batch):
            if done[b]:  # keep its rows in place; their output is ignored
                new_rows += [b * beams + k for k in range(beams)]
                new_tokens += [next(iter(stops), 0)] * beams
                new_scores += [-np.inf] * beams
                continue
            order = np.argsort(-candidates[b], kind="stable")[: 2 * beams]
            chosen: list[tuple[int, int, float]] = []
            for rank, flat in enumerate(order):
                beam, token = divmod(int(flat), vocab)
                score = float(candidates[b, flat])
                if score == -np.inf:
                    break
                row = b * beams + beam
                if token in stops:
                    if rank < beams:
                        finished[b].append((penalised(score, n + 1), sequences[row]))
                    continue
                chosen.append((row, token, score))
                if len(chosen) == beams:
                    break
            while len(chosen) < beams:  # fewer live candidates than beams (a tiny vocabulary)
                chosen.append(
                    (chosen[0][0], chosen[0][1], -np.inf) if chosen else (b * beams, 0, -np.inf)
                )
            finished[b].sort(key=lambda item: -item[0])
            del finished[b][beams:]
            best_running = max(score for _, _, score in chosen)
            if len(finished[b]) == beams and penalised(best_running, n + 1) <= finished[b][-1][0]:
                done[b] = True
            for row, token, score in chosen:
                new_rows.append(row)
                new_tokens.append(token)
                new_scores.append(score)
        sequences = [
            sequences[row] + [token] for row, token in zip(new_rows, new_tokens, strict=True)
        ]
        scores = np.asarray(new_scores)
        if all(done) or n + 1 == config.max_new_tokens:
            break
        rows = paddle.to_tensor(new_rows, dtype="int64")
        cache = step.reorder(cache, rows)
        mask = paddle.concat(
            [
                paddle.index_select(mask, rows, axis=0),
                paddle.ones([batch * beams, 1], dtype="int64"),
            ],
            axis=-1,
        )
        next_position = paddle.index_select(next_position, rows, axis=0)
        tokens = paddle.to_tensor(new_tokens, dtype="int64").unsqueeze(-1)
        logits, cache = step.advance(tokens, cache, mask, next_position)
        next_position = next_position + 1
    answers = []
    for b in range(batch):
        pool = list(finished[b])
        if not done[b]:
            for k in range(beams):
                row = b * beams + k
                if scores[row] > -np.inf:
                    pool.append(
                        (penalised(float(scores[row]), len(sequences[row])), sequences[row])
                    )
        best = max(pool, key=lambda item: item[0])[1] if pool else []
        answers.append(trim_at_stop(best, config.stop_ids))
    return answers
