"""BLIP-2 for ``mixcore export``: its parts as Paddle static programs, and the prompt side.

Parts (roles of :data:`mixcore.api.EXPORT_ROLES`): ``embed`` is the language model's token
table and ``vision`` the ViT, Q-Former and projection (any number of images). OPT is
``causal``: its ``language`` part has a fixed sequence length, because PaddleNLP's OPT builds
its mask with a Python ``if`` on the sequence length, which a traced dynamic length cannot
take. Flan-T5 is ``encoder_decoder``: the ``encoder`` (prompt embeddings -> states) and the
``decoder`` (answer ids so far and the encoder's states -> logits) trace with dynamic lengths.
A stage-1 (``task: pretrain``) model has no language model and does not export.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import paddle
from paddle import nn

from mixcore.api import ModelBundle, ModelExport, TensorSpec, UsageError
from mixcore.api.records import ExportPart
from mixcore.kit.checkpoints import read_config
from mixcore.kit.images import ImagePreprocessor
from mixcore.kit.nn.export import (
    ImageFeatures,
    embed_part,
    export_length,
    vision_part,
    write_processing_files,
)
from mixcore_blip2.checkpoint import (
    PREPROCESSOR_NAME,
    config_from_fields,
    image_preprocessor,
)
from mixcore_blip2.configuration import MODEL_TYPE
from mixcore_blip2.features import Blip2Encoder, stop_ids
from mixcore_blip2.t5_language import _encode, t5_lm_logits
from mixcore_blip2.tokenization import load_tokenizer


class _OPTLanguage(nn.Layer):
    """PaddleNLP's OPT on embeddings of a fixed length, its causal mask built here.

    ``OPTModel.forward`` derives the mask with an ``if`` on ``paddle.shape(...)`` that leaves
    a variable None on one branch, which tracing refuses; for one unpadded row of known length
    the mask is the plain causal one, so the embeddings, the decoder layers and the head are
    called directly (as ``OPTModel.forward`` and ``TransformerDecoder.forward`` call them)."""

    def __init__(self, opt: nn.Layer) -> None:
        super().__init__()
        self.opt = opt

    def forward(self, inputs_embeds: paddle.Tensor) -> paddle.Tensor:
        batch, length = inputs_embeds.shape[0], inputs_embeds.shape[1]
        model = self.opt.opt
        real = paddle.ones([batch, length], dtype="int64")
        embeds = model.embeddings(
            input_ids=None,
            attention_mask=real,
            input_embeddings=inputs_embeds,
            past_key_values_length=0,
        )
        lowest = float(np.finfo(np.float32).min)
        causal = paddle.triu(paddle.full([length, length], lowest, dtype="float32"), diagonal=1)
        mask = causal.unsqueeze([0, 1])
        decoder = model.decoder
        # The decoder's own loop records each output's name for recomputation, which a traced
        # value does not have; its layers are called as that loop calls them.
        hidden = embeds
        for layer in decoder.layers:
            hidden = layer(hidden, None, tgt_mask=mask, use_cache=False, cache=None)
        if decoder.final_layer_norm:
            hidden = decoder.final_layer_norm(hidden)
        if decoder.project_out:
            hidden = decoder.project_out(hidden)
        return self.opt.lm_head(hidden)


class _T5Encoder(nn.Layer):
    def __init__(self, t5: nn.Layer) -> None:
        super().__init__()
        self.t5 = t5

    def forward(self, inputs_embeds: paddle.Tensor) -> paddle.Tensor:
        mask = paddle.ones(paddle.shape(inputs_embeds)[:2], dtype="int64")
        return _encode(self.t5, inputs_embeds, mask)


class _T5Decoder(nn.Layer):
    def __init__(self, t5: nn.Layer) -> None:
        super().__init__()
        self.t5 = t5

    def forward(
        self, decoder_input_ids: paddle.Tensor, encoder_hidden_states: paddle.Tensor
    ) -> paddle.Tensor:
        hidden = self.t5.t5.decoder(
            input_ids=decoder_input_ids,
            encoder_hidden_states=encoder_hidden_states,
            use_cache=False,
            return_dict=True,
        ).last_hidden_state
        return t5_lm_logits(self.t5, hidden)


def export_parts(bundle: ModelBundle, folder: str, max_length: int | None) -> ModelExport:
    """The parts of a loaded BLIP-2, with its prompt-side files written into ``folder``."""
    model = bundle.model
    if type(model).__name__ == "Blip2QFormerPretraining":
        raise UsageError(
            "a stage-1 (task pretrain) BLIP-2 has no language model to export: export a "
            "generation model (stage 2)"
        )
    config = model.config
    family = config.family
    size = int(config.vision_config.get("image_size", 224))
    hidden = int(model.get_input_embeddings().weight.shape[1])
    parts = [
        embed_part(model),
        vision_part(ImageFeatures(model, "image_features"), size),
    ]
    notes = []
    decoder_start = None
    if family == "opt":
        limit = int(config.text_config["max_position_embeddings"])
        max_length = export_length(max_length, limit, "max_position_embeddings")
        parts.append(
            ExportPart(
                "language",
                _OPTLanguage(model.language_model),
                (TensorSpec("inputs_embeds", (1, max_length, hidden), "float32"),),
            )
        )
        decoding = "causal"
        notes.append(
            f"the OPT language part takes exactly {max_length} positions (PaddleNLP's OPT traces "
            "with fixed shapes only); shorter sequences are padded on the right"
        )
    else:
        parts += [
            ExportPart(
                "encoder",
                _T5Encoder(model.language_model),
                (TensorSpec("inputs_embeds", (1, None, hidden), "float32"),),
            ),
            ExportPart(
                "decoder",
                _T5Decoder(model.language_model),
                (
                    TensorSpec("decoder_input_ids", (1, None), "int64"),
                    TensorSpec("encoder_hidden_states", (1, None, hidden), "float32"),
                ),
            ),
        ]
        decoding = "encoder_decoder"
        max_length = export_length(max_length, None, "")
        decoder_start = int(model.language_model.t5.config["decoder_start_token_id"])
    write_processing(bundle, Path(folder))
    tokenizer = bundle.tokenizer
    return ModelExport(
        parts=parts,
        decoding=decoding,
        image_token_id=model.image_token_id,
        tokens_per_image=int(config.num_query_tokens),
        stop_ids=stop_ids(tokenizer, family),
        vocab_size=len(tokenizer),
        decoder_start_token_id=decoder_start,
        max_length=max_length,
        notes=notes,
    )


def write_processing(bundle: ModelBundle, folder: Path) -> None:
    """BLIP-2's config (no weights), tokenizer and image processor files."""
    source = bundle.model.config
    config = {
        "model_type": MODEL_TYPE,
        "vision_config": dict(source.vision_config),
        "qformer_config": dict(source.qformer_config),
        "text_config": dict(source.text_config),
        "num_query_tokens": source.num_query_tokens,
        "image_token_index": source.image_token_index,
        "use_decoder_only_language_model": source.use_decoder_only_language_model,
    }
    write_processing_files(folder, config, bundle)


def load_processing(name: str, folder: str) -> ModelBundle:
    """The bundle (no model) that encodes prompts as the exported BLIP-2 was trained on."""
    folder_path = Path(folder)
    config = config_from_fields(read_config(folder_path))
    tokenizer = load_tokenizer(folder_path, config.family)
    if (folder_path / PREPROCESSOR_NAME).is_file():
        processor = ImagePreprocessor.from_pretrained(folder_path)
    else:
        processor = image_preprocessor(config)
    encoder = Blip2Encoder(
        tokenizer, config.family, config.num_query_tokens, config.image_token_index
    )
    return ModelBundle(
        name=name, model=None, tokenizer=tokenizer, processor=processor, extras={"encoder": encoder}
    )
