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
    StateSubset,
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


LANGUAGE_PREFIX = "language_model."


def _language_io(model: Any) -> tuple[Any, Any]:
    """The family's (load weights, Hugging Face state) functions for the language model."""
    if model.config.family == "opt":
        from mixcore_blip2.opt_language import hf_opt_state, load_opt_weights

        return load_opt_weights, hf_opt_state
    from mixcore_blip2.t5_language import hf_t5_state, load_t5_weights

    return load_t5_weights, hf_t5_state


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
        if np.any(data[third : 2 * third] != 0):  # bf16 bit patterns of zero are zero too
            raise CheckpointError(
                f"{name}: the key third of the fused bias is not zero; BLIP-2's vision "
                "attention has no key bias"
            )
        prefix = fused.group(1)
        out[f"{prefix}.q_bias"] = StoredTensor(np.ascontiguousarray(data[:third]), tensor.dtype)
        out[f"{prefix}.v_bias"] = StoredTensor(
            np.ascontiguousarray(data[2 * third :]), tensor.dtype
        )
    return out


def assign_hf_weights(model: Any, stored: Mapping[str, StoredTensor], source: str) -> None:
    """Fill ``model`` from Hugging Face-named tensors, refusing missing, unexpected or
    misshapen ones (every weight must be there)."""
    stored = split_fused_biases(stored)
    language = {
        k.removeprefix(LANGUAGE_PREFIX): v
        for k, v in stored.items()
        if k.startswith(LANGUAGE_PREFIX)
    }
    image_side = {k: v for k, v in stored.items() if not k.startswith(LANGUAGE_PREFIX)}
    has_language = hasattr(model, "language_model")
    if not has_language:
        image_side.update({LANGUAGE_PREFIX + k: v for k, v in language.items()})
    assign_weights(
        StateSubset(model, lambda name: not name.startswith(LANGUAGE_PREFIX)),
        image_side,
        source,
        transposed=linear_weights(model),
        ignore=re.compile(r"(^|\.)position_ids$"),
    )
    if has_language:
        load, _ = _language_io(model)
        load(model.language_model, language, source)


def fuse_vision_biases(state: Mapping[str, StoredTensor]) -> dict[str, StoredTensor]:
    """``state`` with each vision layer's ``q_bias`` and ``v_bias`` written as one fused
    ``qkv.bias`` (``q | 0 | v``), the form transformers 5 reads (it ignores the split one)."""
    out: dict[str, StoredTensor] = {}
    for name, tensor in state.items():
        if name.startswith("vision_model.") and name.endswith(".self_attn.v_bias"):
            continue
        if name.startswith("vision_model.") and name.endswith(".self_attn.q_bias"):
            prefix = name.removesuffix(".q_bias")
            value = state[f"{prefix}.v_bias"]
            fused = np.concatenate([tensor.data, np.zeros_like(tensor.data), value.data])
            out[f"{prefix}.qkv.bias"] = StoredTensor(fused, tensor.dtype)
            continue
        out[name] = tensor
    return out


def hf_state(model: Any) -> dict[str, StoredTensor]:
    """The model's weights under Hugging Face names, Linear weights as ``[out, in]``, the vision
    attention's bias fused (:func:`fuse_vision_biases`)."""
    transposed = linear_weights(model)
    out: dict[str, StoredTensor] = {}
    for name, tensor in model.state_dict().items():
        if name.startswith(LANGUAGE_PREFIX):
            continue
        stored = from_paddle(tensor)
        out[name] = stored.transposed() if name in transposed else stored
    out = fuse_vision_biases(out)
    if hasattr(model, "language_model"):
        _, state = _language_io(model)
        out.update({LANGUAGE_PREFIX + k: v for k, v in state(model.language_model).items()})
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


def load_stage1_qformer(model: Any, folder: str | Path) -> None:
    """Start stage 2 from stage 1: copy the vision transformer, the query tokens and the
    Q-Former (its query side; stage 1's text side has no use here) of a stage-1 folder into
    ``model``, as LAVIS starts stage 2 from the stage-1 checkpoint. Every such weight of
    ``model`` must be there with its shape."""
    folder = Path(folder)

    def carried(name: str) -> bool:
        return name == "query_tokens" or name.startswith(("qformer.", "vision_model."))

    wanted = {name for name in model.state_dict() if carried(name)}
    stored = {
        name: tensor
        for name, tensor in split_fused_biases(read_weights(folder)).items()
        if name in wanted
    }
    assign_weights(
        StateSubset(model, lambda name: name in wanted),
        stored,
        f"{folder} (stage-1 model)",
        transposed=linear_weights(model),
    )


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
    # Only BLIP-2's own fields: PaddleNLP's generic ones (quantization_config, parallel degrees,
    # generation defaults) would make transformers refuse or misread the folder.
    source = model.config
    config = {
        "model_type": MODEL_TYPE,
        "architectures": [type(model).__name__],
        "vision_config": dict(source.vision_config),
        "qformer_config": dict(source.qformer_config),
        "text_config": dict(source.text_config),
        "num_query_tokens": source.num_query_tokens,
        "image_token_index": source.image_token_index,
        "initializer_range": source.initializer_range,
        "use_decoder_only_language_model": source.use_decoder_only_language_model,
        "torch_dtype": parameter_dtype(model),
    }
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
