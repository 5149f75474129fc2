"""VisualGLM's ChatGLM-6B language model on PaddleNLP: config, names and weights, ChatGLM's
2-row positions and mask (packed == alone, padded == alone), decoding with the cache."""

from __future__ import annotations

import numpy as np
import paddle
import pytest
from mixcore_visualglm.chatglm_language import (
    TINY_CHATGLM_CONFIG,
    ChatGLMStep,
    batch_inputs,
    build_chatglm,
    chatglm_config,
    chatglm_forward,
    hf_chatglm_name,
    hf_chatglm_state,
    load_chatglm_weights,
    packed_positions_and_layout,
    paddle_chatglm_name,
    prompt_positions_and_mask,
    sample_positions_and_mask,
)

from mixcore.kit.collation import left_pad
from mixcore.kit.generation import GenerationConfig, generate
from mixcore.kit.weights import CheckpointError, StoredTensor, WeightMismatchError

GMASK, SOP, EOP, PAD = 6, 8, 9, 3
CHATGLM_6B = {
    "architectures": ["ChatGLMModel"],
    "bos_token_id": 130004,
    "eos_token_id": 130005,
    "mask_token_id": 130000,
    "gmask_token_id": 130001,
    "pad_token_id": 3,
    "hidden_size": 4096,
    "inner_hidden_size": 16384,
    "layernorm_epsilon": 1e-05,
    "max_sequence_length": 2048,
    "model_type": "chatglm",
    "num_attention_heads": 32,
    "num_layers": 28,
    "position_encoding_2d": True,
    "torch_dtype": "float16",
    "use_cache": True,
    "vocab_size": 130528,
}


@pytest.fixture(scope="module")
def model():
    paddle.seed(7)
    built = build_chatglm(TINY_CHATGLM_CONFIG)
    built.eval()
    # PaddleNLP's initialisation leaves a tiny ChatGLM repeating its last input token whatever
    # the positions; larger matrices make its predictions depend on positions and context.
    rng = np.random.default_rng(0)
    with paddle.no_grad():
        for name, weight in built.named_parameters():
            if weight.ndim == 2 and "word_embeddings" not in name:
                weight.set_value(paddle.to_tensor(rng.normal(0, 1, weight.shape).astype("float32")))
    return built


def _sample(rng, context: int, answer: int) -> list[int]:
    return [*rng.integers(20, 1000, context).tolist(), GMASK, SOP, *rng.integers(20, 1000, answer)]


def _logits_alone(model, ids):
    positions, keep = sample_positions_and_mask(ids, GMASK, SOP)
    embeds = model.chatglm.transformer.word_embeddings(paddle.to_tensor([ids]))
    return chatglm_forward(model, embeds, keep[None, None], positions[None]).numpy()[0]


def test_config_maps_chatglm_6b_keys():
    config = chatglm_config(CHATGLM_6B)
    assert config.num_hidden_layers == 28
    assert (config.hidden_size, config.inner_hidden_size, config.vocab_size) == (
        4096,
        16384,
        130528,
    )
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (130004, 130005, 3)
    assert (config.mask_token_id, config.gmask_token_id) == (130000, 130001)
    assert config.position_encoding_2d and config.max_sequence_length == 2048


def test_tiny_model_head_is_the_word_embeddings(model):
    assert model.lm_head.decoder_weight is model.chatglm.transformer.word_embeddings.weight
    assert model.config.num_hidden_layers == 2


def test_sample_positions_follow_chatglm():
    ids = [11, 12, 13, GMASK, SOP, 21, 22, EOP]
    positions, keep = sample_positions_and_mask(ids, GMASK, SOP)
    assert positions.tolist() == [[0, 1, 2, 3, 3, 3, 3, 3], [0, 0, 0, 0, 1, 2, 3, 4]]
    context = 4  # everything before <sop>
    assert keep[:, :context].all()  # the context is seen by everyone
    assert not keep[:context, context:].any()  # ... and sees nothing of the answer
    assert (keep[context:, context:] == np.tril(np.ones((4, 4), dtype=bool))).all()


def test_sample_positions_equal_paddlenlp_tokenizer_padding(tmp_path):
    from mixcore_visualglm.tokenization import load_tokenizer, write_tiny_chatglm_tokenizer
    from paddlenlp.transformers.tokenizer_utils_base import PaddingStrategy

    tokenizer = load_tokenizer(write_tiny_chatglm_tokenizer(tmp_path))
    ids = tokenizer.build_inputs_with_special_tokens([40, 41, 42], [50, 51])
    encoded = tokenizer._pad({"input_ids": ids}, len(ids), PaddingStrategy.MAX_LENGTH)
    positions, keep = sample_positions_and_mask(ids, GMASK, SOP)
    assert (encoded["position_ids"] == positions).all()
    assert (encoded["attention_mask"][0].astype(bool) == keep).all()


def test_inputs_embeds_give_the_logits_of_input_ids(model):
    ids = _sample(np.random.default_rng(0), 5, 4)
    positions, keep = sample_positions_and_mask(ids, GMASK, SOP)
    from_ids = model(
        input_ids=paddle.to_tensor([ids]),
        attention_mask=paddle.to_tensor(keep[None, None]),
        position_ids=paddle.to_tensor(positions[None]),
        return_dict=True,
    ).logits.numpy()[0]
    np.testing.assert_array_equal(_logits_alone(model, ids), from_ids)


def _token_losses(logits: np.ndarray, ids: list[int]) -> np.ndarray:
    shifted = logits[:-1] - logits[:-1].max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return -log_probs[np.arange(len(ids) - 1), ids[1:]]


def test_packed_samples_equal_samples_alone(model):
    rng = np.random.default_rng(1)
    first, second = _sample(rng, 4, 3), _sample(rng, 6, 2)
    batch = batch_inputs([[first, second]], PAD, GMASK, SOP)
    assert batch.segment_ids.tolist() == [[1] * len(first) + [2] * len(second)]
    embeds = model.chatglm.transformer.word_embeddings(paddle.to_tensor(batch.input_ids))
    packed = chatglm_forward(model, embeds, batch.keep, batch.position_ids).numpy()[0]
    for start, ids in ((0, first), (len(first), second)):
        alone = _logits_alone(model, ids)
        together = packed[start : start + len(ids)]
        np.testing.assert_allclose(together, alone, atol=1e-5)
        np.testing.assert_allclose(
            _token_losses(together, ids), _token_losses(alone, ids), atol=1e-5
        )


def test_attention_per_segment_equals_the_dense_mask(model):
    """Packed rows (one padded) through the segment layout: ChatGLM's own mask block by block
    (bidirectional context, causal answer), the same logits and gradients as the dense mask."""
    rng = np.random.default_rng(3)
    rows = [[_sample(rng, 4, 3), _sample(rng, 6, 2)], [_sample(rng, 2, 5)], [[20, 21, 22]]]
    batch = batch_inputs(rows, PAD, GMASK, SOP)
    positions, layout = packed_positions_and_layout(batch.input_ids, batch.segment_ids, GMASK, SOP)
    assert np.array_equal(positions, batch.position_ids)
    assert np.array_equal(layout.keep_mask(), batch.keep)
    assert [s.prefix for s in layout.segments] == [5, 7, 3, 3]  # no <sop>: all context
    ids = paddle.to_tensor(batch.input_ids)
    real = batch.segment_ids > 0
    results = []
    for keep in (batch.keep, layout):
        model.clear_gradients()
        logits = chatglm_forward(
            model, model.chatglm.transformer.word_embeddings(ids), keep, positions
        )
        (logits * paddle.to_tensor(real[..., None].astype("float32"))).sum().backward()
        grads = {
            n: p.grad.numpy().copy() for n, p in model.named_parameters() if p.grad is not None
        }
        results.append((logits.numpy()[real], grads))
    model.clear_gradients()
    (dense, dense_grads), (mine, my_grads) = results
    # This fixture's weights are N(0, 1), so logits and gradients run into the thousands: compare
    # relative to each tensor's largest value (float32 rounding, summed in another order).
    assert np.abs(mine - dense).max() <= 1e-5 * np.abs(dense).max()
    assert dense_grads.keys() == my_grads.keys()
    for name, grad in dense_grads.items():
        assert np.abs(my_grads[name] - grad).max() <= 1e-4 * max(1.0, np.abs(grad).max()), name


def test_right_padded_batch_equals_samples_alone(model):
    rng = np.random.default_rng(2)
    samples = [_sample(rng, 3, 2), _sample(rng, 7, 4), _sample(rng, 2, 1)]
    batch = batch_inputs(samples, PAD, GMASK, SOP)
    assert (batch.input_ids[2, len(samples[2]) :] == PAD).all()
    embeds = model.chatglm.transformer.word_embeddings(paddle.to_tensor(batch.input_ids))
    logits = chatglm_forward(model, embeds, batch.keep, batch.position_ids).numpy()
    assert np.isfinite(logits).all()
    for row, ids in enumerate(samples):
        np.testing.assert_allclose(logits[row, : len(ids)], _logits_alone(model, ids), atol=1e-5)


def test_left_padded_prompts_equal_prompts_alone(model):
    rng = np.random.default_rng(3)
    prompts = [_sample(rng, 5, 0), _sample(rng, 2, 0)]
    padded = left_pad(prompts, PAD)
    positions, keep = prompt_positions_and_mask(padded.attention_mask)
    embeds = model.chatglm.transformer.word_embeddings(paddle.to_tensor(padded.input_ids))
    logits = chatglm_forward(model, embeds, keep, positions).numpy()
    for row, ids in enumerate(prompts):
        np.testing.assert_allclose(logits[row, -len(ids) :], _logits_alone(model, ids), atol=1e-5)


# --- decoding ------------------------------------------------------------------------------


class _NoCacheStep:
    """Reruns each row's whole sequence alone (from ids, unpadded) at every step."""

    def __init__(self, model, prompts):
        self.model, self.prompts = model, prompts

    def _last_logits(self, rows):
        return paddle.to_tensor(np.stack([_logits_alone(self.model, ids)[-1] for ids in rows]))

    def prefill(self, inputs_embeds, attention_mask, position_ids):
        rows = int(inputs_embeds.shape[0])
        per_prompt = rows // len(self.prompts)
        sequences = [list(self.prompts[r // per_prompt]) for r in range(rows)]
        return self._last_logits(sequences), sequences

    def advance(self, token_ids, cache, attention_mask, position_ids):
        sequences = [[*ids, int(t)] for ids, t in zip(cache, token_ids.numpy()[:, 0], strict=True)]
        return self._last_logits(sequences), sequences

    def reorder(self, cache, rows):
        return [list(cache[int(r)]) for r in rows.numpy()]


def _prompt_embeds(model, prompts):
    padded = left_pad(prompts, PAD)
    embeds = model.chatglm.transformer.word_embeddings(paddle.to_tensor(padded.input_ids))
    return embeds, padded.attention_mask


@pytest.mark.parametrize("num_beams", [1, 3])
def test_cached_decoding_equals_rerunning_the_prefix(model, num_beams):
    rng = np.random.default_rng(4)
    prompts = [_sample(rng, 6, 0), _sample(rng, 3, 0)]
    embeds, mask = _prompt_embeds(model, prompts)
    config = GenerationConfig(max_new_tokens=6, stop_ids=(EOP,), num_beams=num_beams)
    cached = generate(ChatGLMStep(model), embeds, mask, config)
    reference = generate(_NoCacheStep(model, prompts), embeds, mask, config)
    assert cached == reference
    assert all(len(answer) > 0 for answer in cached)
    assert len({token for answer in cached for token in answer}) > 3  # not one token repeated


def test_each_cached_step_has_the_logits_of_the_whole_prefix(model):
    rng = np.random.default_rng(7)
    prompts = [_sample(rng, 5, 0), _sample(rng, 2, 0)]
    embeds, mask = _prompt_embeds(model, prompts)
    step = ChatGLMStep(model)
    with paddle.no_grad():
        logits, cache = step.prefill(embeds, paddle.to_tensor(mask), None)
        sequences = [list(p) for p in prompts]
        mask = paddle.to_tensor(mask)
        for _ in range(4):
            expected = np.stack([_logits_alone(model, ids)[-1] for ids in sequences])
            np.testing.assert_allclose(logits.numpy(), expected, atol=1e-5)
            tokens = [int(t) for t in rng.integers(20, 1000, len(prompts))]
            position = paddle.to_tensor([[len(ids)] for ids in sequences], dtype="int64")
            sequences = [[*ids, t] for ids, t in zip(sequences, tokens, strict=True)]
            mask = paddle.concat([mask, paddle.ones([len(prompts), 1], dtype="int64")], axis=-1)
            token_ids = paddle.to_tensor([[t] for t in tokens], dtype="int64")
            logits, cache = step.advance(token_ids, cache, mask, position)


def test_greedy_decoding_equals_an_argmax_loop(model):
    prompt = _sample(np.random.default_rng(5), 4, 0)
    embeds, mask = _prompt_embeds(model, [prompt])
    cached = generate(ChatGLMStep(model), embeds, mask, GenerationConfig(max_new_tokens=5))
    ids = list(prompt)
    for _ in range(5):
        ids.append(int(_logits_alone(model, ids)[-1].argmax()))
    assert cached == [ids[len(prompt) :]]


# --- names and weights ---------------------------------------------------------------------


def test_names_map_both_ways(model):
    for name in model.state_dict():
        hf = hf_chatglm_name(name)
        assert paddle_chatglm_name(hf) == name
    assert paddle_chatglm_name("transformer.layers.0.attention.query_key_value.weight") == (
        "chatglm.transformer.layers.0.attention.query_key_value.weight"
    )
    assert paddle_chatglm_name("lm_head.weight") == "lm_head.decoder_weight"
    assert paddle_chatglm_name("something.else") is None


def test_hf_state_has_chatglm_6b_names_and_shapes(model):
    state = hf_chatglm_state(model)
    hidden, inner = TINY_CHATGLM_CONFIG["hidden_size"], TINY_CHATGLM_CONFIG["inner_hidden_size"]
    assert state["transformer.layers.1.attention.query_key_value.weight"].shape == (
        3 * hidden,
        hidden,
    )
    assert state["transformer.layers.0.mlp.dense_h_to_4h.weight"].shape == (inner, hidden)
    assert state["transformer.layers.0.mlp.dense_4h_to_h.weight"].shape == (hidden, inner)
    assert state["transformer.final_layernorm.weight"].shape == (hidden,)
    np.testing.assert_array_equal(
        state["lm_head.weight"].data, state["transformer.word_embeddings.weight"].data
    )


def test_weights_round_trip(model):
    state = hf_chatglm_state(model)
    state["transformer.layers.0.attention.rotary_emb.inv_freq"] = StoredTensor(
        np.ones(4, dtype=np.float32), "F32"
    )
    paddle.seed(8)
    other = build_chatglm(TINY_CHATGLM_CONFIG)
    other.eval()
    load_chatglm_weights(other, state)
    ids = _sample(np.random.default_rng(6), 4, 3)
    np.testing.assert_array_equal(_logits_alone(other, ids), _logits_alone(model, ids))
    assert other.lm_head.decoder_weight is other.chatglm.transformer.word_embeddings.weight


def test_loading_refuses_missing_and_untied_weights(model):
    state = hf_chatglm_state(model)
    other = build_chatglm(TINY_CHATGLM_CONFIG)
    partial = {k: v for k, v in state.items() if "layers.1.mlp" not in k}
    with pytest.raises(WeightMismatchError, match=r"transformer\.layers\.1\.mlp"):
        load_chatglm_weights(other, partial)
    untied = dict(state)
    untied["lm_head.weight"] = StoredTensor(state["lm_head.weight"].data * 2, "F32")
    with pytest.raises(CheckpointError, match="ties them"):
        load_chatglm_weights(other, untied)
