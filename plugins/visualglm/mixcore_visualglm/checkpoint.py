"""VisualGLM checkpoint folders: the Hugging Face ``THUDM/visualglm-6b`` layout, read and written.

THUDM's folder holds ChatGLM-6B's config with the image side added (``eva_config``,
``qformer_config``, ``image_length``; ``model_type: chatglm``), ``ice_text.model`` and the
weights as ``pytorch_model-*.bin`` shards (read here by the toolkit's code-free reader, never
unpickled) or safetensors. mixcore writes the same layout (safetensors), so a downloaded folder
and a trained one load the same way.

Weight names are SwissArmyTransformer's, since THUDM's ``image_encoder`` is SAT's ``BLIP2``:

============================================================  =================================
THUDM                                                         mixcore
============================================================  =================================
``transformer.*``, ``lm_head.weight``                         ``language_model.*`` (see
                                                              :mod:`~mixcore_visualglm.chatglm_language`)
``image_encoder.vit.transformer.word_embeddings.weight``      ``vision_model.embeddings.class_embedding``
``image_encoder.vit.transformer.position_embeddings.weight``  ``vision_model.embeddings.position_embedding``
``image_encoder.vit.mixins.patch_embedding.proj.*``           ``vision_model.embeddings.patch_embedding.*``
``image_encoder.vit.transformer.layers.N.*``                  ``vision_model.encoder.layers.N.*``
``image_encoder.vit.mixins.cls.ln_vision.*``                  ``vision_model.post_layernorm.*``
``image_encoder.qformer.transformer.word_embeddings.weight``  ``query_tokens``
``image_encoder.qformer.transformer.layers.N.*``              ``qformer.encoder.layer.N.*``
``image_encoder.qformer.transformer.final_layernorm.*``       ``qformer.final_layernorm.*``
``image_encoder.glm_proj.*``                                  ``language_projection.*``
============================================================  =================================

SAT fuses projections the toolkit keeps apart: the Q-Former's ``query_key_value`` (split into
``query`` / ``key`` / ``value``) and its cross-attention's ``key_value``. The ViT's fused bias
``query_key_value.bias`` is ``q | k | v``; the toolkit keeps the query and value parts only,
because a bias on the keys adds the same amount to every score of a query's softmax and so
changes nothing (mixcore writes that third as zeros).
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
from mixcore_visualglm.configuration import (
    ARCHITECTURE,
    CHATGLM_KEYS,
    PUBLISHED_MODEL_TYPE,
    VisualGLMConfig,
)

PLUGIN_NAME = "visualglm"
PREPROCESSOR_NAME = "preprocessor_config.json"
#: Bigger than this is written in shards (THUDM's folder is sharded too).
SHARD_BYTES = 2 * 1024**3
#: What a folder's ``model_type`` may say.
MODEL_TYPES = (PUBLISHED_MODEL_TYPE, "visualglm")

VIT, QFORMER, PROJECTION = "image_encoder.vit.", "image_encoder.qformer.", "image_encoder.glm_proj."
LANGUAGE_PREFIX = "language_model."

#: Whole-tensor renames of the image side: THUDM name -> mixcore name.
_FIXED: dict[str, str] = {
    VIT + "transformer.word_embeddings.weight": "vision_model.embeddings.class_embedding",
    VIT + "transformer.position_embeddings.weight": "vision_model.embeddings.position_embedding",
    VIT + "mixins.patch_embedding.proj.weight": "vision_model.embeddings.patch_embedding.weight",
    VIT + "mixins.patch_embedding.proj.bias": "vision_model.embeddings.patch_embedding.bias",
    VIT + "mixins.cls.ln_vision.weight": "vision_model.post_layernorm.weight",
    VIT + "mixins.cls.ln_vision.bias": "vision_model.post_layernorm.bias",
    QFORMER + "transformer.word_embeddings.weight": "query_tokens",
    QFORMER + "transformer.final_layernorm.weight": "qformer.final_layernorm.weight",
    QFORMER + "transformer.final_layernorm.bias": "qformer.final_layernorm.bias",
    PROJECTION + "weight": "language_projection.weight",
    PROJECTION + "bias": "language_projection.bias",
}
#: Stored 2-D, held with a leading axis of 1 in the model.
_UNSQUEEZED = {
    "vision_model.embeddings.class_embedding",
    "vision_model.embeddings.position_embedding",
    "query_tokens",
}
#: Per-layer renames (the part between ``layers.N.`` and ``.weight`` / ``.bias``).
_VIT_LAYER = {
    "input_layernorm": "layer_norm1",
    "attention.dense": "self_attn.projection",
    "post_attention_layernorm": "layer_norm2",
    "mlp.dense_h_to_4h": "mlp.fc1",
    "mlp.dense_4h_to_h": "mlp.fc2",
}
_QFORMER_LAYER = {
    "input_layernorm": "input_layernorm",
    "attention.dense": "attention.output.dense",
    "post_attention_layernorm": "attention.output.LayerNorm",
    "cross_attention.query": "crossattention.attention.query",
    "cross_attention.dense": "crossattention.output.dense",
    "post_cross_attention_layernorm": "crossattention.output.LayerNorm",
    "mlp.dense_h_to_4h": "intermediate_query.dense",
    "mlp.dense_4h_to_h": "output_query.dense",
}
#: Fused Q-Former projections: THUDM part -> (mixcore prefix, the parts in stored order).
_QFORMER_FUSED = {
    "attention.query_key_value": ("attention.attention", ("query", "key", "value")),
    "cross_attention.key_value": ("crossattention.attention", ("key", "value")),
}
_LAYER = re.compile(r"transformer\.layers\.(\d+)\.(.+)\.(weight|bias)")
_VIT_QKV = "attention.query_key_value"


def _rows(tensor: StoredTensor, parts: int) -> list[StoredTensor]:
    """``tensor`` cut into ``parts`` equal pieces along its first axis."""
    return [
        StoredTensor(np.ascontiguousarray(piece), tensor.dtype)
        for piece in np.split(tensor.data, parts, axis=0)
    ]


def _reshaped(tensor: StoredTensor, shape: tuple[int, ...]) -> StoredTensor:
    return StoredTensor(np.ascontiguousarray(tensor.data.reshape(shape)), tensor.dtype)


def image_side_from_thudm(stored: Mapping[str, StoredTensor]) -> dict[str, StoredTensor]:
    """THUDM's image-side tensors under mixcore's names (Linear weights still ``[out, in]``).
    Names no rule knows are kept as they are, so the loader reports them as unexpected."""
    out: dict[str, StoredTensor] = {}
    for name, tensor in stored.items():
        if name in _FIXED:
            ours = _FIXED[name]
            out[ours] = _reshaped(tensor, (1, *tensor.shape)) if ours in _UNSQUEEZED else tensor
            continue
        for prefix, ours_prefix, renames in (
            (VIT, "vision_model.encoder.layers", _VIT_LAYER),
            (QFORMER, "qformer.encoder.layer", _QFORMER_LAYER),
        ):
            layer = _LAYER.fullmatch(name[len(prefix) :]) if name.startswith(prefix) else None
            if layer is None:
                continue
            number, part, kind = layer.groups()
            base = f"{ours_prefix}.{number}"
            if prefix == VIT and part == _VIT_QKV:
                if kind == "weight":
                    out[f"{base}.self_attn.qkv.weight"] = tensor
                else:
                    query, _, value = _rows(tensor, 3)
                    out[f"{base}.self_attn.q_bias"] = query
                    out[f"{base}.self_attn.v_bias"] = value
            elif prefix == QFORMER and part in _QFORMER_FUSED:
                fused, names = _QFORMER_FUSED[part]
                for piece_name, piece in zip(names, _rows(tensor, len(names)), strict=True):
                    out[f"{base}.{fused}.{piece_name}.{kind}"] = piece
            elif part in renames:
                out[f"{base}.{renames[part]}.{kind}"] = tensor
            else:
                out[name] = tensor
            break
        else:
            out[name] = tensor
    return out


def thudm_name(ours: str) -> str:
    """THUDM's name of a mixcore image-side weight (for a split one, the fused tensor's)."""
    for theirs, mine in _FIXED.items():
        if mine == ours:
            return theirs
    bias = re.fullmatch(r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.[qv]_bias", ours)
    if bias:
        return f"{VIT}transformer.layers.{bias.group(1)}.{_VIT_QKV}.bias"
    vit = re.fullmatch(r"vision_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", ours)
    if vit:
        number, part, kind = vit.groups()
        renames = {"self_attn.qkv": _VIT_QKV, **{m: t for t, m in _VIT_LAYER.items()}}
        if part in renames:
            return f"{VIT}transformer.layers.{number}.{renames[part]}.{kind}"
    qformer = re.fullmatch(r"qformer\.encoder\.layer\.(\d+)\.(.+)\.(weight|bias)", ours)
    if qformer:
        number, part, kind = qformer.groups()
        renames = {m: t for t, m in _QFORMER_LAYER.items()}
        for theirs, (fused, names) in _QFORMER_FUSED.items():
            renames.update({f"{fused}.{n}": theirs for n in names})
        if part in renames:
            return f"{QFORMER}transformer.layers.{number}.{renames[part]}.{kind}"
    return ours


def thudm_image_state(model: Any) -> dict[str, StoredTensor]:
    """The image side of ``model`` under THUDM's names (``[out, in]`` Linear weights, fused
    projections fused again, the ViT's key bias zero)."""
    transposed = linear_weights(model)
    ours = {}
    for name, tensor in model.state_dict().items():
        if name.startswith(LANGUAGE_PREFIX):
            continue
        stored = from_paddle(tensor)
        ours[name] = stored.transposed() if name in transposed else stored
    out: dict[str, StoredTensor] = {}
    for theirs, mine in _FIXED.items():
        tensor = ours.pop(mine)
        out[theirs] = _reshaped(tensor, tensor.shape[1:]) if mine in _UNSQUEEZED else tensor
    layers = re.compile(r"(vision_model\.encoder\.layers|qformer\.encoder\.layer)\.(\d+)\.")
    numbers = sorted({(m.group(1), int(m.group(2))) for n in ours if (m := layers.match(n))})
    for stack, number in numbers:
        base = f"{stack}.{number}"
        if stack.startswith("vision_model"):
            prefix = f"{VIT}transformer.layers.{number}"
            query, value = (
                ours.pop(f"{base}.self_attn.q_bias"),
                ours.pop(f"{base}.self_attn.v_bias"),
            )
            fused = np.concatenate([query.data, np.zeros_like(query.data), value.data])
            out[f"{prefix}.{_VIT_QKV}.bias"] = StoredTensor(fused, query.dtype)
            out[f"{prefix}.{_VIT_QKV}.weight"] = ours.pop(f"{base}.self_attn.qkv.weight")
            renames: Mapping[str, str] = _VIT_LAYER
        else:
            prefix = f"{QFORMER}transformer.layers.{number}"
            for theirs, (fused_name, names) in _QFORMER_FUSED.items():
                for kind in ("weight", "bias"):
                    parts = [ours.pop(f"{base}.{fused_name}.{n}.{kind}", None) for n in names]
                    if all(p is not None for p in parts):
                        data = np.concatenate([p.data for p in parts], axis=0)
                        out[f"{prefix}.{theirs}.{kind}"] = StoredTensor(data, parts[0].dtype)
            renames = _QFORMER_LAYER
        for theirs, mine in renames.items():
            for kind in ("weight", "bias"):
                tensor = ours.pop(f"{base}.{mine}.{kind}", None)
                if tensor is not None:
                    out[f"{prefix}.{theirs}.{kind}"] = tensor
    if ours:
        raise CheckpointError(f"no THUDM name for {sorted(ours)[:5]}")
    return out


def thudm_state(model: Any) -> dict[str, StoredTensor]:
    """Every weight of ``model`` under THUDM's names."""
    from mixcore_visualglm.chatglm_language import hf_chatglm_state

    return {**thudm_image_state(model), **hf_chatglm_state(model.language_model)}


def assign_thudm_weights(model: Any, stored: Mapping[str, StoredTensor], source: str) -> None:
    """Fill ``model`` from THUDM-named tensors, refusing missing, unexpected or misshapen ones
    (every weight must be there)."""
    from mixcore_visualglm.chatglm_language import load_chatglm_weights

    image = {k: v for k, v in stored.items() if k.startswith("image_encoder.")}
    language = {k: v for k, v in stored.items() if not k.startswith("image_encoder.")}
    assign_weights(
        StateSubset(model, lambda name: not name.startswith(LANGUAGE_PREFIX)),
        image_side_from_thudm(image),
        source,
        to_stored_name=thudm_name,
        transposed=linear_weights(model),
    )
    load_chatglm_weights(model.language_model, language, source)


# --- building, loading, saving ----------------------------------------------------------------


def build_model(config: VisualGLMConfig, *, random_init: bool, dtype: str | None = None) -> Any:
    """A model of ``config``'s sizes; random (seed with ``paddle.seed`` first) or empty for
    weights that follow."""
    from mixcore_visualglm.modeling import VisualGLMForConditionalGeneration

    with building(dtype, weights_follow=not random_init):
        return VisualGLMForConditionalGeneration(config)


def config_from_fields(fields: Mapping[str, Any]) -> VisualGLMConfig:
    dropped = (MODEL_RECORD_KEY, "architectures", "model_type", "auto_map", "torch_dtype")
    return VisualGLMConfig(**{k: v for k, v in fields.items() if k not in dropped})


def image_preprocessor(config: VisualGLMConfig) -> ImagePreprocessor:
    """VisualGLM's image processor (``BlipImageEvalProcessor``): bicubic resize to the ViT's
    size, CLIP mean and std."""
    return ImagePreprocessor(
        int(config.vision()["image_size"]), CLIP_MEAN, CLIP_STD, resample="bicubic"
    )


def load_folder(folder: str | Path, dtype: str | None = None) -> tuple[Any, Any, Any]:
    """``(model, tokenizer, processor)`` from a VisualGLM folder, THUDM's or mixcore's."""
    from mixcore_visualglm.tokenization import load_tokenizer, special_ids

    folder = Path(folder)
    fields = read_config(folder)
    if fields.get("model_type") not in MODEL_TYPES:
        raise CheckpointError(
            f"{folder / CONFIG_NAME} has model_type {fields.get('model_type')!r}, not "
            f"{PUBLISHED_MODEL_TYPE!r}: it is not a VisualGLM checkpoint"
        )
    if not isinstance(fields.get("eva_config"), dict) or not isinstance(
        fields.get("qformer_config"), dict
    ):
        raise CheckpointError(
            f"{folder / CONFIG_NAME} is a ChatGLM config without VisualGLM's image side "
            "(eva_config and qformer_config): a plain ChatGLM-6B folder, not VisualGLM"
        )
    try:
        config = config_from_fields(fields)
        config.vision(), config.qformer()
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{folder / CONFIG_NAME}: {exc}") from None
    if not has_weights(folder):
        raise WeightsNotFoundError(
            f"{folder} has a VisualGLM config.json but no weights (model.safetensors, "
            "pytorch_model.bin, or their shards with an index)"
        )
    tokenizer = load_tokenizer(folder)
    if config.image_token_id is None:
        config.image_token_id = special_ids(tokenizer).smask
    model = build_model(
        config, random_init=False, dtype=dtype or compute_dtype(fields.get("torch_dtype"))
    )
    assign_thudm_weights(model, read_weights(folder), str(folder))
    processor = (
        ImagePreprocessor.from_pretrained(folder)
        if (folder / PREPROCESSOR_NAME).is_file()
        else image_preprocessor(config)
    )
    return model, tokenizer, processor


def published_config(model: Any) -> dict[str, Any]:
    """``model``'s config.json fields, in THUDM's layout (ChatGLM's keys at the top level)."""
    source = model.config
    return {
        "model_type": PUBLISHED_MODEL_TYPE,
        "architectures": [ARCHITECTURE],
        **{
            key: getattr(source, key)
            for key in CHATGLM_KEYS
            if getattr(source, key, None) is not None
        },
        "eva_config": dict(source.eva_config),
        "qformer_config": dict(source.qformer_config),
        "image_length": source.image_length,
        "image_token_id": source.image_token_id,
        "initializer_range": source.initializer_range,
        "torch_dtype": parameter_dtype(model),
    }


def save_folder(
    model: Any, tokenizer: Any, processor: Any, folder: str | Path, *, model_name: str
) -> Path:
    """Write ``model`` (with its tokenizer and processor) as :func:`load_folder` reads it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = thudm_state(model)
    size = sum(t.data.nbytes for t in state.values())
    write_config(
        folder,
        published_config(model),
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
