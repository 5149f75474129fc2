"""Qwen-VL for ``mixcore export``: its parts as Paddle static programs, and the prompt side.

Parts (roles of :data:`mixcore.api.EXPORT_ROLES`): ``embed`` is QWen's token table, ``vision``
the ViT with the resampler (one image per call: its position tables are resized with sizes
computed in Python, which tracing needs as numbers), ``language`` PaddleNLP's QWen on
``inputs_embeds``. The language part has a fixed sequence length: PaddleNLP's QWen grows its
rotary cos/sin cache inside ``forward`` when a longer sequence arrives, and a traced dynamic
length turns that into a graph branch that writes layer state, so the length is fixed at
``max_length`` (at most the model's ``seq_length``, where its dynamic NTK scaling stays off)
and the caches are filled for it before tracing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import paddle
from paddle import nn

from mixcore.api import ModelBundle, ModelExport, TensorSpec
from mixcore.api.records import ExportPart
from mixcore.kit.checkpoints import read_config
from mixcore.kit.images import PREPROCESSOR_CONFIG_NAME, ImagePreprocessor
from mixcore.kit.nn.export import (
    ImageFeatures,
    embed_part,
    export_length,
    vision_part,
    warm_rotary_caches,
    write_processing_files,
)
from mixcore_qwen_vl.checkpoint import _load_tokenizer, image_preprocessor
from mixcore_qwen_vl.configuration import QwenVLConfig
from mixcore_qwen_vl.features import conversation_encoder, stop_ids


class _Language(nn.Layer):
    def __init__(self, llm: nn.Layer) -> None:
        super().__init__()
        self.llm = llm

    def forward(self, inputs_embeds: paddle.Tensor) -> paddle.Tensor:
        return self.llm(inputs_embeds=inputs_embeds, use_cache=False, return_dict=True).logits


def export_parts(bundle: ModelBundle, folder: str, max_length: int | None) -> ModelExport:
    """The parts of a loaded Qwen-VL, with its prompt-side files written into ``folder``."""
    model = bundle.model
    config = model.config
    max_length = export_length(max_length, int(config.seq_length), "seq_length")
    write_processing(bundle, Path(folder))
    size = int(config.visual["image_size"])
    hidden = int(model.llm.config.hidden_size)
    warm_rotary_caches(model.llm, max_length)
    tokenizer = bundle.tokenizer
    return ModelExport(
        parts=[
            embed_part(model),
            vision_part(ImageFeatures(model.visual), size, images=1),
            ExportPart(
                "language",
                _Language(model.llm),
                (TensorSpec("inputs_embeds", (1, max_length, hidden), "float32"),),
            ),
        ],
        decoding="causal",
        image_token_id=int(config.image_pad_id),
        tokens_per_image=int(config.n_queries),
        stop_ids=tuple(int(i) for i in stop_ids(tokenizer)),
        vocab_size=len(tokenizer),
        max_length=max_length,
        notes=[
            f"the language part takes exactly {max_length} positions (PaddleNLP's QWen traces "
            "with fixed shapes only); shorter sequences are padded on the right"
        ],
    )


def write_processing(bundle: ModelBundle, folder: Path) -> None:
    """The config (no weights), tokenizer and image processor files."""
    model = bundle.model
    config = json.loads(model.config.to_json_string(use_diff=True))
    config["model_type"] = QwenVLConfig.model_type
    write_processing_files(folder, config, bundle)


def load_processing(name: str, folder: str) -> ModelBundle:
    """The bundle (no model) that encodes prompts as the exported Qwen-VL was trained on."""
    folder_path = Path(folder)
    fields: dict[str, Any] = read_config(folder_path)
    for key in ("mixcore", "model_type", "architectures", "torch_dtype", "quantization_config"):
        fields.pop(key, None)
    config = QwenVLConfig(**fields)
    tokenizer = _load_tokenizer(folder_path, config)
    if (folder_path / PREPROCESSOR_CONFIG_NAME).is_file():
        processor = ImagePreprocessor.from_pretrained(folder_path)
    else:
        processor = image_preprocessor(config)
    return ModelBundle(
        name=name,
        model=None,
        tokenizer=tokenizer,
        processor=processor,
        extras={"encoder": conversation_encoder(tokenizer, config.n_queries)},
    )
