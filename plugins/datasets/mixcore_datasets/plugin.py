"""Entry module of the ``datasets`` plugin: chatml conversations and generated shapes VQA data.

Only hook definitions, option schemas and the manifest live here; the readers are imported inside
the hooks so that listing plugins stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mixcore import hookimpl

manifest = {
    "api_version": 1,
    "description": "Built-in datasets: PaddleMIX chatml conversations, generated shapes VQA",
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

CHAT_TEMPLATE_SCHEMA = {
    "type": "string",
    "minLength": 1,
    "format": "path",
    "description": "Path of a PaddleNLP chat_template.json; the model's own template "
    "(ChatML for Qwen-VL) when absent.",
}

CHATML_SCHEMA = {
    "type": "object",
    "required": ["data_files"],
    "properties": {"data_files": DATA_FILES_SCHEMA, "chat_template": CHAT_TEMPLATE_SCHEMA},
}

QUESTION_TYPES = ["shape", "color", "size", "position"]

SHAPES_SCHEMA = {
    "type": "object",
    "properties": {
        "split": {"enum": ["train", "val", "test"], "description": "Which split to read."},
        "seed": {"type": "integer", "minimum": 0, "description": "Generator seed (default 0)."},
        "train_records": {"type": "integer", "minimum": 1, "maximum": 100000},
        "val_records": {"type": "integer", "minimum": 1, "maximum": 100000},
        "test_records": {"type": "integer", "minimum": 1, "maximum": 100000},
        "image_size": {"type": "integer", "minimum": 16, "maximum": 1024},
        "question_types": {
            "type": "array",
            "items": {"enum": QUESTION_TYPES},
            "minItems": 1,
            "uniqueItems": True,
        },
        "folder": {
            "type": "string",
            "minLength": 1,
            "description": "Where the generated files go, relative to the config file "
            "(default: .mixcore-data/shapes-<settings>). Reused when already generated.",
        },
        "chat_template": CHAT_TEMPLATE_SCHEMA,
    },
}


@hookimpl
def register_datasets(register: Callable[..., None]) -> None:
    register(
        name="chatml_dataset",
        description="PaddleMIX chatml: a JSON list of {image, conversations: [[user, bot], ...]}",
        options_schema=CHATML_SCHEMA,
    )
    register(
        name="synthetic_shapes",
        description="Generated pictures of shapes with one-word questions (no download needed)",
        options_schema=SHAPES_SCHEMA,
    )


def _template(options: dict[str, Any], base: Path) -> dict[str, Any] | None:
    if "chat_template" not in options:
        return None
    from mixcore.data.templates import load_chat_template

    return load_chat_template(base / options["chat_template"])


@hookimpl
def build_dataset(dataset_name: str, options: dict[str, Any], base_dir: str) -> Any:
    if dataset_name == "chatml_dataset":
        files = options["data_files"]
        files = [files] if isinstance(files, str) else files
        data_files = [Path(base_dir) / f for f in files]
    elif dataset_name == "synthetic_shapes":
        data_files = [_generated_shapes(options, Path(base_dir))]
    else:
        return None
    from mixcore_datasets.chatml import ChatmlDataset

    return ChatmlDataset(
        data_files,
        on_bad_sample=options.get("on_bad_sample", "error"),
        label=options.get("label", dataset_name),
        chat_template=_template(options, Path(base_dir)),
    )


def _generated_shapes(options: dict[str, Any], base: Path) -> Path:
    """Generate the shapes dataset once per distinct setting and return the split's file."""
    from mixcore_datasets.synthetic import generate_shapes_dataset

    settings = {
        "seed": options.get("seed", 0),
        "n_train": options.get("train_records", 400),
        "n_val": options.get("val_records", 50),
        "n_test": options.get("test_records", 200),
        "image_size": options.get("image_size", 56),
        "question_types": tuple(options.get("question_types", ("shape", "color"))),
    }
    tag = "-".join(str(v) if not isinstance(v, tuple) else "+".join(v) for v in settings.values())
    folder = base / options.get("folder", f".mixcore-data/shapes-{tag}")
    split = folder / f"{options.get('split', 'train')}.json"
    done = folder / ".complete"
    if not done.exists():
        generate_shapes_dataset(folder, **settings)
        done.write_text(tag)
    return split
