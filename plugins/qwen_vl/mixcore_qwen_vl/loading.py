"""Build a :class:`~mixcore.api.records.ModelBundle` from a checkpoint folder or a preset name."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from mixcore.api.errors import PluginError
from mixcore.api.records import ModelBundle
from mixcore_qwen_vl.checkpoint import build_model, load_pretrained
from mixcore_qwen_vl.configuration import config_from_preset
from mixcore_qwen_vl.image_processing import QwenVLImageProcessor
from mixcore_qwen_vl.modeling import COMPONENTS, component_pattern
from mixcore_qwen_vl.tokenization import QwenVLTokenizer, write_tiny_vocab

MODEL_NAME = "qwen_vl"
#: Names a config may use for a preset, and the preset each one means.
PRESET_ALIASES = {
    "qwen_vl/tiny": "qwen_vl/tiny",
    "qwen-vl/qwen-vl-chat-7b": "qwen-vl/qwen-vl-chat-7b",
    "Qwen/Qwen-VL-Chat": "qwen-vl/qwen-vl-chat-7b",
}


def load_bundle(source: str, options: dict[str, Any]) -> ModelBundle:
    """Load ``source`` (a local folder, or a preset alias) into a bundle."""
    folder = Path(source).expanduser()
    if folder.is_dir():
        model, tokenizer, processor = load_pretrained(folder)
    elif source in PRESET_ALIASES:
        model, tokenizer, processor = _from_preset(PRESET_ALIASES[source], options)
    else:
        raise PluginError(
            f"{source!r} is neither a local checkpoint folder nor a Qwen-VL preset "
            f"({', '.join(PRESET_ALIASES)})"
        )
    return ModelBundle(
        name=MODEL_NAME,
        model=model,
        tokenizer=tokenizer,
        processor=processor,
        components={c: component_pattern(c) for c in COMPONENTS},
    )


def _from_preset(preset: str, options: dict[str, Any]) -> tuple[Any, Any, Any]:
    config = config_from_preset(preset, **options.get("config_overrides", {}))
    if preset != "qwen_vl/tiny":
        # Fails with the message that says where to put the weights; with random_init the
        # weights could be made, but the real vocabulary cannot.
        build_model(config, random_init=False)
        raise PluginError(
            f"the {preset} preset has no tokenizer here: put its files (qwen.tiktoken and the "
            "weights) in a folder and use that folder as model_name_or_path"
        )
    model = build_model(config, random_init=bool(options.get("random_init", False)))
    # The tiny preset's vocabulary is generated, so it never needs a download.
    vocab = Path(tempfile.mkdtemp(prefix="mixcore-qwen-vl-tiny-vocab-"))
    write_tiny_vocab(vocab)
    tokenizer = QwenVLTokenizer.from_pretrained(str(vocab))
    processor = QwenVLImageProcessor(image_size=int(config.visual["image_size"]))
    return model, tokenizer, processor
