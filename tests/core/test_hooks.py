"""Every hook in mixcore/api/hookspecs.py is called here through a real plugin manager.

Dispatch hooks stop at the first non-None result, plugins return None for names they do not own,
the core's defaults run last, and wrappers can adjust another plugin's result.
"""

from __future__ import annotations

from pathlib import Path

from mixcore import hookimpl
from mixcore.api import ParallelPlan
from mixcore.api.records import IMAGE_PLACEHOLDER, Message, ModelBundle, Sample
from mixcore.testing import make_plugin, make_registry


def test_register_models_and_register_datasets_receive_a_register_callable():
    calls = []

    @hookimpl
    def register_models(register):
        calls.append("models")
        register(name="m", description="d")

    @hookimpl
    def register_datasets(register):
        calls.append("datasets")
        register(name="ds", description="d")

    registry = make_registry(make_plugin("p", register_models, register_datasets))
    assert calls == ["models", "datasets"]
    assert list(registry.models) == ["m"] and list(registry.datasets) == ["ds"]


def test_check_model_options_answers_for_the_owning_model_and_is_routed_to_it():
    @hookimpl
    def register_models(register):
        register(name="m", description="d", aliases=["m/tiny"])

    @hookimpl
    def check_model_options(model_name, source, options):
        if model_name != "m":
            return None
        if source == "m/tiny" and not options.get("random_init"):
            return ["m/tiny has no weights; set random_init: true"]
        return []

    @hookimpl
    def answers_everything(model_name, source, options):
        return ["a plugin that answers for every name"]

    registry = make_registry(
        make_plugin("owner", register_models, check_model_options),
        make_plugin("greedy", check_model_options=answers_everything),
    )
    check = registry.hook.check_model_options
    assert check(model_name="m", source="m/tiny", options={}) == [
        "m/tiny has no weights; set random_init: true"
    ]
    # An empty list is an answer ("fine"): the greedy plugin, called first by pluggy, is not
    # reached for a model another plugin registered.
    assert check(model_name="m", source="m/tiny", options={"random_init": True}) == []
    assert check(model_name="nobody", source="", options={}) == [
        "a plugin that answers for every name"
    ]
    assert make_registry().hook.check_model_options(model_name="m", source="", options={}) is None


def test_load_model_stops_at_the_plugin_that_owns_the_name():
    @hookimpl
    def load_model(model_name, source, options):
        if model_name != "alpha":
            return None
        return ModelBundle(name=model_name, model=f"model from {source}", tokenizer=options)

    @hookimpl
    def load_model_other(model_name, source, options):
        return (
            ModelBundle(name="beta", model=None, tokenizer=None) if model_name == "beta" else None
        )

    registry = make_registry(
        make_plugin("a", load_model), make_plugin("b", load_model=load_model_other)
    )
    bundle = registry.hook.load_model(model_name="alpha", source="/ckpt", options={"x": 1})
    assert bundle.model == "model from /ckpt" and bundle.tokenizer == {"x": 1}
    assert registry.hook.load_model(model_name="beta", source="", options={}).name == "beta"
    assert registry.hook.load_model(model_name="gamma", source="", options={}) is None


def test_preprocess_sample_gets_the_sample_and_budget():
    @hookimpl
    def preprocess_sample(model_name, sample, bundle, max_length):
        text = " ".join(m.content for m in sample.messages)
        return {"input_ids": list(range(min(len(text), max_length))), "where": sample.where()}

    registry = make_registry(make_plugin("p", preprocess_sample))
    sample = Sample(
        [Message("user", f"{IMAGE_PLACEHOLDER}hi"), Message("assistant", "yo")],
        images=[Path("a.png")],
        source="train.json",
        index=3,
    )
    bundle = ModelBundle(name="m", model=None, tokenizer=None)
    features = registry.hook.preprocess_sample(
        model_name="m", sample=sample, bundle=bundle, max_length=4
    )
    assert features["input_ids"] == [0, 1, 2, 3] and features["where"] == "train.json record 3"


def test_sample_length_has_no_default_and_plugins_answer_for_their_model():
    @hookimpl
    def sample_length(model_name, sample, bundle):
        if model_name != "m":
            return None
        return sum(len(m.content) for m in sample.messages)

    registry = make_registry(make_plugin("p", sample_length))
    sample = Sample([Message("user", "hi"), Message("assistant", "yo")])
    bundle = ModelBundle(name="m", model=None, tokenizer=None)
    assert registry.hook.sample_length(model_name="m", sample=sample, bundle=bundle) == 4
    # Another model's samples are not this plugin's to measure; the core then preprocesses.
    assert registry.hook.sample_length(model_name="other", sample=sample, bundle=bundle) is None


def test_collate_batch_plugin_result_wins_over_core_default():
    @hookimpl
    def collate_batch(model_name, features, bundle):
        return {"custom": len(features)} if model_name == "mine" else None

    registry = make_registry(make_plugin("p", collate_batch))
    bundle = ModelBundle(name="mine", model=None, tokenizer=None)
    assert registry.hook.collate_batch(model_name="mine", features=[{}, {}], bundle=bundle) == {
        "custom": 2
    }


def test_collate_batch_core_default_pads_when_no_plugin_answers():

    class Tokenizer:
        pad_token_id = 7

    registry = make_registry()
    bundle = ModelBundle(name="any", model=None, tokenizer=Tokenizer())
    batch = registry.hook.collate_batch(
        model_name="any",
        features=[
            {"input_ids": [1, 2, 3], "labels": [-100, 2, 3], "pixel_values": [[0.5]]},
            {"input_ids": [4], "labels": [4], "pixel_values": [[1.5]]},
        ],
        bundle=bundle,
    )
    # Numpy arrays: collators run in loader workers, where Paddle tensors are unsafe to create.
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 7, 7]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["pixel_values"].shape == (2, 1, 1)


def test_lora_target_modules_and_wrapper_adjusting_another_plugins_result():
    @hookimpl
    def lora_target_modules(model_name, bundle):
        return [".*attn.*"] if model_name == "m" else None

    @hookimpl(wrapper=True)
    def lora_target_modules_wrapper(model_name, bundle):
        result = yield
        return [*result, ".*mlp.*"] if result else result

    registry = make_registry(
        make_plugin("owner", lora_target_modules),
        make_plugin("extender", lora_target_modules=lora_target_modules_wrapper),
    )
    bundle = ModelBundle(name="m", model=None, tokenizer=None)
    assert registry.hook.lora_target_modules(model_name="m", bundle=bundle) == [
        ".*attn.*",
        ".*mlp.*",
    ]
    assert registry.hook.lora_target_modules(model_name="other", bundle=bundle) is None


def test_parallel_plan_returns_the_owning_plugins_plan():
    plan = ParallelPlan(column=(".*c_attn",), row=(".*c_proj",))

    @hookimpl
    def parallel_plan(model_name, bundle):
        return plan if model_name == "m" else None

    registry = make_registry(make_plugin("p", parallel_plan))
    bundle = ModelBundle(name="m", model=None, tokenizer=None)
    assert registry.hook.parallel_plan(model_name="m", bundle=bundle) == plan
    assert registry.hook.parallel_plan(model_name="x", bundle=bundle) is None


def test_build_dataset_dispatches_by_dataset_name(tmp_path):
    @hookimpl
    def build_dataset(dataset_name, options, base_dir):
        if dataset_name != "lines":
            return None
        text = (Path(base_dir) / options["data_files"]).read_text()
        return [Sample([Message("user", line)], index=i) for i, line in enumerate(text.split())]

    (tmp_path / "d.txt").write_text("a b c")
    registry = make_registry(make_plugin("p", build_dataset))
    samples = registry.hook.build_dataset(
        dataset_name="lines", options={"data_files": "d.txt"}, base_dir=str(tmp_path)
    )
    assert [s.messages[0].content for s in samples] == ["a", "b", "c"]
    assert registry.hook.build_dataset(dataset_name="other", options={}, base_dir="") is None


def test_generate_answers_each_prompt_of_the_owning_model():
    @hookimpl
    def generate(model_name, bundle, prompts, max_new_tokens):
        if model_name != "echo":
            return None
        return [p.messages[-1].content.upper()[:max_new_tokens] for p in prompts]

    registry = make_registry(make_plugin("p", generate))
    bundle = ModelBundle(name="echo", model=None, tokenizer=None)
    prompts = [Sample([Message("user", "abc")]), Sample([Message("user", "hello")])]
    # An implementation may leave out parameters it does not use (here num_beams).
    assert registry.hook.generate(
        model_name="echo", bundle=bundle, prompts=prompts, max_new_tokens=4, num_beams=1
    ) == ["ABC", "HELL"]
    assert (
        registry.hook.generate(
            model_name="x", bundle=bundle, prompts=prompts, max_new_tokens=4, num_beams=1
        )
        is None
    )


def test_save_model_plugin_result_wins_and_core_default_uses_save_pretrained(tmp_path):
    saved = []

    class Model:
        def save_pretrained(self, folder, safe_serialization):
            saved.append(("model", folder, safe_serialization))

    class Tokenizer:
        def save_pretrained(self, folder):
            saved.append(("tokenizer", folder))

    @hookimpl
    def save_model(model_name, bundle, folder):
        return f"{folder}/mine" if model_name == "mine" else None

    registry = make_registry(make_plugin("p", save_model))
    bundle = ModelBundle(name="mine", model=Model(), tokenizer=Tokenizer())
    assert registry.hook.save_model(model_name="mine", bundle=bundle, folder="f") == "f/mine"
    assert saved == []
    out = registry.hook.save_model(model_name="other", bundle=bundle, folder=str(tmp_path))
    assert out == str(tmp_path)
    assert saved == [("model", str(tmp_path), True), ("tokenizer", str(tmp_path))]


# -- routing: a registered name reaches only the plugin that registered it ---------------------


def _owner_of(name):
    @hookimpl
    def register_models(register):
        register(name=name, description="d")

    @hookimpl
    def load_model(model_name, source, options):
        return (
            ModelBundle(name=f"{name} bundle", model=None, tokenizer=None)
            if model_name == name
            else None
        )

    @hookimpl
    def lora_target_modules(model_name, bundle):
        return [".*attn.*"] if model_name == name else None

    return register_models, load_model, lora_target_modules


def test_a_plugin_answering_for_every_name_cannot_take_another_plugins_model():
    @hookimpl
    def load_model(model_name, source, options):
        return ModelBundle(name="greedy bundle", model=None, tokenizer=None)

    registry = make_registry(
        make_plugin("owner", *_owner_of("toy")),
        make_plugin("greedy", *_owner_of("own")[:1], load_model),
    )
    # pluggy calls the later plugin first; routing by owner is what keeps "toy" with its owner.
    assert registry.hook.load_model(model_name="toy", source="", options={}).name == "toy bundle"
    # Its own name, and names nobody registered, still reach it.
    assert registry.hook.load_model(model_name="own", source="", options={}).name == "greedy bundle"
    assert registry.hook.load_model(model_name="nobody", source="", options={}).name == (
        "greedy bundle"
    )


def test_refused_claimant_is_never_called_for_the_name_but_observers_wrappers_are():
    @hookimpl(wrapper=True)
    def lora_target_modules(model_name, bundle):
        result = yield
        return [*(result or []), "from-rival"]

    @hookimpl(wrapper=True)
    def observe(model_name, bundle):
        result = yield
        return [*(result or []), ".*mlp.*"]

    registry = make_registry(
        make_plugin("owner", *_owner_of("toy")),
        make_plugin("rival", _owner_of("toy")[0], lora_target_modules),
        make_plugin("observer", lora_target_modules=observe),
    )
    assert registry.plugin("rival").conflicts
    bundle = ModelBundle(name="toy", model=None, tokenizer=None)
    assert registry.hook.lora_target_modules(model_name="toy", bundle=bundle) == [
        ".*attn.*",
        ".*mlp.*",
    ]


def test_export_model_and_load_processing_answer_for_the_owning_model(tmp_path):
    from mixcore.api.records import ExportPart, ModelExport, TensorSpec

    @hookimpl
    def register_models(register):
        register(name="m", description="d", capabilities={"deploy": True})

    @hookimpl
    def load_model(model_name, source, options):
        return ModelBundle(name="m", model=None, tokenizer=None) if model_name == "m" else None

    @hookimpl
    def export_model(model_name, bundle, folder, max_length):
        if model_name != "m":
            return None
        (Path(folder) / "vocab.txt").write_text("a b c\n")
        spec = (TensorSpec("inputs_embeds", (1, max_length, 8), "float32"),)
        return ModelExport(
            parts=[ExportPart("language", "layer", spec)],
            decoding="causal",
            image_token_id=None,
            tokens_per_image=0,
            stop_ids=(2,),
        )

    @hookimpl
    def load_processing(model_name, folder):
        if model_name != "m":
            return None
        words = (Path(folder) / "vocab.txt").read_text().split()
        return ModelBundle(name="m", model=None, tokenizer=words)

    registry = make_registry(
        make_plugin("p", register_models, load_model, export_model, load_processing)
    )
    assert registry.models["m"].capabilities["deploy"] is True
    bundle = ModelBundle(name="m", model=None, tokenizer=None)
    spec = registry.hook.export_model(
        model_name="m", bundle=bundle, folder=str(tmp_path), max_length=16
    )
    assert spec.parts[0].inputs[0].shape == (1, 16, 8)
    assert registry.hook.load_processing(model_name="m", folder=str(tmp_path)).tokenizer == [
        "a",
        "b",
        "c",
    ]
    assert (
        registry.hook.export_model(model_name="x", bundle=bundle, folder="f", max_length=4) is None
    )
    assert registry.hook.load_processing(model_name="x", folder=str(tmp_path)) is None


def test_deploy_claim_without_the_export_hooks_marks_the_plugin_broken():
    @hookimpl
    def register_models(register):
        register(name="m", description="d", capabilities={"deploy": True})

    @hookimpl
    def load_model(model_name, source, options):
        return None

    registry = make_registry(make_plugin("p", register_models, load_model))
    [broken] = registry.broken
    assert "deploy" in broken.reason and "export_model" in broken.reason
