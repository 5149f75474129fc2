"""Entry module of the ``tiny_llava`` plugin: the glue between mixcore and the model.

Each work method of :class:`TinyLlava` is a few calls into :mod:`mixcore.kit` (conversation
encoding, collation, generation, checkpoint reading and writing); what is the model's own lives
in :mod:`.configuration`, :mod:`.modeling` and :mod:`.tokenization`. Those, and the kit modules
that need numpy, are imported inside the methods, so listing plugins stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from mixcore.api import ModelBundle, PluginError, Sample
from mixcore.kit.model_plugin import ModelPlugin

PRESET = "tiny_llava/tiny"
DISTRIBUTION = "mixcore-tiny-llava"


class TinyLlava(ModelPlugin):
    name = "tiny_llava"
    description = "Tiny LLaVA: patch-embedding vision encoder, MLP projector, PaddleNLP LLaMA"
    capabilities: ClassVar = {"inference": True, "sft": True, "lora": True, "packing": True}
    aliases = (PRESET,)
    model_types = ("tiny_llava",)
    options_schema: ClassVar = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "random_init": {"type": "boolean", "description": f"Build {PRESET} randomly."},
            "config_overrides": {"type": "object", "description": "TinyLlavaConfig fields."},
        },
    }

    def load(self, source: str, options: dict[str, Any]) -> ModelBundle:
        from mixcore.kit.conversation import ConversationEncoder, ImageSlot
        from mixcore_tiny_llava import modeling, tokenization

        if problem := self.check_options(source, options):
            raise PluginError(problem[0])
        model, tokenizer, processor = _from_folder(source) if _is_folder(source) else _new(options)
        span = (model.config.image_token_id,) * model.config.image_tokens
        encoder = ConversationEncoder(
            lambda text: tokenizer(text, add_special_tokens=False)["input_ids"],
            lambda number: ImageSlot(span, 0, len(span)),
            default_template=tokenization.CHAT_TEMPLATE,
            bos_ids=[tokenizer.bos_token_id],
            end_of_turn_ids=[tokenizer.eos_token_id],
        )
        return ModelBundle(
            self.name, model, tokenizer, processor, modeling.COMPONENTS, {"encoder": encoder}
        )

    def check_options(self, source: str, options: dict[str, Any]) -> list[str]:
        if _is_folder(source) or (source == PRESET and options.get("random_init")):
            return []
        return [f"{source!r}: give a checkpoint folder, or {PRESET} with random_init true"]

    def encode(self, sample: Sample, bundle: ModelBundle, max_length: int) -> dict[str, Any]:
        encoded = bundle.extras["encoder"].encode(sample, max_length)
        images = bundle.processor.sample_images(sample, len(encoded.image_spans))
        return {**encoded.arrays(), "images": images}

    def length(self, sample: Sample, bundle: ModelBundle) -> int:
        return bundle.extras["encoder"].length(sample)

    def collate(self, features: Sequence[dict[str, Any]], bundle: ModelBundle) -> dict[str, Any]:
        from mixcore.kit.collation import pad_batch

        return pad_batch(features, bundle.tokenizer.pad_token_id)

    def answer(
        self, bundle: ModelBundle, prompts: Sequence[Sample], max_new_tokens: int
    ) -> list[str]:
        from mixcore.kit.generation import CausalLMStep, GenerationConfig, generate_from_features

        model, tokenizer = bundle.model, bundle.tokenizer
        room = model.config.text_config["max_position_embeddings"] - max_new_tokens
        features = [self.encode(prompt, bundle, room) for prompt in prompts]
        config = GenerationConfig(
            max_new_tokens, (tokenizer.eos_token_id,), vocab_size=len(tokenizer)
        )
        step = CausalLMStep(model.language_model)
        new = generate_from_features(
            step, model.embed_inputs, features, tokenizer.pad_token_id, config
        )
        return [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in new]

    def save(self, bundle: ModelBundle, folder: str) -> str:
        from mixcore.kit.checkpoints import write_config, write_weights
        from mixcore.kit.weights import parameter_dtype, state_tensors

        config = {
            **bundle.model.config.to_diff_dict(),
            "torch_dtype": parameter_dtype(bundle.model),
        }
        write_config(folder, config, plugin=self.name, model=self.name, distribution=DISTRIBUTION)
        write_weights(folder, state_tensors(bundle.model))
        bundle.tokenizer.save_pretrained(folder)
        bundle.processor.save_pretrained(folder)
        return folder

    def lora_targets(self, bundle: ModelBundle) -> list[str]:
        from mixcore_tiny_llava.modeling import LORA_TARGETS

        return list(LORA_TARGETS)


def _is_folder(source: str) -> bool:
    return Path(source).expanduser().is_dir()


def _new(options: dict[str, Any]) -> tuple[Any, Any, Any]:
    """The preset, randomly initialised, with its generated tokenizer."""
    from mixcore.kit.images import ImagePreprocessor
    from mixcore_tiny_llava.modeling import TinyLlavaConfig, TinyLlavaForConditionalGeneration
    from mixcore_tiny_llava.tokenization import tiny_tokenizer

    config = TinyLlavaConfig(**options.get("config_overrides", {}))
    model = TinyLlavaForConditionalGeneration(config)
    return model, tiny_tokenizer(), ImagePreprocessor(config.image_size)


def _from_folder(source: str) -> tuple[Any, Any, Any]:
    """A folder :meth:`TinyLlava.save` wrote."""
    from paddlenlp.transformers import LlamaTokenizer

    from mixcore.kit.checkpoints import building, compute_dtype, read_config, read_weights
    from mixcore.kit.images import ImagePreprocessor
    from mixcore.kit.weights import assign_weights
    from mixcore_tiny_llava.modeling import TinyLlavaConfig, TinyLlavaForConditionalGeneration

    folder = Path(source).expanduser()
    fields = read_config(folder)
    with building(compute_dtype(fields.get("torch_dtype")), weights_follow=True):
        model = TinyLlavaForConditionalGeneration(TinyLlavaConfig.from_dict(fields))
    assign_weights(model, read_weights(folder), str(folder))
    return model, LlamaTokenizer.from_pretrained(folder), ImagePreprocessor.from_pretrained(folder)


plugin = TinyLlava()
