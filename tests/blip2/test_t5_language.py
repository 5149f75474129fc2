"""BLIP-2's Flan-T5 language model on PaddleNLP: Hugging Face parity, weights, decoding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import paddle
import pytest
from mixcore_blip2.t5_language import (
    T5Step,
    build_t5,
    hf_t5_state,
    load_t5_weights,
    scales_decoder_outputs,
    t5_forward,
)

from mixcore.kit.checkpoints import building
from mixcore.kit.generation import GenerationConfig, generate
from mixcore.kit.image_features import splice_image_features
from mixcore.kit.weights import (
    CheckpointError,
    WeightMismatchError,
    read_safetensors,
    read_torch_bin,
)

PREFIX = "language_model."
TOLERANCE = 1e-4


def _language_tensors(tensors: dict) -> dict:
    return {k.removeprefix(PREFIX): v for k, v in tensors.items() if k.startswith(PREFIX)}


@pytest.fixture(scope="module")
def reference(hf_blip2_reference: Path) -> dict:
    folder = hf_blip2_reference / "t5"
    config = json.loads((folder / "config.json").read_text())
    return {
        "folder": folder,
        "config": config,
        "text_config": config["text_config"],
        "image_token": config.get("image_token_id", config.get("image_token_index")),
        "tensors": _language_tensors(read_safetensors(folder / "model.safetensors")),
        "npz": dict(np.load(folder / "reference.npz")),
    }


@pytest.fixture(scope="module")
def model(reference: dict):
    model = build_t5(reference["text_config"])
    load_t5_weights(model, reference["tensors"], "reference")
    model.eval()
    return model


def _prompt_embeds(model, reference: dict, input_ids: np.ndarray):
    """The encoder input as BLIP-2 makes it: text embeddings with the projected query
    outputs over the placeholders."""
    ids = paddle.to_tensor(input_ids)
    features = paddle.to_tensor(reference["npz"]["language_model_inputs"])
    queries = int(features.shape[1])
    return splice_image_features(
        model.t5.shared(ids),
        ids,
        features,
        lambda images: images,
        token_id=reference["image_token"],
        tokens_per_image=queries,
    )


def test_logits_match_hugging_face_flan_t5(model, reference):
    npz = reference["npz"]
    with paddle.no_grad():
        embeds = _prompt_embeds(model, reference, npz["input_ids"])
        logits = t5_forward(
            model,
            embeds,
            paddle.to_tensor(npz["attention_mask"]),
            paddle.to_tensor(npz["decoder_input_ids"]),
        )
    difference = float(np.abs(logits.numpy() - npz["logits"]).max())
    assert logits.shape == list(npz["logits"].shape)
    assert difference <= TOLERANCE, f"max abs logit difference {difference:.3g}"


def test_uninitialised_build_then_load_matches_the_reference(reference):
    with building(weights_follow=True):
        model = build_t5(reference["text_config"])
    load_t5_weights(model, reference["tensors"], "reference")
    model.eval()
    npz = reference["npz"]
    decoder_ids = paddle.to_tensor(npz["decoder_input_ids"])
    with paddle.no_grad():
        embeds = _prompt_embeds(model, reference, npz["input_ids"])
        logits = t5_forward(
            model,
            embeds,
            paddle.to_tensor(npz["attention_mask"]),
            decoder_ids,
            decoder_attention_mask=paddle.ones_like(decoder_ids),
        )
    np.testing.assert_allclose(logits.numpy(), npz["logits"], atol=TOLERANCE)


def test_torch_bin_copy_holds_identical_tensors(reference):
    from_bin = read_torch_bin(reference["folder"].parent / "t5-bin" / "pytorch_model.bin")
    language = _language_tensors(from_bin)
    assert language.keys() == reference["tensors"].keys()
    for name, tensor in reference["tensors"].items():
        assert language[name].dtype == tensor.dtype, name
        np.testing.assert_array_equal(language[name].data, tensor.data, err_msg=name)


def test_torch_bin_weights_load_into_the_same_model(model, reference):
    from_bin = read_torch_bin(reference["folder"].parent / "t5-bin" / "pytorch_model.bin")
    other = build_t5(reference["text_config"])
    load_t5_weights(other, _language_tensors(from_bin), "pytorch_model.bin")
    ours, theirs = model.state_dict(), other.state_dict()
    for name in ours:
        np.testing.assert_array_equal(ours[name].numpy(), theirs[name].numpy(), err_msg=name)


def test_checkpoint_without_lm_head_gets_the_embedding_as_head(model, reference):
    assert "lm_head.weight" not in reference["tensors"]
    np.testing.assert_array_equal(
        model.lm_head.weight.numpy(), reference["tensors"]["shared.weight"].data.T
    )


def test_weights_round_trip_to_hugging_face_names(model, reference):
    state = hf_t5_state(model)
    expected = dict(reference["tensors"])
    expected["lm_head.weight"] = expected["shared.weight"]
    assert state.keys() == expected.keys()
    for name, tensor in expected.items():
        np.testing.assert_array_equal(state[name].data, tensor.data, err_msg=name)
    again = build_t5(reference["text_config"])
    load_t5_weights(again, state, "round trip")
    for name, tensor in model.state_dict().items():
        np.testing.assert_array_equal(again.state_dict()[name].numpy(), tensor.numpy())


def test_mismatched_weights_are_named_in_hugging_face_terms(reference):
    tensors = dict(reference["tensors"])
    del tensors["decoder.block.1.layer.1.EncDecAttention.o.weight"]
    tensors["decoder.block.9.layer.0.SelfAttention.q.weight"] = tensors["shared.weight"]
    model = build_t5(reference["text_config"])
    with pytest.raises(WeightMismatchError) as caught:
        load_t5_weights(model, tensors, "broken.safetensors")
    assert caught.value.missing == ["decoder.block.1.layer.1.EncDecAttention.o.weight"]
    assert caught.value.unexpected == ["decoder.block.9.layer.0.SelfAttention.q.weight"]
    assert "broken.safetensors" in str(caught.value)


def test_missing_embedding_is_named_once(reference):
    tensors = {k: v for k, v in reference["tensors"].items() if k != "shared.weight"}
    model = build_t5(reference["text_config"])
    with pytest.raises(WeightMismatchError) as caught:
        load_t5_weights(model, tensors, "no-embedding.safetensors")
    assert caught.value.missing == ["shared.weight", "lm_head.weight"]


def test_embedding_alias_that_differs_is_refused(reference):
    tensors = dict(reference["tensors"])
    tensors["encoder.embed_tokens.weight"] = tensors["decoder.block.0.layer.2.layer_norm.weight"]
    with pytest.raises(CheckpointError, match=r"encoder\.embed_tokens\.weight differs"):
        load_t5_weights(build_t5(reference["text_config"]), tensors, "aliases")


def test_original_t5_config_scales_a_tied_head(model, reference):
    """transformers 4 semantics: ``tie_word_embeddings`` true and no ``scale_decoder_outputs``
    is original T5: the head is the embedding and the decoder output is scaled first."""
    text_config = {
        k: v for k, v in reference["text_config"].items() if k != "scale_decoder_outputs"
    }
    tied = build_t5(text_config)
    assert "lm_head.weight" not in tied.state_dict()
    load_t5_weights(tied, reference["tensors"], "reference")
    tied.eval()
    npz = reference["npz"]
    with paddle.no_grad():
        args = (
            paddle.to_tensor(npz["attention_mask"]),
            paddle.to_tensor(npz["decoder_input_ids"]),
        )
        untied_logits = t5_forward(model, _prompt_embeds(model, reference, npz["input_ids"]), *args)
        tied_logits = t5_forward(tied, _prompt_embeds(tied, reference, npz["input_ids"]), *args)
    scale = reference["text_config"]["d_model"] ** -0.5
    np.testing.assert_allclose(tied_logits.numpy(), untied_logits.numpy() * scale, atol=1e-5)


def test_decoder_output_scaling_follows_hugging_face_config_rules():
    flan_t5_v5 = {"tie_word_embeddings": True, "scale_decoder_outputs": False}  # transformers 5
    assert not scales_decoder_outputs(flan_t5_v5)
    assert not scales_decoder_outputs({"tie_word_embeddings": False})  # Flan-T5 (transformers 4)
    assert scales_decoder_outputs({"tie_word_embeddings": True})  # original T5 (transformers 4)
    assert scales_decoder_outputs({})


def test_unsupported_feed_forward_is_refused():
    with pytest.raises(CheckpointError, match="feed_forward_proj 'gelu'"):
        build_t5({"d_model": 8, "feed_forward_proj": "gelu"})


def _tiny_config(**overrides) -> dict:
    config = {
        "d_model": 16,
        "d_kv": 4,
        "d_ff": 32,
        "num_layers": 1,
        "num_decoder_layers": 1,
        "num_heads": 4,
        "relative_attention_num_buckets": 8,
        "relative_attention_max_distance": 16,
        "feed_forward_proj": "gated-gelu",
        "layer_norm_epsilon": 1e-6,
        "vocab_size": 40,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
        "dropout_rate": 0.0,
        "tie_word_embeddings": False,
    }
    return {**config, **overrides}


def test_random_init_is_deterministic_under_seed():
    paddle.seed(7)
    first = {k: v.numpy() for k, v in build_t5(_tiny_config()).state_dict().items()}
    paddle.seed(7)
    second = {k: v.numpy() for k, v in build_t5(_tiny_config()).state_dict().items()}
    assert first.keys() == second.keys()
    for name, value in first.items():
        np.testing.assert_array_equal(value, second[name], err_msg=name)
    paddle.seed(8)
    third = build_t5(_tiny_config()).state_dict()
    assert not np.array_equal(third["t5.shared.weight"].numpy(), first["t5.shared.weight"])


def test_relu_feed_forward_builds():
    model = build_t5(_tiny_config(feed_forward_proj="relu"))
    assert "t5.encoder.block.0.layer.1.DenseReluDense.wi.weight" in model.state_dict()


# --- decoding -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_model(reference: dict):
    """The reference's architecture, randomly initialised: the reference's own random weights
    answer token 0 at every step, which would prove nothing about the cache."""
    paddle.seed(0)
    model = build_t5(reference["text_config"])
    model.eval()
    return model


def _varied(answers: list[list[int]]) -> bool:
    return len({token for row in answers for token in row}) > 3


class FullRecomputeStep:
    """A DecodeStep without a cache: every step reruns the decoder on the whole prefix."""

    def __init__(self, model) -> None:
        self.model = model

    def _last(self, embeds, mask, prefix):
        logits = t5_forward(self.model, embeds, mask, paddle.to_tensor(prefix, dtype="int64"))
        return logits[:, -1, :]

    def prefill(self, inputs_embeds, attention_mask, position_ids):
        start = self.model.t5.config["decoder_start_token_id"]
        prefix = np.full([int(inputs_embeds.shape[0]), 1], start, dtype="int64")
        cache = (inputs_embeds, attention_mask, prefix)
        return self._last(*cache), cache

    def advance(self, token_ids, cache, attention_mask, position_ids):
        embeds, mask, prefix = cache
        prefix = np.concatenate([prefix, token_ids.numpy()], axis=1)
        return self._last(embeds, mask, prefix), (embeds, mask, prefix)

    def reorder(self, cache, rows):
        embeds, mask, prefix = cache
        picked = rows.numpy()
        return (
            paddle.index_select(embeds, rows, axis=0),
            paddle.index_select(mask, rows, axis=0),
            prefix[picked],
        )


def _no_cache_greedy(model, embeds, mask, steps: int) -> list[list[int]]:
    start = model.t5.config["decoder_start_token_id"]
    prefix = np.full([int(embeds.shape[0]), 1], start, dtype="int64")
    for _ in range(steps):
        logits = t5_forward(model, embeds, mask, paddle.to_tensor(prefix))
        token = logits[:, -1, :].argmax(axis=-1).numpy().reshape(-1, 1)
        prefix = np.concatenate([prefix, token], axis=1)
    return prefix[:, 1:].tolist()


def _left_padded(npz: dict) -> tuple[np.ndarray, np.ndarray]:
    """The reference prompts with their padding moved to the left, as generation pads."""
    ids, mask = npz["input_ids"].copy(), npz["attention_mask"].copy()
    for row in range(ids.shape[0]):
        keep = mask[row] == 1
        n = int(keep.sum())
        ids[row] = np.concatenate([np.zeros(len(keep) - n, ids.dtype), ids[row][keep]])
        mask[row] = np.concatenate([np.zeros(len(keep) - n, mask.dtype), np.ones(n, mask.dtype)])
    return ids, mask


def test_cached_greedy_decoding_equals_full_recompute_argmax(random_model, reference):
    model = random_model
    ids, mask = _left_padded(reference["npz"])
    steps = 8
    with paddle.no_grad():
        embeds = _prompt_embeds(model, reference, ids)
        cached = generate(T5Step(model), embeds, mask, GenerationConfig(max_new_tokens=steps))
        plain = _no_cache_greedy(model, embeds, paddle.to_tensor(mask), steps)
    assert cached == plain
    assert all(len(row) == steps for row in cached)
    assert _varied(cached)


def test_cached_beam_search_equals_beam_search_without_cache(random_model, reference):
    model = random_model
    ids, mask = _left_padded(reference["npz"])
    config = GenerationConfig(max_new_tokens=6, stop_ids=(1,), num_beams=3)
    with paddle.no_grad():
        embeds = _prompt_embeds(model, reference, ids)
        cached = generate(T5Step(model), embeds, mask, config)
        plain = generate(FullRecomputeStep(model), embeds, mask, config)
        greedy = generate(T5Step(model), embeds, mask, GenerationConfig(6, (1,)))
    assert cached == plain
    assert _varied(cached)
    assert cached != greedy  # the beams were reordered, not just the greedy path kept


def test_left_padding_changes_neither_logits_nor_answers(random_model, reference):
    model = random_model
    npz = reference["npz"]
    right_ids, right_mask = npz["input_ids"], npz["attention_mask"]
    left_ids, left_mask = _left_padded(npz)
    assert not np.array_equal(right_mask, left_mask)  # the reference has a padded row
    step = T5Step(model)
    config = GenerationConfig(max_new_tokens=6)
    with paddle.no_grad():
        right = _prompt_embeds(model, reference, right_ids)
        left = _prompt_embeds(model, reference, left_ids)
        right_logits, _ = step.prefill(right, paddle.to_tensor(right_mask), None)
        left_logits, _ = step.prefill(left, paddle.to_tensor(left_mask), None)
        answers_right = generate(step, right, right_mask, config)
        answers_left = generate(step, left, left_mask, config)
    np.testing.assert_allclose(left_logits.numpy(), right_logits.numpy(), atol=1e-5)
    assert answers_left == answers_right
    assert _varied(answers_left)


def test_prefill_logits_are_the_first_decoder_position(model, reference):
    npz = reference["npz"]
    with paddle.no_grad():
        embeds = _prompt_embeds(model, reference, npz["input_ids"])
        logits, _ = T5Step(model).prefill(embeds, paddle.to_tensor(npz["attention_mask"]), None)
    assert int(npz["decoder_input_ids"][0, 0]) == reference["text_config"]["decoder_start_token_id"]
    np.testing.assert_allclose(logits.numpy(), npz["logits"][:, 0, :], atol=TOLERANCE)
