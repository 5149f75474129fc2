"""The blip2 plugin through the registry: presets, default freezing, how samples are spelt for
OPT and T5, Hugging Face folders found by model_type, and the commands users run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from mixcore.api.constants import IGNORE_INDEX, MODEL_RECORD_KEY
from mixcore.api.errors import DataError
from mixcore.api.records import IMAGE_PLACEHOLDER, Message, Sample
from mixcore.registry import build_registry
from mixcore.testing import run_cli


@pytest.fixture(scope="module")
def registry():
    return build_registry()


def _load(registry, family, **options):
    return registry.hook.load_model(
        model_name="blip2",
        source="blip2/tiny",
        options={"random_init": True, "language_model": family, **options},
    )


@pytest.fixture
def picture(tmp_path):
    path = tmp_path / "red.png"
    Image.new("RGB", (40, 40), (220, 30, 30)).save(path)
    return path


def _vqa(picture, answer="red"):
    return Sample(
        [Message("user", f"{IMAGE_PLACEHOLDER}\nWhat colour?"), Message("assistant", answer)],
        [picture],
        index=7,
        source="data.json",
    )


def test_vision_and_language_model_are_frozen_by_default(registry):
    bundle = _load(registry, "opt")
    trainable = {n for n, p in bundle.model.named_parameters() if not p.stop_gradient}
    assert trainable, "the Q-Former and the projection train"
    assert all(
        n.startswith(("qformer.", "query_tokens", "language_projection.")) for n in trainable
    )
    assert any(n.startswith("language_projection.") for n in trainable)
    everything = _load(registry, "opt", frozen=[])
    assert all(not p.stop_gradient for p in everything.model.parameters())


def test_opt_sample_starts_with_the_query_placeholders_and_trains_the_answer(registry, picture):
    bundle = _load(registry, "opt")
    config, tokenizer = bundle.model.config, bundle.tokenizer
    features = registry.hook.preprocess_sample(
        model_name="blip2", sample=_vqa(picture), bundle=bundle, max_length=64
    )
    ids, labels = features["input_ids"], features["labels"]
    n = config.num_query_tokens
    assert list(ids[:n]) == [config.image_token_index] * n
    assert ids[n] == tokenizer.bos_token_id
    text = tokenizer.decode(ids[n + 1 :].tolist())
    assert text == "Question: What colour? Answer: red\n"
    trained = [int(t) for t in labels if t != IGNORE_INDEX]
    assert tokenizer.decode(trained) == " red\n"
    assert features["images"].shape == (1, 3, 56, 56)


def test_t5_sample_puts_the_answer_in_the_decoder(registry, picture):
    bundle = _load(registry, "t5")
    config, tokenizer = bundle.model.config, bundle.tokenizer
    features = registry.hook.preprocess_sample(
        model_name="blip2", sample=_vqa(picture), bundle=bundle, max_length=64
    )
    n = config.num_query_tokens
    ids = features["input_ids"]
    assert list(ids[:n]) == [config.image_token_index] * n
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids[n:-1].tolist()) == "Question: What colour? Answer:"
    decoder, labels = features["decoder_input_ids"], features["labels"]
    assert decoder[0] == tokenizer.pad_token_id  # T5's decoder start
    assert list(labels[:-1]) == list(decoder[1:]) and labels[-1] == IGNORE_INDEX
    assert tokenizer.decode(decoder[1:-1].tolist()) == "red"
    assert decoder[-1] == tokenizer.eos_token_id
    batch = registry.hook.collate_batch(
        model_name="blip2", features=[features, features], bundle=bundle
    )
    assert set(batch) >= {"decoder_input_ids", "decoder_attention_mask", "labels", "images"}
    assert batch["labels"].shape == batch["decoder_input_ids"].shape


def test_two_images_in_a_sample_name_the_record(registry, picture):
    bundle = _load(registry, "opt")
    sample = Sample(
        [
            Message("user", f"{IMAGE_PLACEHOLDER}{IMAGE_PLACEHOLDER} Same?"),
            Message("assistant", "y"),
        ],
        [picture, picture],
        index=3,
        source="pairs.json",
    )
    with pytest.raises(DataError, match="one image per sample") as err:
        registry.hook.preprocess_sample(
            model_name="blip2", sample=sample, bundle=bundle, max_length=64
        )
    assert "pairs.json" in str(err.value) and "3" in str(err.value)


def test_hugging_face_folder_is_found_by_model_type_and_answers(registry, picture, tmp_path):
    """A folder in the published layout, without mixcore's record, loads by model_type."""
    bundle = _load(registry, "opt")
    folder = tmp_path / "hf-blip2"
    registry.hook.save_model(model_name="blip2", bundle=bundle, folder=str(folder))
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "blip-2"
    assert config["architectures"] == ["Blip2ForConditionalGeneration"]
    config.pop(MODEL_RECORD_KEY)
    (folder / "config.json").write_text(json.dumps(config))
    assert registry.resolve_model(str(folder)).name == "blip2"
    data = tmp_path / "q.json"
    shutil.copy(picture, tmp_path / "q.png")
    data.write_text(
        json.dumps(
            [
                {
                    "messages": [
                        {"role": "user", "content": "<image>What colour?"},
                        {"role": "assistant", "content": "red"},
                    ],
                    "images": ["q.png"],
                }
            ]
        )
    )
    answers = tmp_path / "answers.jsonl"
    argv = ["infer", "--model", str(folder), "--data", str(data), "--max-new-tokens", "4"]
    result = run_cli([*argv, "--num-beams", "2", "--output", str(answers)], entry_points=True)
    assert result.exit_code == 0, result.stderr
    lines = answers.read_text().splitlines()
    predictions = [json.loads(line) for line in lines]
    assert len(predictions) == 1 and predictions[0]["reference"] == "red"


def test_plugins_list_shows_the_working_capabilities():
    result = run_cli(["plugins", "list", "--json"], entry_points=True)
    assert result.exit_code == 0, result.stderr
    models = {m["name"]: m for m in json.loads(result.stdout)["models"]}
    capabilities = models["blip2"]["capabilities"]
    assert {k for k, v in capabilities.items() if v} >= {"inference", "sft", "lora", "pretrain"}


def test_pretraining_lowers_all_three_losses(registry, tmp_path):
    import paddle

    from mixcore.kit.collation import to_tensors

    bundle = registry.hook.load_model(
        model_name="blip2",
        source="blip2/tiny",
        options={"random_init": True, "task": "pretrain", "frozen": []},
    )
    colours = {
        "red": (220, 30, 30),
        "blue": (30, 30, 220),
        "green": (30, 200, 30),
        "yellow": (230, 220, 30),
    }
    samples = []
    for i, (name, rgb) in enumerate(colours.items()):
        path = tmp_path / f"{name}.png"
        Image.new("RGB", (40, 40), rgb).save(path)
        samples.append(
            Sample(
                [
                    Message("user", f"{IMAGE_PLACEHOLDER}\nDescribe."),
                    Message("assistant", f"a {name} picture"),
                ],
                [path],
                index=i,
            )
        )
    features = [
        registry.hook.preprocess_sample(model_name="blip2", sample=s, bundle=bundle, max_length=32)
        for s in samples
    ]
    batch = to_tensors(
        registry.hook.collate_batch(model_name="blip2", features=features, bundle=bundle)
    )
    model = bundle.model
    paddle.seed(0)
    optimizer = paddle.optimizer.AdamW(learning_rate=3e-3, parameters=model.parameters())
    history = []
    for _ in range(60):
        out = model(**batch)
        history.append({k: float(v) for k, v in out.loss_terms.items()})
        out.loss.backward()
        optimizer.step()
        optimizer.clear_grad()
    first, last = history[0], history[-1]
    assert set(first) == {"itc", "itm", "itg"}
    for name in first:
        assert last[name] < first[name], f"{name}: {first[name]:.3f} -> {last[name]:.3f}"
    assert np.isfinite(list(last.values())).all()


def test_option_problems_are_reported_before_anything_loads(registry, tmp_path):
    def problems(source, **options):
        found = registry.hook.check_model_options(
            model_name="blip2", source=source, options=options
        )
        return found or []

    assert problems("blip2/tiny", random_init=True, language_model="t5") == []
    assert "not opt" in " ".join(problems("blip2/tiny-t5", random_init=True, language_model="opt"))
    assert "random_init" in " ".join(problems("blip2/tiny"))
    assert "never downloads" in " ".join(problems("Salesforce/blip2-opt-2.7b"))
    assert "not supported yet" in " ".join(problems("blip2-opt-2.7b", task="pretrain"))
    stage1 = tmp_path / "stage1"
    stage1.mkdir()
    (stage1 / "config.json").write_text(
        json.dumps({"model_type": "blip-2", "architectures": ["Blip2QFormerPretraining"]})
    )
    assert "task is fixed" in " ".join(problems(str(stage1), task="generation"))
    assert problems(str(stage1)) == []


def test_stage_two_starts_from_a_stage_one_folder(registry, tmp_path):
    stage1 = registry.hook.load_model(
        model_name="blip2",
        source="blip2/tiny",
        options={"random_init": True, "task": "pretrain", "frozen": []},
    )
    folder = tmp_path / "stage1"
    registry.hook.save_model(model_name="blip2", bundle=stage1, folder=str(folder))
    options = {"random_init": True, "qformer_from": str(folder)}
    assert (
        registry.hook.check_model_options(model_name="blip2", source="blip2/tiny", options=options)
        == []
    )
    stage2 = registry.hook.load_model(model_name="blip2", source="blip2/tiny", options=options)
    before = stage1.model.state_dict()
    after = stage2.model.state_dict()
    carried = [
        n for n in after if n == "query_tokens" or n.startswith(("qformer.", "vision_model."))
    ]
    assert carried and all(np.array_equal(after[n].numpy(), before[n].numpy()) for n in carried)
    assert "language_projection.weight" in after  # the rest is stage 2's own
    wrong = registry.hook.check_model_options(
        model_name="blip2", source="blip2/tiny", options={**options, "qformer_from": str(tmp_path)}
    )
    assert "not a stage-1 BLIP-2 folder" in " ".join(wrong)


@pytest.mark.parametrize("family", ["opt", "t5"])
def test_truncation_keeps_the_image_and_fits_max_length(registry, picture, family):
    bundle = _load(registry, family)
    long_answer = "a red circle on the left " * 6
    sample = _vqa(picture, answer=long_answer.strip())
    n = bundle.model.config.num_query_tokens
    features = registry.hook.preprocess_sample(
        model_name="blip2", sample=sample, bundle=bundle, max_length=n + 12
    )
    total = len(features["input_ids"]) + len(features.get("decoder_input_ids", ()))
    assert total <= n + 12
    assert list(features["input_ids"][:n]) == [bundle.model.config.image_token_index] * n
    assert any(label != IGNORE_INDEX for label in features["labels"])
    with pytest.raises(DataError, match="max_length"):
        registry.hook.preprocess_sample(
            model_name="blip2", sample=sample, bundle=bundle, max_length=n
        )
