"""Entry module of the ``qwen_vl`` plugin: Qwen-VL (ViT + cross-attention resampler + QWen).

Only the plugin object and its description live here; the model, tokenizer and checkpoint
modules are imported inside its methods, so listing plugins never imports Paddle.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from mixcore.api import ModelBundle, PluginError, Sample
from mixcore.kit import model_plugin as kit

#: Names a config may use for a preset, and the preset each one means.
PRESET_ALIASES = {
    "qwen_vl/tiny": "qwen_vl/tiny",
    "qwen-vl/qwen-vl-chat-7b": "qwen-vl/qwen-vl-chat-7b",
    "Qwen/Qwen-VL-Chat": "qwen-vl/qwen-vl-chat-7b",
}
#: The only preset whose files (a generated vocabulary) exist without a download.
TINY = "qwen_vl/tiny"


class QwenVL(kit.ModelPlugin):
    name = "qwen_vl"
    description = "Qwen-VL chat model (vision transformer + resampler + QWen language model)"
    capabilities: ClassVar[dict[str, bool]] = {
        "inference": True,
        "sft": True,
        "lora": True,
        "packing": True,
        "tensor_parallel": True,
        "pipeline_parallel": True,
        "deploy": True,
    }
    aliases = tuple(PRESET_ALIASES)
    # mixcore's own folders say qwen_vl; Hugging Face's Qwen-VL(-Chat) folders say qwen.
    model_types = ("qwen_vl", "qwen")
    # Packed batches carry segment_ids; the model attends per segment (no len x len mask).
    packed_attention = "segments"
    options_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "random_init": {
                "type": "boolean",
                "default": False,
                "description": (
                    "Initialise the qwen_vl/tiny preset randomly (it has no published weights). "
                    "Off by default so a missing checkpoint is an error, not a silently "
                    "untrained model."
                ),
            },
            "config_overrides": {
                "type": "object",
                "description": 'Fields of the preset\'s config to replace, e.g. {"num_hidden_layers": 4}.',
            },
            "dtype": kit.DTYPE_OPTION,
        },
    }

    # The kit's stock work methods, on the encoder `load` puts in the bundle's extras.
    encode = kit.encode_conversation
    length = kit.conversation_length
    collate = kit.pad_collate

    def load(self, source: str, options: dict[str, Any]) -> ModelBundle:
        from mixcore_qwen_vl.checkpoint import load_pretrained
        from mixcore_qwen_vl.features import conversation_encoder
        from mixcore_qwen_vl.modeling import COMPONENTS, component_pattern

        dtype = kit.requested_dtype(options)
        if Path(source).expanduser().is_dir():
            model, tokenizer, processor = load_pretrained(Path(source).expanduser(), dtype=dtype)
        elif source in PRESET_ALIASES:
            model, tokenizer, processor = _from_preset(PRESET_ALIASES[source], options)
        else:
            raise PluginError(
                f"{source!r} is neither a local checkpoint folder nor a Qwen-VL preset "
                f"({', '.join(PRESET_ALIASES)})"
            )
        return ModelBundle(
            name=self.name,
            model=model,
            tokenizer=tokenizer,
            processor=processor,
            components={c: component_pattern(c) for c in COMPONENTS},
            extras={"encoder": conversation_encoder(tokenizer, model.config.n_queries)},
        )

    def check_options(self, source: str, options: dict[str, Any]) -> list[str]:
        preset = PRESET_ALIASES.get(source)
        if preset == TINY and not options.get("random_init", False):
            return [
                f"{source} has no published weights: set model_options.random_init to true to "
                "train it from random weights, or give a checkpoint folder"
            ]
        if preset is not None and preset != TINY:
            return [
                f"{source} needs its files here (mixcore never downloads): put the Hugging Face "
                "Qwen-VL-Chat folder (config.json, qwen.tiktoken, the weights) on disk and use "
                "that folder as model_name_or_path"
            ]
        return []

    def answer(
        self,
        bundle: ModelBundle,
        prompts: Sequence[Sample],
        max_new_tokens: int,
        num_beams: int = 1,
    ) -> list[str]:
        from mixcore.kit.generation import CausalLMStep, evaluating, generate_text
        from mixcore.kit.weights import parameter_dtype
        from mixcore_qwen_vl.features import stop_ids

        model, tokenizer = bundle.model, bundle.tokenizer
        room = int(model.config.seq_length) - max_new_tokens
        features = [self.encode(prompt, bundle, room) for prompt in prompts]
        with evaluating(model):
            return generate_text(
                CausalLMStep(model.llm),
                model.embed_inputs,
                features,
                tokenizer,
                max_new_tokens,
                stop_ids=stop_ids(tokenizer),
                num_beams=num_beams,
                image_dtype=parameter_dtype(model),
            )

    def save(self, bundle: ModelBundle, folder: str) -> str:
        from mixcore_qwen_vl.checkpoint import save_checkpoint

        save_checkpoint(
            bundle.model, bundle.tokenizer, bundle.processor, folder, model_name=self.name
        )
        return folder

    # --- export for deployment (`mixcore export`, `infer --engine paddle-inference`) ---------

    def export(self, bundle: ModelBundle, folder: str, max_length: int) -> Any:
        from mixcore_qwen_vl.export import export_parts

        return export_parts(bundle, folder, max_length)

    def processing(self, folder: str) -> ModelBundle:
        from mixcore_qwen_vl.export import load_processing

        return load_processing(self.name, folder)

    # ------------------------------------------------------------------------------------------

    def lora_targets(self, bundle: ModelBundle) -> list[str]:
        from mixcore_qwen_vl.modeling import DEFAULT_LORA_TARGET_MODULES

        return list(DEFAULT_LORA_TARGET_MODULES)

    def plan(self, bundle: ModelBundle) -> Any:
        from mixcore_qwen_vl.parallel import parallel_plan

        return parallel_plan(bundle.model.config)


def _from_preset(preset: str, options: dict[str, Any]) -> tuple[Any, Any, Any]:
    import tempfile

    from mixcore_qwen_vl.checkpoint import build_model, image_preprocessor
    from mixcore_qwen_vl.configuration import config_from_preset
    from mixcore_qwen_vl.tokenization import QwenVLTokenizer, write_tiny_vocab

    config = config_from_preset(preset, **options.get("config_overrides", {}))
    if preset != TINY:
        # Fails with the message that says where to put the weights; with random_init the
        # weights could be made, but the real vocabulary cannot.
        build_model(config, random_init=False)
        raise PluginError(
            f"the {preset} preset has no tokenizer here: put its files (qwen.tiktoken and the "
            "weights) in a folder and use that folder as model_name_or_path"
        )
    model = build_model(config, random_init=bool(options.get("random_init", False)))
    # The tiny preset's vocabulary is generated, so it never needs a download.
    vocab = Path(tempfile.mkdtemp(prefix="mixcore-qwen-vl-tiny-vocab-"))
    write_tiny_vocab(vocab)
    return model, QwenVLTokenizer.from_pretrained(str(vocab)), image_preprocessor(config)


plugin = QwenVL()
