"""Entry module of the ``qwen_vl`` plugin: Qwen-VL (ViT + cross-attention resampler + QWen).

Only hook definitions and the manifest live here; the model, tokenizer and processor modules are
imported inside the hooks, so listing plugins never imports Paddle.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from mixcore import hookimpl

MODEL = "qwen_vl"

manifest = {
    "api_version": 1,
    "description": "Qwen-VL chat model (vision transformer + resampler + QWen language model)",
}

OPTIONS_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "random_init": {
            "type": "boolean",
            "default": False,
            "description": (
                "Initialise the qwen_vl/tiny preset randomly (it has no published weights). "
                "Off by default so a missing checkpoint is an error, not a silently untrained "
                "model."
            ),
        },
        "config_overrides": {
            "type": "object",
            "description": 'Fields of the preset\'s config to replace, e.g. {"num_hidden_layers": 4}.',
        },
    },
}


@hookimpl
def register_models(register: Callable[..., None]) -> None:
    register(
        name=MODEL,
        description=manifest["description"],
        options_schema=OPTIONS_SCHEMA,
        capabilities={"inference": True, "sft": True, "lora": True, "packing": True},
        aliases=["qwen_vl/tiny", "qwen-vl/qwen-vl-chat-7b", "Qwen/Qwen-VL-Chat"],
        model_types=["qwen_vl"],
    )


@hookimpl
def load_model(model_name: str, source: str, options: dict[str, Any]) -> Any:
    if model_name != MODEL:
        return None
    from mixcore_qwen_vl.loading import load_bundle

    return load_bundle(source, options)


@hookimpl
def preprocess_sample(model_name: str, sample: Any, bundle: Any, max_length: int) -> Any:
    if model_name != MODEL:
        return None
    from mixcore_qwen_vl.features import encode_sample

    return encode_sample(sample, bundle, max_length)


@hookimpl
def sample_length(model_name: str, sample: Any, bundle: Any) -> int | None:
    if model_name != MODEL:
        return None
    from mixcore_qwen_vl.features import sample_length as measure

    return measure(sample, bundle)


@hookimpl
def collate_batch(model_name: str, features: Sequence[dict[str, Any]], bundle: Any) -> Any:
    if model_name != MODEL:
        return None
    from mixcore_qwen_vl.features import collate

    return collate(features, bundle)


@hookimpl
def lora_target_modules(model_name: str, bundle: Any) -> list[str] | None:
    if model_name != MODEL:
        return None
    from mixcore_qwen_vl.modeling import DEFAULT_LORA_TARGET_MODULES

    return list(DEFAULT_LORA_TARGET_MODULES)


@hookimpl
def save_model(model_name: str, bundle: Any, folder: str) -> str | None:
    if model_name != MODEL:
        return None
    from mixcore_qwen_vl.checkpoint import save_checkpoint

    save_checkpoint(bundle.model, bundle.tokenizer, bundle.processor, folder)
    return folder


@hookimpl
def generate(model_name: str, bundle: Any, prompts: Sequence[Any], max_new_tokens: int) -> Any:
    if model_name != MODEL:
        return None
    from mixcore_qwen_vl.features import generate_answers

    return generate_answers(prompts, bundle, max_new_tokens)
