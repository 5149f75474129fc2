"""kit.model_plugin's stock work methods become hooks when assigned in a ModelPlugin's body, and
do what a hand-written encode / length / collate would."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from mixcore.api import IGNORE_INDEX, Message, ModelBundle, Sample
from mixcore.kit import model_plugin as kit
from mixcore.kit.checkpoints import distribution_of
from mixcore.kit.conversation import ConversationEncoder, ImageSlot
from mixcore.testing import make_registry


class Tokenizer:
    pad_token_id = 0

    def __call__(self, text: str) -> list[int]:
        return [ord(c) % 50 + 1 for c in text]


class Processor:
    def sample_images(self, sample, count):
        return np.ones((count, 3, 2, 2), dtype=np.float32)


class Stocked(kit.ModelPlugin):
    name = "stocked"
    capabilities: ClassVar = {"sft": True, "packing": True}
    options_schema: ClassVar = kit.object_schema(random_init=kit.RANDOM_INIT_OPTION)
    encode = kit.encode_conversation
    length = kit.conversation_length
    collate = kit.pad_collate

    def load(self, source, options):
        return bundle()


def bundle(processor=None) -> ModelBundle:
    tokenizer = Tokenizer()
    encoder = ConversationEncoder(tokenizer, lambda n: ImageSlot((99, 99, 99), 0, 3))
    return ModelBundle("stocked", None, tokenizer, processor, extras={"encoder": encoder})


def test_assigned_stock_methods_are_the_models_hooks():
    registry = make_registry(("stocked", Stocked()))
    plugin = registry.plugin("stocked")
    assert plugin.ok, plugin.reason
    assert {"preprocess_sample", "sample_length", "collate_batch"} <= set(plugin.hooks)
    assert "save_model" not in plugin.hooks
    assert registry.model("stocked").options_schema == {
        "type": "object",
        "additionalProperties": False,
        "properties": {"random_init": kit.RANDOM_INIT_OPTION},
    }


def test_stock_encode_length_and_collate():
    plugin = Stocked()
    sample = Sample(
        [Message("user", "<image>hi"), Message("assistant", "yo")], images=["a.png"], index=0
    )
    with_images = bundle(Processor())
    features = plugin.encode(sample, with_images, 256)
    assert features["input_ids"].tolist().count(99) == 3
    assert features["images"].shape == (1, 3, 2, 2)
    assert features["labels"][-1] == IGNORE_INDEX
    assert plugin.length(sample, with_images) == len(features["input_ids"])
    assert "images" not in plugin.encode(sample, bundle(), 256)  # no processor: text features
    short = plugin.encode(Sample([Message("user", "a"), Message("assistant", "b")]), bundle(), 256)
    batch = plugin.collate([features, short], with_images)
    assert batch["input_ids"].shape == (2, len(features["input_ids"]))
    assert batch["input_ids"][1, len(short["input_ids"]) :].tolist() == [0] * (
        len(features["input_ids"]) - len(short["input_ids"])
    )


def test_distribution_of_names_the_installed_distribution_or_none():
    assert distribution_of(ConversationEncoder) == "mixcore"
    assert distribution_of(Tokenizer) is None  # a test module belongs to no distribution


def test_components_are_matched_by_prefix_also_behind_a_wrapper():
    import re

    from mixcore.kit.model_plugin import component_of, component_pattern

    components = {"vision": ("vision_model",), "qformer": ("query_tokens", "qformer")}
    pattern = component_pattern(components["qformer"])
    assert re.match(pattern, "qformer.encoder.layer.0.attention.query.weight")
    assert re.match(pattern, "model.query_tokens")  # as LoRA's wrapper names it
    assert not re.match(pattern, "qformers.x") and not re.match(pattern, "vision_model.qformer_x")
    assert component_of("query_tokens", components) == "qformer"
    assert component_of("vision_model.post_layernorm.weight", components) == "vision"
    assert component_of("language_model.lm_head.weight", components) is None


def test_frozen_components_stop_their_gradients_only():
    from paddle import nn

    from mixcore.kit.model_plugin import freeze_components

    model = nn.LayerDict({"vision_model": nn.Linear(2, 2), "qformer": nn.Linear(2, 2)})
    freeze_components(model, {"vision": ("vision_model",), "qformer": ("qformer",)}, ["vision"])
    frozen = {n for n, p in model.named_parameters() if p.stop_gradient}
    assert frozen == {"vision_model.weight", "vision_model.bias"}


def test_the_dtype_option_asks_for_a_dtype_or_leaves_it_to_the_checkpoint():
    from mixcore.kit.model_plugin import DTYPE_OPTION, requested_dtype

    assert requested_dtype({}) is None and requested_dtype({"dtype": "auto"}) is None
    assert requested_dtype({"dtype": "bfloat16"}) == "bfloat16"
    assert DTYPE_OPTION["default"] == "auto" and "float32" in DTYPE_OPTION["enum"]
