"""Entry module of the ``qwen_vl`` plugin: Qwen-VL (ViT + cross-attention resampler + QWen).

Only hook definitions and the manifest live here; the model, tokenizer and processor modules are
imported inside the hooks, so listing plugins never imports Paddle.
"""

from __future__ import annotations

from collections.abc import Callable

from mixcore import hookimpl

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
                "Initialise a preset (qwen_vl/tiny, qwen-vl/qwen-vl-chat-7b) randomly when it "
                "has no local weights. For tests and benchmarks; off by default so a missing "
                "checkpoint is an error, not a silently untrained model."
            ),
        },
        "config_overrides": {
            "type": "object",
            "description": 'Fields of the preset\'s config to replace, e.g. {"num_hidden_layers": 2}.',
        },
    },
}


@hookimpl
def register_models(register: Callable[..., None]) -> None:
    register(
        name="qwen_vl",
        description=manifest["description"],
        options_schema=OPTIONS_SCHEMA,
        capabilities={},
        aliases=["qwen_vl/tiny", "qwen-vl/qwen-vl-chat-7b", "Qwen/Qwen-VL-Chat"],
        model_types=["qwen_vl"],
    )
