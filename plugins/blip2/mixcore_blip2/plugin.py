"""Entry module of the ``blip2`` plugin: BLIP-2 (ViT + Q-Former + OPT/T5) captioning models.

The model itself arrives in a later milestone; until its hooks exist this plugin registers the
model with its option schema and claims no capability, so ``mixcore plugins list`` tells the
truth about what works.
"""

from __future__ import annotations

from collections.abc import Callable

from mixcore import hookimpl

manifest = {
    "api_version": 1,
    "description": "BLIP-2 image captioning and VQA (vision transformer + Q-Former + OPT or T5)",
}

OPTIONS_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "random_init": {
            "type": "boolean",
            "default": False,
            "description": "Initialise a preset randomly when it has no local weights.",
        },
        "language_model": {
            "enum": ["opt", "t5"],
            "description": "Which PaddleNLP language model decodes the Q-Former output.",
        },
        "config_overrides": {
            "type": "object",
            "description": 'Fields of the preset\'s config to replace, e.g. {"num_query_tokens": 8}.',
        },
    },
}


@hookimpl
def register_models(register: Callable[..., None]) -> None:
    register(
        name="blip2",
        description=manifest["description"],
        options_schema=OPTIONS_SCHEMA,
        capabilities={},
        aliases=["blip2/tiny", "paddlemix/blip2-caption-opt2.7b"],
        model_types=["blip-2", "blip2"],
    )
