"""The tiny LLaVA example's model facts, checked in this process on the installed package:
encoding, packing, generation through the kit with PaddleNLP's LLaMA, saving and loading."""

from __future__ import annotations

import json
import re

import numpy as np
import paddle
import pytest

from mixcore.api import IGNORE_INDEX, Message, PluginError, Sample
from mixcore.kit.collation import pad_batch, to_tensors
from mixcore.kit.generation import CausalLMStep, GenerationConfig, generate_from_features
from mixcore.kit.packing import pack_features
from mixcore.testing import make_registry

PRESET = "tiny_llava/tiny"
RED, GREEN, BLUE = (220, 30, 30), (30, 160, 50), (30, 70, 220)


@pytest.fixture
def bundle(tiny_llava):
    paddle.seed(3)
    loaded = tiny_llava.load(PRESET, {"random_init": True})
    loaded.model.eval()
    return loaded


def qa(picture, name, colour, question, answer=None):
    messages = [Message("user", f"<image>{question}")]
    if answer is not None:
        messages.append(Message("assistant", answer))
    return Sample(messages, images=[picture(name, colour)], source="test", index=0)


def test_a_sample_is_bos_prompt_image_run_reply_eos_with_pre_shifted_labels(
    tiny_llava, bundle, picture
):
    sample = qa(picture, "red", RED, "What color is the shape?", "red")
    features = tiny_llava.encode(sample, bundle, 128)
    ids, labels = features["input_ids"].tolist(), features["labels"].tolist()
    config, tokenizer = bundle.model.config, bundle.tokenizer
    assert ids[0] == tokenizer.bos_token_id
    assert ids.count(config.image_token_id) == config.image_tokens == 16
    assert features["images"].shape == (1, 3, 32, 32)
    assert tokenizer.decode(ids, skip_special_tokens=True) == (
        "USER: What color is the shape? ASSISTANT: red"
    )
    assert ids[-1] == tokenizer.eos_token_id
    trained = [t for t, label in enumerate(labels) if label != IGNORE_INDEX]
    assert all(labels[t] == ids[t + 1] for t in trained)  # labels[t] is the target of position t
    assert tokenizer.convert_ids_to_tokens([labels[t] for t in trained]) == ["▁red", "</s>"]
    assert labels[-1] == IGNORE_INDEX
    assert tiny_llava.length(sample, bundle) == len(ids)


def test_packed_samples_give_the_loss_and_logits_of_the_same_samples_unpacked(
    tiny_llava, bundle, picture
):
    samples = [
        qa(picture, "red", RED, "What color is the shape?", "red"),
        qa(picture, "green", GREEN, "Is the shape small or large?", "a large green one"),
        qa(picture, "blue", BLUE, "Where is it?", "left"),
    ]
    features = [tiny_llava.encode(s, bundle, 128) for s in samples]
    unpacked = to_tensors(tiny_llava.collate(features, bundle))
    packed = to_tensors(tiny_llava.collate([pack_features(features)], bundle))
    length = packed["input_ids"].shape[1]
    # The model attends per segment: segment ids, no [len, len] block-diagonal mask.
    assert packed["segment_ids"].shape == packed["attention_mask"].shape == [1, length]
    with paddle.no_grad():
        separate, together = bundle.model(**unpacked), bundle.model(**packed)
    assert abs(float(separate.loss) - float(together.loss)) <= 1e-5
    start = 0
    for row, f in enumerate(features):
        n = len(f["input_ids"])
        alone = separate.logits[row, :n].numpy()
        assert np.abs(alone - together.logits[0, start : start + n].numpy()).max() <= 1e-4
        start += n


def greedy_without_cache(model, ids, images, steps, vocab):
    ids = list(ids)
    for _ in range(steps):
        with paddle.no_grad():
            logits = model(paddle.to_tensor([ids]), images=images).logits[0, -1]
        ids.append(int(paddle.argmax(logits[:vocab])))
    return ids[-steps:]


def test_kit_generation_with_llamas_cache_matches_recomputing_each_step_and_prompts_alone(
    tiny_llava, bundle, picture
):
    prompts = [
        qa(picture, "red", RED, "What color is the shape?"),
        Sample([Message("user", "Describe the image.")], source="test", index=1),
    ]
    features = [tiny_llava.encode(p, bundle, 128) for p in prompts]
    model, vocab = bundle.model, len(bundle.tokenizer)
    config = GenerationConfig(max_new_tokens=5, vocab_size=vocab)

    def run(batch):
        step = CausalLMStep(model.language_model)
        return generate_from_features(step, model.embed_inputs, batch, 3, config)

    together = run(features)
    assert together == run(features[:1]) + run(features[1:])
    images = paddle.to_tensor(features[0]["images"])
    assert together[0] == greedy_without_cache(model, features[0]["input_ids"], images, 5, vocab)
    answers = tiny_llava.answer(bundle, prompts, 5)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def test_a_saved_folder_resolves_to_the_model_and_loads_back_identical(
    tiny_llava, bundle, picture, tmp_path
):
    folder = tmp_path / "saved"
    assert tiny_llava.save(bundle, str(folder)) == str(folder)
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= names
    assert {"sentencepiece.bpe.model", "tokenizer_config.json", "added_tokens.json"} <= names
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "tiny_llava" and config["torch_dtype"] == "float32"
    # who wrote it: the model, and the installed distribution holding the model's class
    assert config["mixcore"] == {"plugin": "tiny_llava", "model": "tiny_llava", "version": "0.1.0"}
    registry = make_registry(("tiny_llava", tiny_llava))
    assert registry.resolve_model(str(folder)).name == "tiny_llava"
    loaded = tiny_llava.load(str(folder), {})
    loaded.model.eval()
    sample = qa(picture, "red", RED, "What color is the shape?", "red")
    batch = to_tensors(pad_batch([tiny_llava.encode(sample, loaded, 128)], 3))
    with paddle.no_grad():
        a, b = bundle.model(**batch).logits.numpy(), loaded.model(**batch).logits.numpy()
    assert np.array_equal(a, b)
    assert loaded.tokenizer.get_vocab() == bundle.tokenizer.get_vocab()


def test_the_preset_is_the_same_model_and_tokenizer_for_the_same_seed(tiny_llava):
    def build():
        paddle.seed(9)
        return tiny_llava.load(PRESET, {"random_init": True})

    a, b = build(), build()
    assert all(
        np.array_equal(x.numpy(), y.numpy())
        for x, y in zip(a.model.parameters(), b.model.parameters(), strict=True)
    )
    assert a.tokenizer.get_vocab() == b.tokenizer.get_vocab()


def test_lora_targets_name_the_four_attention_projections_of_each_llama_layer(tiny_llava, bundle):
    layers = [n for n, _ in bundle.model.named_sublayers()]
    targets = tiny_llava.lora_targets(bundle)
    matched = [n for n in layers if any(re.fullmatch(t, n) for t in targets)]
    assert len(matched) == 2 * 4
    assert all(n.startswith("language_model.llama.layers.") for n in matched)


def test_the_preset_needs_random_init_and_other_names_are_refused(tiny_llava):
    registry = make_registry(("tiny_llava", tiny_llava))
    problems = registry.hook.check_model_options(model_name="tiny_llava", source=PRESET, options={})
    assert problems and "random_init" in problems[0]
    with pytest.raises(PluginError, match="random_init"):
        tiny_llava.load(PRESET, {})
    with pytest.raises(PluginError, match="checkpoint folder"):
        tiny_llava.load("tiny_llava/huge", {"random_init": True})
