"""Entry module of the ``blip2`` plugin: BLIP-2 (ViT + Q-Former + OPT or Flan-T5).

Only the plugin object and its description live here; the model, tokenizer and checkpoint
modules are imported inside its methods, so listing plugins never imports Paddle.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from mixcore.api import ModelBundle, PluginError, Sample, UsageError
from mixcore.kit import model_plugin as kit

#: Kept in step with mixcore_blip2.configuration (which imports PaddleNLP): the names a config
#: may use, and those with a generated vocabulary.
PRESET_NAMES = (
    "blip2/tiny",
    "blip2/tiny-opt",
    "blip2/tiny-t5",
    "blip2-opt-2.7b",
    "blip2-opt-6.7b",
    "blip2-flan-t5-xl",
    "Salesforce/blip2-opt-2.7b",
    "Salesforce/blip2-opt-6.7b",
    "Salesforce/blip2-flan-t5-xl",
    "paddlemix/blip2-caption-opt2.7b",
    "paddlemix/blip2-pretrained-opt2.7b",
    "paddlemix/blip2-caption-opt6.7b",
    "paddlemix/blip2-pretrained-opt6.7b",
    "paddlemix/blip2-caption-flant5xl",
    "paddlemix/blip2-pretrained-flant5xl",
)
TINY_PRESETS = ("blip2/tiny", "blip2/tiny-opt", "blip2/tiny-t5")
#: The language model a preset's name fixes (blip2/tiny takes the language_model option).
FIXED_FAMILY = {"blip2/tiny-opt": "opt", "blip2/tiny-t5": "t5"}
COMPONENT_NAMES = ("vision", "qformer", "projection", "language_model")


class Blip2(kit.ModelPlugin):
    name = "blip2"
    description = "BLIP-2 image captioning and VQA (vision transformer + Q-Former + OPT or T5)"
    capabilities: ClassVar[dict[str, bool]] = {
        "inference": True,
        "sft": True,
        "pretrain": True,
        "lora": True,
        "tensor_parallel": True,
        "pipeline_parallel": True,
        "deploy": True,
    }
    aliases = PRESET_NAMES
    # Hugging Face BLIP-2 folders (and mixcore's) say blip-2.
    model_types = ("blip-2", "blip2")
    options_schema: ClassVar[dict[str, Any]] = kit.object_schema(
        random_init=kit.RANDOM_INIT_OPTION,
        language_model={
            "enum": ["opt", "t5"],
            "description": (
                "The language model of blip2/tiny: opt (decoder-only, the default) or t5 "
                "(encoder-decoder). Published presets and folders have their own."
            ),
        },
        config_overrides={
            "type": "object",
            "description": (
                'Fields of the preset\'s config to replace, e.g. {"num_query_tokens": 16} or '
                '{"text_config": {"num_hidden_layers": 4}} (sub-configs merge key by key).'
            ),
        },
        frozen={
            "type": "array",
            "items": {"enum": list(COMPONENT_NAMES)},
            "uniqueItems": True,
            "default": ["vision", "language_model"],
            "description": (
                "Components whose parameters do not train (BLIP-2 trains the Q-Former and the "
                "projection by default). [] trains everything. With LoRA only the adapters (and "
                "freeze_exclude) train."
            ),
        },
        task={
            "enum": ["generation", "pretrain"],
            "description": (
                "generation (the default for presets): captioning / VQA through the language "
                "model (SFT, LoRA). "
                "pretrain: stage-1 Q-Former pretraining on image-caption pairs (contrastive, "
                "matching and image-grounded generation losses, logged as loss/itc, loss/itm, "
                "loss/itg); no language model is built. A folder keeps the task it was saved with."
            ),
        },
        qformer_from={
            "type": "string",
            "minLength": 1,
            "description": (
                "A stage-1 folder (saved by a task pretrain run) whose vision transformer, query "
                "tokens and Q-Former start this generation model: BLIP-2's stage 2. Relative "
                "to the working folder."
            ),
        },
        lora_qformer={
            "type": "boolean",
            "default": False,
            "description": (
                "Add the Q-Former's attention projections to the default LoRA targets (the "
                "language model's attention projections)."
            ),
        },
        dtype=kit.DTYPE_OPTION,
    )

    def load(self, source: str, options: dict[str, Any]) -> ModelBundle:
        from mixcore_blip2.features import Blip2Encoder, CaptionEncoder

        dtype = kit.requested_dtype(options)
        folder = Path(source).expanduser()
        if folder.is_dir():
            from mixcore_blip2.checkpoint import load_folder

            model, tokenizer, processor = load_folder(folder, dtype=dtype)
        elif source in PRESET_NAMES:
            model, tokenizer, processor = _from_preset(source, options, dtype)
        else:
            raise PluginError(
                f"{source!r} is neither a local checkpoint folder nor a BLIP-2 preset "
                f"({', '.join(PRESET_NAMES)})"
            )
        if options.get("qformer_from"):
            from mixcore_blip2.checkpoint import load_stage1_qformer

            load_stage1_qformer(model, Path(options["qformer_from"]).expanduser())
        components = type(model).COMPONENTS
        kit.freeze_components(
            model, components, options.get("frozen", ("vision", "language_model"))
        )
        config = model.config
        if _is_pretraining(model):
            encoder: Any = CaptionEncoder(tokenizer, config.qformer_config["cls_token_id"])
        else:
            encoder = Blip2Encoder(
                tokenizer, config.family, config.num_query_tokens, config.image_token_index
            )
        return ModelBundle(
            name=self.name,
            model=model,
            tokenizer=tokenizer,
            processor=processor,
            components={c: kit.component_pattern(p) for c, p in components.items()},
            extras={"encoder": encoder, "lora_qformer": bool(options.get("lora_qformer"))},
        )

    def check_options(self, source: str, options: dict[str, Any]) -> list[str]:
        problems = []
        if source in TINY_PRESETS and not options.get("random_init", False):
            problems.append(
                f"{source} has no published weights: set model_options.random_init to true to "
                "train it from random weights, or give a checkpoint folder"
            )
        elif source in PRESET_NAMES and source not in TINY_PRESETS:
            problems.append(
                f"{source} needs its files here (mixcore never downloads): put the Hugging Face "
                "BLIP-2 folder (config.json, the tokenizer files, the weights) on disk and use "
                "that folder as model_name_or_path"
            )
        family = options.get("language_model")
        fixed = FIXED_FAMILY.get(source)
        if family is not None and source != "blip2/tiny":
            if fixed is not None and family != fixed:
                problems.append(f"{source} has a {fixed} language model, not {family}")
            elif fixed is None:
                problems.append(
                    "language_model chooses the language model of blip2/tiny only; a folder or "
                    "a published preset has its own"
                )
        task = options.get("task")
        folder = Path(source).expanduser()
        saved = _saved_task(folder) if folder.is_dir() else None
        if task is not None and saved is not None and saved != task:
            problems.append(f"{source} holds a {saved} model; its task is fixed (leave task out)")
        elif task == "pretrain" and saved is None and source not in TINY_PRESETS:
            problems.append(
                "task pretrain starts a stage-1 model from a tiny preset or continues a saved "
                "stage-1 folder; starting it from a published checkpoint is not supported yet"
            )
        stage1 = options.get("qformer_from")
        if stage1 is not None:
            where = Path(stage1).expanduser()
            if task == "pretrain" or saved == "pretrain":
                problems.append("qformer_from starts a generation model (stage 2), not stage 1")
            elif not where.is_dir() or _saved_task(where) != "pretrain":
                problems.append(
                    f"qformer_from {stage1!r} is not a stage-1 BLIP-2 folder (one a task pretrain "
                    "run saved, whose config.json lists Blip2QFormerPretraining)"
                )
        return problems

    def encode(self, sample: Sample, bundle: ModelBundle, max_length: int) -> dict[str, Any]:
        features = bundle.extras["encoder"].encode(sample, max_length)
        if sample.images and bundle.processor is not None:
            features["images"] = bundle.processor.sample_images(sample, 1)
        return features

    def length(self, sample: Sample, bundle: ModelBundle) -> int:
        return bundle.extras["encoder"].length(sample)

    def collate(self, features: Sequence[Any], bundle: ModelBundle) -> dict[str, Any]:
        from mixcore.kit.collation import pad_batch
        from mixcore_blip2.features import collate_t5

        pad_id = bundle.tokenizer.pad_token_id
        if bundle.model.config.family == "t5" and not _is_pretraining(bundle.model):
            return collate_t5(features, pad_id)
        return pad_batch(features, pad_id)

    def answer(
        self,
        bundle: ModelBundle,
        prompts: Sequence[Sample],
        max_new_tokens: int,
        num_beams: int = 1,
    ) -> list[str]:
        from mixcore.kit.generation import evaluating, generate_text
        from mixcore.kit.weights import parameter_dtype
        from mixcore_blip2.features import stop_ids

        model, tokenizer = bundle.model, bundle.tokenizer
        if _is_pretraining(model):
            raise UsageError(
                "a stage-1 (pretrain) BLIP-2 has no language model to write text with: train "
                "and infer with task generation"
            )
        family = model.config.family
        features = [self.encode(prompt, bundle, 2**31 - 1) for prompt in prompts]
        if family == "opt":
            from mixcore_blip2.opt_language import OPTStep

            step = OPTStep(model.language_model)
        else:
            from mixcore_blip2.t5_language import T5Step

            step = T5Step(model.language_model)
        with evaluating(model):
            return generate_text(
                step,
                model.embed_inputs,
                features,
                tokenizer,
                max_new_tokens,
                stop_ids=stop_ids(tokenizer, family),
                num_beams=num_beams,
                image_dtype=parameter_dtype(model.vision_model),
            )

    def save(self, bundle: ModelBundle, folder: str) -> str:
        from mixcore_blip2.checkpoint import save_folder

        save_folder(bundle.model, bundle.tokenizer, bundle.processor, folder, model_name=self.name)
        return folder

    # --- export for deployment (`mixcore export`, `infer --engine paddle-inference`) ---------

    def export(self, bundle: ModelBundle, folder: str, max_length: int) -> Any:
        from mixcore_blip2.export import export_parts

        return export_parts(bundle, folder, max_length)

    def processing(self, folder: str) -> ModelBundle:
        from mixcore_blip2.export import load_processing

        return load_processing(self.name, folder)

    # ------------------------------------------------------------------------------------------

    def lora_targets(self, bundle: ModelBundle) -> list[str]:
        from mixcore_blip2.modeling import LORA_TARGETS, QFORMER_LORA_TARGETS

        if _is_pretraining(bundle.model):
            return list(QFORMER_LORA_TARGETS)
        targets = list(LORA_TARGETS[bundle.model.config.family])
        if bundle.extras.get("lora_qformer"):
            targets += QFORMER_LORA_TARGETS
        return targets

    def plan(self, bundle: ModelBundle) -> Any:
        from mixcore_blip2.parallel import parallel_plan

        if _is_pretraining(bundle.model):
            raise PluginError(
                "BLIP-2's stage-1 (Q-Former pretraining) model has no parallel plan; "
                "tensor and pipeline parallelism split the stage-2 model"
            )
        return parallel_plan(bundle.model.config)


def _saved_task(folder: Path) -> str | None:
    """The task of a BLIP-2 folder, from its config.json's architectures (None: unreadable)."""
    import json

    try:
        architectures = json.loads((folder / "config.json").read_text()).get("architectures")
    except (OSError, ValueError, AttributeError):
        return None
    return "pretrain" if "Blip2QFormerPretraining" in (architectures or ()) else "generation"


def _is_pretraining(model: Any) -> bool:
    return type(model).__name__ == "Blip2QFormerPretraining"


def _from_preset(source: str, options: dict[str, Any], dtype: str | None) -> tuple[Any, Any, Any]:
    import tempfile

    from mixcore_blip2.checkpoint import build_model, image_preprocessor, unused_token_id
    from mixcore_blip2.configuration import Blip2Config, apply_overrides, preset_fields
    from mixcore_blip2.tokenization import load_tokenizer, write_tiny_tokenizer

    fields = apply_overrides(
        preset_fields(source, options.get("language_model")), options.get("config_overrides", {})
    )
    config = Blip2Config(**fields)
    if source not in TINY_PRESETS:
        raise PluginError(
            f"the {source} preset has no files here: put the Hugging Face BLIP-2 folder (config, "
            "tokenizer, weights) on disk and use that folder as model_name_or_path"
        )
    if not options.get("random_init", False):
        raise PluginError(f"{source} has no published weights: set model_options.random_init")
    # The tiny presets' vocabulary is generated, so they never need a download.
    vocab = Path(tempfile.mkdtemp(prefix="mixcore-blip2-tiny-vocab-"))
    write_tiny_tokenizer(vocab, config.family)
    tokenizer = load_tokenizer(vocab, config.family)
    if config.image_token_index is None:
        config.image_token_index = unused_token_id(config, tokenizer)
    if options.get("task") == "pretrain":
        # Stage 1 reads captions with the same tokenizer; [CLS] and [DEC] take two more unused
        # rows of the Q-Former's word table.
        first_free = max(len(tokenizer), config.image_token_index + 1)
        config.qformer_config.update(cls_token_id=first_free, dec_token_id=first_free + 1)
    model = build_model(
        config, random_init=True, dtype=dtype, pretraining=options.get("task") == "pretrain"
    )
    return model, tokenizer, image_preprocessor(config)


plugin = Blip2()
