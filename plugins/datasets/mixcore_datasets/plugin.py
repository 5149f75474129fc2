"""Entry module of the ``datasets`` plugin: chatml conversations with images.

Only hook definitions and the manifest live here; readers are imported inside the hooks.
"""

from __future__ import annotations

from collections.abc import Callable

from mixcore import hookimpl

manifest = {
    "api_version": 1,
    "description": "Built-in datasets: PaddleMIX chatml conversations with images",
}

DATA_FILES_SCHEMA = {
    "description": "A JSON file (or several) relative to the config file's folder.",
    "anyOf": [
        {"type": "string", "minLength": 1, "format": "path"},
        {
            "type": "array",
            "items": {"type": "string", "minLength": 1, "format": "path"},
            "minItems": 1,
        },
    ],
}

CHATML_SCHEMA = {
    "type": "object",
    "required": ["data_files"],
    "properties": {
        "data_files": DATA_FILES_SCHEMA,
        "chat_template": {
            "type": "string",
            "minLength": 1,
            "format": "path",
            "description": "Path of a PaddleNLP chat_template.json; the model's own template "
            "(ChatML for Qwen-VL) when absent.",
        },
    },
}


@hookimpl
def register_datasets(register: Callable[..., None]) -> None:
    register(
        name="chatml_dataset",
        description="PaddleMIX chatml: a JSON list of {image, conversations: [[user, bot], ...]}",
        options_schema=CHATML_SCHEMA,
    )
