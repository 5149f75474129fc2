"""Entry module of the ``visualglm`` plugin: VisualGLM (EVA ViT + Q-Former + ChatGLM-6B).

The model itself arrives in a later milestone; until its hooks exist this plugin registers the
model with its option schema and claims no capability, so ``mixcore plugins list`` tells the
truth about what works.
"""

from __future__ import annotations

from collections.abc import Callable

from mixcore import hookimpl

manifest = {
    "api_version": 1,
    "description": "VisualGLM chat model (vision transformer + Q-Former + ChatGLM)",
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
        "config_overrides": {
            "type": "object",
            "description": "Fields of the preset's config to replace.",
        },
    },
}


@hookimpl
def register_models(register: Callable[..., None]) -> None:
    register(
        name="visualglm",
        description=manifest["description"],
        options_schema=OPTIONS_SCHEMA,
        capabilities={},
        aliases=["visualglm/tiny", "THUDM/visualglm-6b"],
        model_types=["visualglm"],
    )
