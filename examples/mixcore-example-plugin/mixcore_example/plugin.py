"""A third-party dataset plugin: chat conversations stored as JSON Lines.

Each line of a ``.jsonl`` file is one record::

    {"messages": [{"role": "user", "content": "<image>What is this?"},
                  {"role": "assistant", "content": "a cat"}],
     "images": ["images/cat.png"]}

Copy this package to start your own plugin: keep the entry module light (no Paddle, no Pillow at
the top), declare what you bring in ``register_*`` hooks, and do the work in dispatch hooks that
return None for names you do not own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mixcore import hookimpl

manifest = {
    "api_version": 1,
    "description": "Example plugin: chat conversations from JSON Lines files",
    "homepage": "https://example.org/mixcore-example-plugin",
}

DATASET = "jsonl_messages"

OPTIONS_SCHEMA = {
    "type": "object",
    "required": ["data_files"],
    "properties": {
        "data_files": {
            "description": "One .jsonl file or a list of them, relative to the config file.",
            "anyOf": [
                {"type": "string", "format": "path"},
                {"type": "array", "items": {"type": "string", "format": "path"}, "minItems": 1},
            ],
        },
        "system_prompt": {
            "type": "string",
            "description": "A system message put before every conversation.",
        },
        "max_records": {
            "type": "integer",
            "minimum": 1,
            "description": "Read at most this many records per file.",
        },
    },
}


@hookimpl
def register_datasets(register: Callable[..., None]) -> None:
    register(
        name=DATASET,
        description="Chat conversations, one JSON object per line",
        options_schema=OPTIONS_SCHEMA,
    )


@hookimpl
def build_dataset(dataset_name: str, options: dict[str, Any], base_dir: str) -> list | None:
    if dataset_name != DATASET:
        return None
    from mixcore_example.reader import read_jsonl_messages

    files = options["data_files"]
    files = [files] if isinstance(files, str) else files
    return read_jsonl_messages(
        files,
        base_dir=base_dir,
        system_prompt=options.get("system_prompt"),
        max_records=options.get("max_records"),
        label=options.get("label", DATASET),
    )
