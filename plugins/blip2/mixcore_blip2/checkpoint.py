"""BLIP-2 checkpoint folders: the Hugging Face ``Salesforce/blip2-*`` layout, read and written.

mixcore writes BLIP-2 in the layout it reads: Hugging Face names and ``[out, in]`` Linear
weights in safetensors (sharded with an index when large), ``config.json`` with
``model_type: blip-2`` plus mixcore's record of the writer, the tokenizer's files and
``preprocessor_config.json``. So a downloaded folder and a trained one load the same way, and a
trained one stays readable by transformers. ``.bin`` weights are read through the toolkit's
code-free reader; nothing here imports torch.

Name mapping: ``vision_model.*``, ``query_tokens``, ``qformer.*`` and ``language_projection.*``
are the same in both; ``language_model.*`` maps through the family's module
(:mod:`mixcore_blip2.opt_language`, :mod:`mixcore_blip2.t5_language`). The vision attention's
bias is stored either as ``q_bias`` / ``v_bias`` (checkpoints written by transformers 4) or as
one fused ``qkv.bias`` (transformers 5, key third zero); both load, and the fused form's key
third must be zero.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mixcore.api.constants import MODEL_RECORD_KEY
from mixcore.kit.checkpoints import (
    CONFIG_NAME,
    building,
    compute_dtype,
    distribution_of,
    has_weights,
    read_config,
    read_weights,
    write_config,
    write_weights,
)
from mixcore.kit.images import CLIP_MEAN, CLIP_STD, ImagePreprocessor
from mixcore.kit.weights import (
    CheckpointError,
    StoredTensor,
    WeightsNotFoundError,
    assign_weights,
    from_paddle,
    linear_weights,
    parameter_dtype,
)
from mixcore_blip2.configuration import MODEL_TYPE, Blip2Config

PLUGIN_NAME = "blip2"
PREPROCESSOR_NAME = "preprocessor_config.json"
_FUSED_BIAS = re.compile(r"^(vision_model\.encoder\.layers\.\d+\.self_attn)\.qkv\.bias$")
#: Bigger than this is written in shards (published BLIP-2 folders are sharded too).
SHARD_BYTES = 2 * 1024**3


def _family_names(family: str) -> tuple[Any, Any]:
    if family == "opt":
        from mixcore_blip2.opt_language import hf_opt_name, paddle_opt_name

        return paddle_opt_name, hf_opt_name
    from mixcore_blip2.t5_language import hf_t5_name, paddle_t5_name

    return paddle_t5_name, hf_t5_name


def model_name_of(hf_name: str, family: str) -> str | None:
    """The model's parameter name for a Hugging Face BLIP-2 weight name (None: not a weight of
    this model)."""
    if hf_name.startswith("language_model."):
        inner = _family_names(family)[0](hf_name.removeprefix("language_model."))
        return None if inner is None else "language_model." + inner
    return hf_name


def hf_name_of(model_name: str, family: str) -> str:
    """The Hugging Face name of one of the model's parameters."""
    if model_name.startswith("language_model."):
        return "language_model." + _family_names(family)[1](
            model_name.removeprefix("language_model.")
        )
    return model_name


def split_fused_biases(stored: Mapping[str, StoredTensor]) -> dict[str, StoredTensor]:
    """``stored`` with each fused vision ``qkv.bias`` split into ``q_bias`` and ``v_bias``."""
    out: dict[str, StoredTensor] = {}
    for name, tensor in stored.items():
        fused = _FUSED_BIAS.match(name)
        if fused is None:
            out[name] = tensor
            continue
        data = tensor.data
        third = data.shape[0] // 3
        key_bias = data[third : 2 * third]
        if tensor.dtype != "BF16" and np.any(key_bias != 0):
            raise CheckpointError(
                f"{name}: the key third of the fused bias is not zero; BLIP-2's vision "
                "attention has no key bias"
            )
        out[f"{fused.group(1)}.q_bias"] = StoredTensor(
            np.ascontiguousarray(data[:third]), tensor.dtype
        )
        out[f"{fused.group(1)}.v_bias"] = StoredTensor(
            np.ascontiguousarray(data[2 * third :]), tensor.dtype
        )
    return out


def _tied_head_names(model: Any) -> set[str]:
    """Names under which the model holds the same tensor as its word embeddings (a tied head)."""
    embedding = model.get_input_embeddings().weight
    state = model.state_dict()
    return {
        name
        for name, tensor in state.items()
        if tensor is embedding and name.startswith("language_model.") and "lm_head" in name
    }


def assign_hf_weights(model: Any, stored: Mapping[str, StoredTensor], source: str) -> None:
    """Fill ``model`` from Hugging Face-named tensors (every weight must be there once)."""
    family = model.family
    stored = split_fused_biases(stored)
    tied = _tied_head_names(model)
    if tied:
        # A tied head is stored once, as the embeddings; a separate copy (older files) must match.
        for name in list(stored):
            if model_name_of(name, family) in tied:
                stored.pop(name)
    if family == "t5":
        from mixcore_blip2.t5_language import complete_t5_weights

        stored = complete_t5_weights(stored, model)
    transposed = linear_weights(model)
    skip = re.compile(r"(^|\.)position_ids$")
    state_names = set(model.state_dict())

    def to_model(name: str) -> str | None:
        mapped = model_name_of(name, family)
        return mapped if mapped in state_names and mapped not in tied else None

    assign_weights(
        _WithoutNames(model, tied),
        stored,
        source,
        to_model_name=to_model,
        to_stored_name=lambda n: hf_name_of(n, family),
        transposed=transposed,
        ignore=skip,
    )


class _WithoutNames:
    """A view of a model whose ``state_dict`` leaves some names out (a tied head's second
    name, which assign_weights would otherwise call missing)."""

    def __init__(self, model: Any, hidden: set[str]) -> None:
        self._model, self._hidden = model, hidden

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self._model.state_dict().items() if k not in self._hidden}


def hf_state(model: Any) -> dict[str, StoredTensor]:
    """The model's weights under Hugging Face names, Linear weights as ``[out, in]``; a tied
    head is left out (it is the embeddings)."""
    family = model.family
    tied = _tied_head_names(model)
    transposed = linear_weights(model)
    out: dict[str, StoredTensor] = {}
    for name, tensor in model.state_dict().items():
        if name in tied:
            continue
        stored = from_paddle(tensor)
        out[hf_name_of(name, family)] = stored.transposed() if name in transposed else stored
    return out


# --- building, loading, saving ----------------------------------------------------------------


#: ``architectures`` entry of a stage-1 (Q-Former pretraining) folder.
PRETRAINING_ARCHITECTURE = "Blip2QFormerPretraining"


def build_model(
    config: Blip2Config, *, random_init: bool, dtype: str | None = None, pretraining: bool = False
) -> Any:
    """A model of ``config``'s sizes (the stage-1 model when ``pretraining``); random (seed with
    ``paddle.seed`` first) or empty for weights that follow."""
    from mixcore_blip2.modeling import Blip2ForConditionalGeneration
    from mixcore_blip2.pretraining import Blip2QFormerPretraining

    model_class = Blip2QFormerPretraining if pretraining else Blip2ForConditionalGeneration
    with building(dtype, weights_follow=not random_init):
        return model_class(config)


def config_from_fields(fields: Mapping[str, Any]) -> Blip2Config:
    fields = {k: v for k, v in fields.items() if k not in (MODEL_RECORD_KEY, "architectures")}
    fields.pop("model_type", None)
    return Blip2Config(**fields)


def image_preprocessor(config: Blip2Config) -> ImagePreprocessor:
    """BLIP-2's image processor: bicubic resize to the vision size, CLIP mean and std."""
    size = int(config.vision_config.get("image_size", 224))
    return ImagePreprocessor(size, CLIP_MEAN, CLIP_STD, resample="bicubic")


def load_folder(folder: str | Path, dtype: str | None = None) -> tuple[Any, Any, Any]:
    """``(model, tokenizer, processor)`` from a BLIP-2 folder, downloaded or mixcore's."""
    from mixcore_blip2.tokenization import load_tokenizer

    folder = Path(folder)
    fields = read_config(folder)
    if fields.get("model_type") not in (MODEL_TYPE, "blip2"):
        raise CheckpointError(
            f"{folder / CONFIG_NAME} has model_type {fields.get('model_type')!r}, not "
            f"{MODEL_TYPE!r}: it is not a BLIP-2 checkpoint"
        )
    config = config_from_fields(fields)
    if not has_weights(folder):
        raise WeightsNotFoundError(
            f"{folder} has a BLIP-2 config.json but no weights (model.safetensors, its "
            "shards with model.safetensors.index.json, or pytorch_model.bin)"
        )
    tokenizer = load_tokenizer(folder, config.family)
    if config.image_token_index is None:
        config.image_token_index = unused_token_id(config, tokenizer)
    stored_dtype = fields.get("torch_dtype")
    model = build_model(
        config,
        random_init=False,
        dtype=dtype or compute_dtype(stored_dtype),
        pretraining=PRETRAINING_ARCHITECTURE in (fields.get("architectures") or ()),
    )
    assign_hf_weights(model, read_weights(folder), str(folder))
    processor = (
        ImagePreprocessor.from_pretrained(folder)
        if (folder / PREPROCESSOR_NAME).is_file()
        else image_preprocessor(config)
    )
    return model, tokenizer, processor


def unused_token_id(config: Blip2Config, tokenizer: Any) -> int:
    """An id the language model embeds but the tokenizer never produces: the placeholder of
    configs that predate ``image_token_index`` (their code prepended the query outputs)."""
    vocab = int(config.text_config["vocab_size"])
    if len(tokenizer) < vocab:
        return len(tokenizer)
    raise CheckpointError(
        "the config has no image_token_index and the tokenizer uses every id of the language "
        f"model's {vocab}-row embedding table: set image_token_index in config.json"
    )


def save_folder(
    model: Any, tokenizer: Any, processor: Any, folder: str | Path, *, model_name: str
) -> Path:
    """Write ``model`` (with its tokenizer and processor) as :func:`load_folder` reads it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    config.pop(MODEL_RECORD_KEY, None)
    config.update(
        model_type=MODEL_TYPE,
        architectures=[type(model).__name__],
        torch_dtype=parameter_dtype(model),
    )
    for key in ("paddlenlp_version", "dtype", "tensor_parallel_output"):
        config.pop(key, None)
    state = hf_state(model)
    size = sum(t.data.nbytes for t in state.values())
    write_config(
        folder,
        config,
        plugin=PLUGIN_NAME,
        model=model_name,
        distribution=distribution_of(type(model)),
    )
    write_weights(folder, state, shards=max(1, -(-size // SHARD_BYTES)))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    if processor is not None:
        processor.save_pretrained(folder)
    return folder
