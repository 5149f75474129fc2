"""Entry module of the ``visualglm`` plugin: VisualGLM (EVA ViT + Q-Former + ChatGLM-6B).

Only the plugin object and its description live here; the model, tokenizer and checkpoint
modules are imported inside its methods, so listing plugins never imports Paddle.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from mixcore.api import ModelBundle, PluginError, Sample
from mixcore.kit import model_plugin as kit

#: Kept in step with mixcore_visualglm.configuration (which imports PaddleNLP).
PRESET_NAMES = ("visualglm/tiny", "visualglm-6b", "THUDM/visualglm-6b")
TINY_PRESET = "visualglm/tiny"
COMPONENT_NAMES = ("vision", "qformer", "projection", "language_model")


class VisualGLM(kit.ModelPlugin):
    name = "visualglm"
    description = "VisualGLM chat model (vision transformer + Q-Former + ChatGLM-6B)"
    capabilities: ClassVar[dict[str, bool]] = {
        "inference": True,
        "sft": True,
        "lora": True,
        "packing": True,
        "tensor_parallel": True,
        "pipeline_parallel": True,
        "deploy": True,
    }
    aliases = PRESET_NAMES
    # THUDM's folders (and mixcore's, which keep their layout) say chatglm.
    model_types = ("chatglm", "visualglm")
    options_schema: ClassVar[dict[str, Any]] = kit.object_schema(
        random_init=kit.RANDOM_INIT_OPTION,
        config_overrides={
            "type": "object",
            "description": (
                "Fields of the preset's config to replace, in THUDM's names, e.g. {\"num_layers\": "
                '4} (ChatGLM) or {"eva_config": {"num_layers": 2}} (the image side\'s sub-configs '
                "merge key by key)."
            ),
        },
        frozen={
            "type": "array",
            "items": {"enum": list(COMPONENT_NAMES)},
            "uniqueItems": True,
            "default": ["vision"],
            "description": (
                "Components whose parameters do not train. By default the ViT stays frozen and "
                "the Q-Former, projection and ChatGLM train; [] trains everything. With LoRA "
                "only the adapters (and freeze_exclude) train."
            ),
        },
        dtype=kit.DTYPE_OPTION,
    )

    def load(self, source: str, options: dict[str, Any]) -> ModelBundle:
        from mixcore_visualglm.features import VisualGLMEncoder
        from mixcore_visualglm.modeling import COMPONENTS

        dtype = kit.requested_dtype(options)
        folder = Path(source).expanduser()
        if folder.is_dir():
            from mixcore_visualglm.checkpoint import load_folder

            model, tokenizer, processor = load_folder(folder, dtype=dtype)
        elif source == TINY_PRESET:
            model, tokenizer, processor = _tiny(options, dtype)
        elif source in PRESET_NAMES:
            raise PluginError(
                f"the {source} preset has no files here: put THUDM's visualglm-6b folder "
                "(config.json, ice_text.model, the weights) on disk and use that folder as "
                "model_name_or_path"
            )
        else:
            raise PluginError(
                f"{source!r} is neither a local checkpoint folder nor a VisualGLM preset "
                f"({', '.join(PRESET_NAMES)})"
            )
        kit.freeze_components(model, COMPONENTS, options.get("frozen", ("vision",)))
        config = model.config
        return ModelBundle(
            name=self.name,
            model=model,
            tokenizer=tokenizer,
            processor=processor,
            components={c: kit.component_pattern(p) for c, p in COMPONENTS.items()},
            extras={
                "encoder": VisualGLMEncoder(tokenizer, config.image_length, config.image_token_id)
            },
        )

    def check_options(self, source: str, options: dict[str, Any]) -> list[str]:
        if source == TINY_PRESET and not options.get("random_init", False):
            return [
                f"{source} has no published weights: set model_options.random_init to true to "
                "train it from random weights, or give a checkpoint folder"
            ]
        if source in PRESET_NAMES and source != TINY_PRESET:
            return [
                f"{source} needs its files here (mixcore never downloads): put THUDM's "
                "visualglm-6b folder (config.json, ice_text.model, the weights) on disk and use "
                "that folder as model_name_or_path"
            ]
        return []

    def encode(self, sample: Sample, bundle: ModelBundle, max_length: int) -> dict[str, Any]:
        features = bundle.extras["encoder"].encode(sample, max_length)
        if sample.images and bundle.processor is not None:
            features["images"] = bundle.processor.sample_images(sample, 1)
        return features

    def length(self, sample: Sample, bundle: ModelBundle) -> int:
        return bundle.extras["encoder"].length(sample)

    def collate(self, features: Sequence[Any], bundle: ModelBundle) -> dict[str, Any]:
        from mixcore_visualglm.features import collate

        ids = bundle.extras["encoder"].ids
        return collate(features, ids.pad, ids.gmask, ids.sop)

    def answer(
        self,
        bundle: ModelBundle,
        prompts: Sequence[Sample],
        max_new_tokens: int,
        num_beams: int = 1,
    ) -> list[str]:
        from mixcore.kit.generation import evaluating, generate_text
        from mixcore.kit.weights import parameter_dtype
        from mixcore_visualglm.chatglm_language import ChatGLMStep

        model, tokenizer = bundle.model, bundle.tokenizer
        features = [self.encode(prompt, bundle, 2**31 - 1) for prompt in prompts]
        with evaluating(model):
            return generate_text(
                ChatGLMStep(model.language_model),
                model.embed_inputs,
                features,
                tokenizer,
                max_new_tokens,
                stop_ids=(bundle.extras["encoder"].ids.eop,),
                num_beams=num_beams,
                image_dtype=parameter_dtype(model.vision_model),
            )

    def save(self, bundle: ModelBundle, folder: str) -> str:
        from mixcore_visualglm.checkpoint import save_folder

        save_folder(bundle.model, bundle.tokenizer, bundle.processor, folder, model_name=self.name)
        return folder

    # --- export for deployment (`mixcore export`, `infer --engine paddle-inference`) ---------

    def export(self, bundle: ModelBundle, folder: str, max_length: int) -> Any:
        from mixcore_visualglm.export import export_parts

        return export_parts(bundle, folder, max_length)

    def processing(self, folder: str) -> ModelBundle:
        from mixcore_visualglm.export import load_processing

        return load_processing(self.name, folder)

    # ------------------------------------------------------------------------------------------

    def lora_targets(self, bundle: ModelBundle) -> list[str]:
        from mixcore_visualglm.modeling import LORA_TARGETS

        return list(LORA_TARGETS)

    def plan(self, bundle: ModelBundle) -> Any:
        from mixcore_visualglm.parallel import parallel_plan

        return parallel_plan(bundle.model.config)


def _tiny(options: dict[str, Any], dtype: str | None) -> tuple[Any, Any, Any]:
    import tempfile

    from mixcore_visualglm.checkpoint import build_model, image_preprocessor
    from mixcore_visualglm.configuration import VisualGLMConfig, apply_overrides, preset_fields
    from mixcore_visualglm.tokenization import (
        load_tokenizer,
        special_ids,
        write_tiny_chatglm_tokenizer,
    )

    if not options.get("random_init", False):
        raise PluginError(f"{TINY_PRESET} has no published weights: set model_options.random_init")
    config = VisualGLMConfig(
        **apply_overrides(preset_fields(TINY_PRESET), options.get("config_overrides", {}))
    )
    # The tiny preset's vocabulary is generated, so it never needs a download.
    vocab = Path(tempfile.mkdtemp(prefix="mixcore-visualglm-tiny-vocab-"))
    write_tiny_chatglm_tokenizer(vocab)
    tokenizer = load_tokenizer(vocab)
    if config.image_token_id is None:
        config.image_token_id = special_ids(tokenizer).smask
    model = build_model(config, random_init=True, dtype=dtype)
    return model, tokenizer, image_preprocessor(config)


plugin = VisualGLM()
