"""Entry module of the ``datasets`` plugin: chatml, COCO captions, VQA and generated shapes.

Only hook definitions, option schemas and the manifest live here; the readers are imported inside
the hooks so that listing plugins stays fast.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mixcore import hookimpl

manifest = {
    "api_version": 1,
    "description": "Built-in datasets: chatml conversations, COCO captions, VQA, generated shapes",
}

#: A data_files string holding a glob wildcard is a pattern, not one file's name.
_GLOB = r"[*?[]"

_DATA_FILE_SCHEMA = {
    "type": "string",
    "minLength": 1,
    # Two branches told apart by their patterns: only a plain name must be an existing file.
    "anyOf": [
        {"pattern": rf"^(?![\s\S]*{_GLOB})", "format": "path"},
        {"pattern": _GLOB, "format": "glob", "description": "A glob such as shards/*.jsonl."},
    ],
}

DATA_FILES_SCHEMA = {
    "description": "A JSON or JSON Lines (.jsonl) file, or several, relative to the config "
    "file's folder; a name may be a glob (shards/*.jsonl, matches in sorted order). A streaming "
    "chatml_dataset also reads webdataset .tar shards.",
    "anyOf": [
        _DATA_FILE_SCHEMA,
        {"type": "array", "items": _DATA_FILE_SCHEMA, "minItems": 1},
    ],
}

#: A string holding a Jinja expression or statement opener is an inline template, not a path.
_JINJA = r"\{\{|\{%"

#: The PaddleNLP ``chat_template.json`` form, given inline.
PADDLENLP_TEMPLATE_SCHEMA = {
    "type": "object",
    "minProperties": 1,
    "additionalProperties": False,
    "properties": {
        "system": {"type": "string", "description": "Jinja template of the system text."},
        "conversation": {
            "type": "array",
            "items": {"type": "string"},
            "minItems": 2,
            "maxItems": 2,
            "description": "Jinja templates of a user turn ({{user}}) and its reply ({{bot}}).",
        },
        "query": {
            "type": "string",
            "description": "Jinja template of a final unanswered user turn ({{query}}).",
        },
    },
}

CHAT_TEMPLATE_SCHEMA = {
    "type": ["string", "object"],
    "minLength": 1,
    "description": "Chat template (default: the model's own, ChatML for Qwen-VL): the path of "
    "a PaddleNLP chat_template.json or a .jinja file, a PaddleNLP template object, or a Hugging "
    "Face-style Jinja template string (any string with '{{' or '{%').",
    # Strings split into two branches, told apart by their patterns (which objects pass): the
    # path branch alone carries "format": "path", so only it names a file that must exist.
    "anyOf": [
        {"pattern": _JINJA, "description": "An inline Hugging Face-style Jinja template."},
        {
            "pattern": rf"^(?![\s\S]*({_JINJA}))",
            "format": "path",
            "description": "A chat_template.json (PaddleNLP form) or .jinja file.",
        },
    ],
    "if": {"type": "object"},
    "then": PADDLENLP_TEMPLATE_SCHEMA,
}

IMAGE_ROOT_SCHEMA = {
    "type": "string",
    "minLength": 1,
    "format": "directory",
    "description": "Folder the records' image paths are relative to (relative to the config "
    "file's folder); images, absolute paths included, may not leave it. Default: each data "
    "file's folder.",
}

CHATML_SCHEMA = {
    "type": "object",
    "required": ["data_files"],
    "properties": {
        "data_files": DATA_FILES_SCHEMA,
        "image_root": IMAGE_ROOT_SCHEMA,
        "format": {
            "enum": ["auto", "chatml", "sharegpt", "llava", "messages", "swift_query"],
            "description": "Record layout: auto (default: told from each record's keys), chatml "
            "(PaddleMIX [user, assistant] pairs), sharegpt or llava ({from, value} turns), "
            "messages ({role, content}) or swift_query (query/response/history).",
        },
        "chat_template": CHAT_TEMPLATE_SCHEMA,
        "extract_dir": {
            "type": "string",
            "minLength": 1,
            "description": "Streaming .tar shards: the folder their image members are extracted "
            "into on first read, relative to the config file's folder (default: "
            ".mixcore-data/webdataset), reused while a shard is unchanged.",
        },
    },
}

COCO_CAPTION_SCHEMA = {
    "type": "object",
    "required": ["data_files"],
    "properties": {
        "data_files": DATA_FILES_SCHEMA,
        "image_root": IMAGE_ROOT_SCHEMA,
        "prompt": {
            "type": "string",
            "minLength": 1,
            "description": "The user text after the image (default: 'Describe the image in one "
            "sentence.').",
        },
        "captions": {
            "enum": ["each", "first"],
            "description": "One sample per caption (each, default) or only the first caption "
            "of every image (first).",
        },
        "split": {
            "description": "Which split(s) of a Karpathy dataset_coco.json to read (required "
            "for such a file, refused for others).",
            "anyOf": [
                {"enum": ["train", "val", "test", "restval"]},
                {
                    "type": "array",
                    "items": {"enum": ["train", "val", "test", "restval"]},
                    "minItems": 1,
                    "uniqueItems": True,
                },
            ],
        },
        "chat_template": CHAT_TEMPLATE_SCHEMA,
    },
}

VQA_SCHEMA = {
    "type": "object",
    "required": ["data_files"],
    "properties": {
        "data_files": DATA_FILES_SCHEMA,
        "image_root": IMAGE_ROOT_SCHEMA,
        "annotations_file": {
            "type": "string",
            "minLength": 1,
            "format": "path",
            "description": "VQA v2 annotations file (answers by question_id), when data_files "
            "are VQA v2 questions files.",
        },
        "image_pattern": {
            "type": "string",
            "pattern": r"\{image_id(:[0-9]*d)?\}",
            "description": "Image file name of a VQA v2 question from its image_id, relative to "
            "image_root, e.g. 'val2014/COCO_val2014_{image_id:012d}.jpg'.",
        },
        "prompt_template": {
            "type": "string",
            "pattern": r"^(?:[^{}]|\{\{|\}\})*\{question\}(?:[^{}]|\{\{|\}\}|\{question\})*$",
            "description": "The user text after the image, with {question} where the question "
            "goes (default: '{question}'); no other fields, literal braces doubled.",
        },
        "chat_template": CHAT_TEMPLATE_SCHEMA,
    },
}

#: The vqa reader's names: its own, and PaddleMIX's for the same data (``coco_vqa``), which the
#: datasets plugin registers as a second kind with the same options (mixcore's registry has no
#: dataset aliases).
VQA_NAMES = ("vqa", "coco_vqa")

QUESTION_TYPES = ["shape", "color", "size", "position"]

SHAPES_SCHEMA = {
    "type": "object",
    "properties": {
        "split": {"enum": ["train", "val", "test"], "description": "Which split to read."},
        "seed": {"type": "integer", "minimum": 0, "description": "Generator seed (default 0)."},
        "train_records": {
            "type": "integer",
            "minimum": 1,
            "maximum": 100000,
            "description": "Records in the train split (default 400).",
        },
        "val_records": {
            "type": "integer",
            "minimum": 1,
            "maximum": 100000,
            "description": "Records in the val split (default 50).",
        },
        "test_records": {
            "type": "integer",
            "minimum": 1,
            "maximum": 100000,
            "description": "Records in the test split (default 200).",
        },
        "image_size": {
            "type": "integer",
            "minimum": 16,
            "maximum": 1024,
            "description": "Side of the square images in pixels (default 56).",
        },
        "question_types": {
            "type": "array",
            "items": {"enum": QUESTION_TYPES},
            "minItems": 1,
            "uniqueItems": True,
            "description": "Question types asked, in rotation (default: shape, color).",
        },
        "format": {
            "enum": ["chatml", "coco", "vqa"],
            "description": "File layout generated and read back: chatml conversations "
            "(default), COCO captions (read as coco_caption) or a VQA list (read as vqa).",
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
        description="Conversations (.json or .jsonl), layout told per record: PaddleMIX "
        "chatml pairs, ShareGPT/LLaVA {from, value} turns, {messages, images} (ms-swift, "
        "LLaMA-Factory) or ms-swift {query, response, history}",
        options_schema=CHATML_SCHEMA,
    )
    register(
        name="coco_caption",
        description="Image captioning: COCO captions files ({images, annotations}), Karpathy "
        "dataset_coco.json (with split) or lists of {image, caption} (.json or .jsonl); one "
        "sample per caption or per image",
        options_schema=COCO_CAPTION_SCHEMA,
    )
    register(
        name="vqa",
        description="Visual question answering: a JSON list of {image, question, answer}; "
        "a list of annotator answers trains on the most common one",
        options_schema=VQA_SCHEMA,
    )
    register(
        name="coco_vqa",
        description="PaddleMIX's name for vqa (its VisualGLM configs use it): the same reader "
        "and options; lists of {image, question, answer} as its coco_vqa reads them",
        options_schema=copy.deepcopy(VQA_SCHEMA),
    )
    register(
        name="synthetic_shapes",
        description="Generated pictures of shapes with one-word questions (no download needed)",
        options_schema=SHAPES_SCHEMA,
    )


def _data_files(options: dict[str, Any], base: Path) -> list[Path]:
    """The entry's data files, globs expanded (each glob's matches sorted by name)."""
    import glob
    import re

    from mixcore.api.errors import DataError

    files = options["data_files"]
    out: list[Path] = []
    for name in [files] if isinstance(files, str) else files:
        if not re.search(_GLOB, name):
            out.append(base / name)
            continue
        pattern = str(base / name)
        found = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        if not found:
            label = options.get("label", "")
            raise DataError(f"no file matches {pattern}", source=f"dataset {label} data_files")
        out.extend(found)
    return out


def _common(options: dict[str, Any], base: Path, dataset_name: str) -> dict[str, Any]:
    """The keyword arguments every reader takes: bad-record policy, label and chat template."""
    from mixcore.kit.templates import resolve_chat_template
    from mixcore_datasets.base import option_source

    label = options.get("label", dataset_name)
    template = options.get("chat_template")
    if template is not None:
        source = option_source(label, "chat_template")
        template = resolve_chat_template(template, base_dir=base, source=source)
    return {
        "on_bad_sample": options.get("on_bad_sample", "error"),
        "label": label,
        "chat_template": template,
    }


def _image_root(options: dict[str, Any], base: Path) -> Path | None:
    return base / options["image_root"] if "image_root" in options else None


@hookimpl
def build_dataset(dataset_name: str, options: dict[str, Any], base_dir: str) -> Any:
    base = Path(base_dir)
    if dataset_name == "chatml_dataset" and options.get("streaming"):
        from mixcore_datasets.streaming import ChatmlShards

        return ChatmlShards(
            _data_files(options, base),
            image_root=_image_root(options, base),
            format=options.get("format", "auto"),
            extract_dir=base / options.get("extract_dir", ".mixcore-data/webdataset"),
            **_common(options, base, dataset_name),
        )
    if dataset_name == "chatml_dataset":
        from mixcore_datasets.chatml import ChatmlDataset

        return ChatmlDataset(
            _data_files(options, base),
            image_root=_image_root(options, base),
            format=options.get("format", "auto"),
            **_common(options, base, dataset_name),
        )
    if dataset_name == "synthetic_shapes":
        files = [_generated_shapes(options, base)]
        layout = options.get("format", "chatml")
        if layout == "coco":
            from mixcore_datasets.coco import DEFAULT_CAPTION_PROMPT, CocoCaptionDataset

            return CocoCaptionDataset(
                files, prompt=DEFAULT_CAPTION_PROMPT, **_common(options, base, dataset_name)
            )
        if layout == "vqa":
            from mixcore_datasets.vqa import VqaDataset

            return VqaDataset(files, **_common(options, base, dataset_name))
        from mixcore_datasets.chatml import ChatmlDataset

        return ChatmlDataset(files, **_common(options, base, dataset_name))
    if dataset_name == "coco_caption":
        from mixcore_datasets.coco import DEFAULT_CAPTION_PROMPT, CocoCaptionDataset

        return CocoCaptionDataset(
            _data_files(options, base),
            image_root=_image_root(options, base),
            prompt=options.get("prompt", DEFAULT_CAPTION_PROMPT),
            captions=options.get("captions", "each"),
            split=options.get("split"),
            **_common(options, base, dataset_name),
        )
    if dataset_name in VQA_NAMES:
        from mixcore_datasets.vqa import DEFAULT_PROMPT_TEMPLATE, VqaDataset

        return VqaDataset(
            _data_files(options, base),
            image_root=_image_root(options, base),
            prompt_template=options.get("prompt_template", DEFAULT_PROMPT_TEMPLATE),
            annotations_file=(
                base / options["annotations_file"] if "annotations_file" in options else None
            ),
            image_pattern=options.get("image_pattern"),
            **_common(options, base, dataset_name),
        )
    return None


#: Marks a folder that synthetic_shapes generated, and with which settings.
SHAPES_MARKER = ".complete"


def _generated_shapes(options: dict[str, Any], base: Path) -> Path:
    """Generate the shapes dataset once per distinct setting and return the split's file."""
    from mixcore.api.errors import DataError
    from mixcore_datasets.synthetic import generate_shapes_dataset

    settings = {
        "seed": options.get("seed", 0),
        "n_train": options.get("train_records", 400),
        "n_val": options.get("val_records", 50),
        "n_test": options.get("test_records", 200),
        "image_size": options.get("image_size", 56),
        "question_types": tuple(options.get("question_types", ("shape", "color"))),
        "format": options.get("format", "chatml"),
    }
    tag = "-".join(str(v) if not isinstance(v, tuple) else "+".join(v) for v in settings.values())
    folder = base / options.get("folder", f".mixcore-data/shapes-{tag}")
    split = folder / f"{options.get('split', 'train')}.json"
    done = folder / SHAPES_MARKER
    # The marker says the folder is the generator's own: written before the first file (so a
    # generation cut short is still recognised as ours), holding the settings once complete.
    # A folder without it belongs to someone else and is never written into.
    if not done.is_file():
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise DataError(
                f"{folder} already exists and was not made by synthetic_shapes (it has no "
                f"{SHAPES_MARKER} marker); its files are left alone: choose another 'folder' "
                "or empty this one",
                source="synthetic_shapes",
            )
        folder.mkdir(parents=True, exist_ok=True)
        done.write_text("generating")
    if done.read_text() != tag:  # generated with other settings, or cut short: regenerate
        generate_shapes_dataset(folder, **settings)
        done.write_text(tag)
    return split
