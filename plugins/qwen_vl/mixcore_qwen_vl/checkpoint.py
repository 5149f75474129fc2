"""Reading and writing Qwen-VL checkpoints: mixcore's own folder and Hugging Face's layout.

mixcore format: ``config.json`` (``model_type`` "qwen_vl" plus a ``mixcore`` record of the
plugin that wrote it), ``model.safetensors`` in Paddle names and layouts, the tokenizer files and
``preprocessor_config.json``.

Hugging Face Qwen-VL(-Chat) format: ``config.json`` with ``model_type`` "qwen" and a ``visual``
dict, ``qwen.tiktoken``, and safetensors shards listed in ``model.safetensors.index.json``,
named ``transformer.visual.*``, ``transformer.wte.weight``, ``transformer.h.N.*``,
``transformer.ln_f.weight`` and ``lm_head.weight``. PyTorch stores ``Linear`` weights as
``[out, in]`` and Paddle as ``[in, out]``, so those (and ``lm_head``) are transposed on the way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from paddle import nn
from paddlenlp.transformers.qwen.modeling import QWenLMHead

from mixcore.kit.checkpoints import (
    CONFIG_NAME,
    INDEX_NAME,
    WEIGHTS_NAME,
    building,
    compute_dtype,
    has_weights,
    read_config,
    read_weights,
    write_config,
    write_weights,
)
from mixcore.kit.images import PREPROCESSOR_CONFIG_NAME, ImagePreprocessor
from mixcore.kit.weights import (
    CheckpointError,
    StoredTensor,
    WeightsNotFoundError,
    assign_weights,
    linear_weights,
    parameter_dtype,
    state_tensors,
)
from mixcore_qwen_vl.configuration import QwenVLConfig, config_from_preset
from mixcore_qwen_vl.modeling import QwenVLForConditionalGeneration, ResamplerAttention
from mixcore_qwen_vl.tokenization import VOCAB_FILE_NAME, QwenVLTokenizer

#: Hugging Face's name for the shard index (kept for callers that name the layout).
HF_INDEX_NAME = INDEX_NAME
PLUGIN_NAME = "qwen_vl"
DISTRIBUTION = "mixcore-qwen-vl"

#: Language-model keys shared by Hugging Face's QWen config.json and :class:`QwenVLConfig`.
_HF_LM_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "seq_length",
    "max_position_embeddings",
    "kv_channels",
    "rotary_pct",
    "rotary_emb_base",
    "layer_norm_epsilon",
    "initializer_range",
    "emb_dropout_prob",
    "attn_dropout_prob",
    "scale_attn_weights",
    "use_dynamic_ntk",
    "use_logn_attn",
    "no_bias",
    "tie_word_embeddings",
    "use_cache",
    "eos_token_id",
    "pad_token_id",
    "bos_token_id",
)
#: Rotary frequencies are derived, not learned; older QWen checkpoints still store them.
_HF_IGNORED = re.compile(r"rotary_emb\.inv_freq$")

LoadedCheckpoint = tuple[QwenVLForConditionalGeneration, QwenVLTokenizer, ImagePreprocessor]


# --- building ------------------------------------------------------------------------------


def resolve_config(preset_or_config: str | QwenVLConfig | Mapping[str, Any]) -> QwenVLConfig:
    """A config from a preset name, a config, or a mapping of config fields."""
    if isinstance(preset_or_config, QwenVLConfig):
        return preset_or_config
    if isinstance(preset_or_config, str):
        return config_from_preset(preset_or_config)
    return QwenVLConfig(**dict(preset_or_config))


def build_model(
    preset_or_config: str | QwenVLConfig | Mapping[str, Any],
    *,
    random_init: bool,
    weights_dir: str | Path | None = None,
    dtype: str | None = None,
) -> QwenVLForConditionalGeneration:
    """Build a model of the given size, random or from local weights.

    With ``random_init`` the weights are freshly initialised (seed with ``paddle.seed`` first
    for reproducibility). Otherwise they are read from ``weights_dir`` (either format); mixcore
    never downloads weights, so when there are none this raises :class:`WeightsNotFoundError`
    saying which files to put where.
    """
    config = resolve_config(preset_or_config)
    if random_init:
        with building(dtype, weights_follow=False):
            return QwenVLForConditionalGeneration(config)
    if weights_dir is None or not has_weights(weights_dir):
        label = preset_or_config if isinstance(preset_or_config, str) else "this Qwen-VL config"
        where = f"in {Path(weights_dir).resolve()}" if weights_dir is not None else "in a folder"
        raise WeightsNotFoundError(
            f"no local weights for {label}. Put the Hugging Face Qwen-VL-Chat files (config.json, "
            f"{VOCAB_FILE_NAME}, the model-*.safetensors shards and {HF_INDEX_NAME}) or a mixcore "
            f"checkpoint (config.json, {WEIGHTS_NAME}, {VOCAB_FILE_NAME}) {where} and pass that "
            "folder as model_name_or_path, or ask for random initialisation. mixcore never "
            "downloads weights."
        )
    with building(dtype, weights_follow=True):
        model = QwenVLForConditionalGeneration(config)
    folder = Path(weights_dir)
    if _is_hf_folder(folder):
        _assign_hf_weights(model, folder)
    else:
        assign_weights(model, read_weights(folder), str(folder / WEIGHTS_NAME))
    return model


def load_pretrained(folder: str | Path, dtype: str | None = None) -> LoadedCheckpoint:
    """Load a checkpoint folder in whichever format it is (see :func:`detect_format`)."""
    if detect_format(folder) == "hf":
        return load_hf_checkpoint(folder, dtype=dtype)
    return load_checkpoint(folder, dtype=dtype)


def detect_format(folder: str | Path) -> str:
    """``"mixcore"`` or ``"hf"``, from the folder's config.json."""
    config = read_config(folder)
    if config.get("model_type") == QwenVLConfig.model_type:
        return "mixcore"
    if config.get("model_type") == "qwen" and "visual" in config:
        return "hf"
    raise CheckpointError(
        f"{Path(folder) / CONFIG_NAME} has model_type {config.get('model_type')!r}: expected "
        f"'{QwenVLConfig.model_type}' (mixcore) or 'qwen' with a 'visual' entry (Hugging Face "
        "Qwen-VL)"
    )


# --- mixcore format ------------------------------------------------------------------------


def save_checkpoint(
    model: QwenVLForConditionalGeneration,
    tokenizer: QwenVLTokenizer | None,
    processor: ImagePreprocessor | None,
    folder: str | Path,
    *,
    model_name: str = PLUGIN_NAME,
) -> Path:
    """Write a mixcore-format checkpoint into ``folder`` (created if needed); returns it.

    ``model_name`` is recorded as the model that wrote the folder (a plugin built on this one
    under another name passes its own), so the registry resolves the folder to it."""
    _require_plain_model(model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = json.loads(model.config.to_json_string(use_diff=True))
    config["model_type"] = QwenVLConfig.model_type
    config["architectures"] = [type(model).__name__]
    config["torch_dtype"] = parameter_dtype(model)
    write_config(folder, config, plugin=PLUGIN_NAME, model=model_name, distribution=DISTRIBUTION)
    write_weights(folder, state_tensors(model), metadata={"mixcore_plugin": PLUGIN_NAME})
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    if processor is not None:
        processor.save_pretrained(folder)
    return folder


def load_checkpoint(folder: str | Path, dtype: str | None = None) -> LoadedCheckpoint:
    """Load a mixcore-format checkpoint: ``(model, tokenizer, processor)``."""
    folder = Path(folder)
    fields = read_config(folder)
    if fields.get("model_type") != QwenVLConfig.model_type:
        raise CheckpointError(
            f"{folder / CONFIG_NAME} is not a mixcore Qwen-VL checkpoint (model_type "
            f"{fields.get('model_type')!r}); Hugging Face folders load with load_hf_checkpoint"
        )
    stored_dtype = fields.pop("torch_dtype", None)
    for key in ("mixcore", "model_type", "architectures", "quantization_config"):
        fields.pop(key, None)
    config = QwenVLConfig(**fields)
    if not has_weights(folder):
        raise WeightsNotFoundError(
            f"{folder / WEIGHTS_NAME} is missing; the checkpoint is incomplete"
        )
    with building(dtype or compute_dtype(stored_dtype), weights_follow=True):
        model = QwenVLForConditionalGeneration(config)
    assign_weights(model, read_weights(folder), str(folder))
    return model, _load_tokenizer(folder, config), _load_processor(folder, config)


# --- Hugging Face format -------------------------------------------------------------------


def hf_name(name: str) -> str:
    """Hugging Face Qwen-VL's name for one of this model's state-dict names."""
    if name.startswith("visual."):
        return "transformer." + name
    if name.startswith("llm.qwen."):
        return "transformer." + name.removeprefix("llm.qwen.")
    if name.startswith("llm.lm_head."):
        return name.removeprefix("llm.")
    raise CheckpointError(f"{name} has no Hugging Face Qwen-VL counterpart")


def model_name_from_hf(name: str) -> str | None:
    """This model's name for a Hugging Face Qwen-VL tensor name (None: not a Qwen-VL name)."""
    if name.startswith("transformer.visual."):
        return name.removeprefix("transformer.")
    if name.startswith("transformer."):
        return "llm.qwen." + name.removeprefix("transformer.")
    if name.startswith("lm_head."):
        return "llm." + name
    return None


def transposed_weights(model: nn.Layer) -> frozenset[str]:
    """Names of weights Paddle stores ``[in, out]`` where PyTorch stores ``[out, in]``."""
    resampler = {
        f"{prefix}.in_proj_weight"
        for prefix, layer in model.named_sublayers()
        if isinstance(layer, ResamplerAttention)
    }
    return linear_weights(model, (QWenLMHead,)) | resampler


def config_from_hf(hf_config: Mapping[str, Any]) -> QwenVLConfig:
    """Convert a Hugging Face Qwen-VL config.json into :class:`QwenVLConfig`."""
    if hf_config.get("model_type") != "qwen" or "visual" not in hf_config:
        raise CheckpointError(
            "not a Hugging Face Qwen-VL config: expected model_type 'qwen' and a 'visual' entry"
        )
    fields = {key: hf_config[key] for key in _HF_LM_KEYS if hf_config.get(key) is not None}
    fields["visual"] = dict(hf_config["visual"])
    return QwenVLConfig(**fields)


def config_to_hf(config: QwenVLConfig) -> dict[str, Any]:
    """The Hugging Face Qwen-VL config.json equivalent of ``config``."""
    hf = {
        "architectures": ["QWenLMHeadModel"],
        "model_type": "qwen",
        "tokenizer_type": "QWenTokenizer",
    }
    hf.update(
        {key: getattr(config, key) for key in _HF_LM_KEYS if getattr(config, key, None) is not None}
    )
    hf["visual"] = {**config.visual, "image_start_id": config.image_start_id}
    return hf


def write_hf_checkpoint(
    model: QwenVLForConditionalGeneration,
    folder: str | Path,
    shards: int = 2,
    tokenizer: QwenVLTokenizer | None = None,
) -> Path:
    """Write ``model`` in Hugging Face Qwen-VL's layout, split into ``shards`` files.

    The inverse of :func:`load_hf_checkpoint` (renamed, ``Linear`` weights transposed back to
    ``[out, in]``, an index mapping every tensor to its shard); with ``tokenizer`` its
    ``qwen.tiktoken`` is written too. Returns the folder.
    """
    _require_plain_model(model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    transposed = transposed_weights(model)
    tensors = {
        hf_name(name): stored.transposed() if name in transposed else stored
        for name, stored in state_tensors(model).items()
    }
    write_weights(folder, tensors, shards=shards, metadata={"format": "pt"})
    hf_config = config_to_hf(model.config)
    (folder / CONFIG_NAME).write_text(json.dumps(hf_config, indent=2) + "\n", encoding="utf-8")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    return folder


def load_hf_checkpoint(folder: str | Path, dtype: str | None = None) -> LoadedCheckpoint:
    """Load a Hugging Face Qwen-VL(-Chat) folder: ``(model, tokenizer, processor)``.

    Reads safetensors without torch; ``dtype`` is the parameter dtype to build (default:
    Paddle's default dtype), whatever dtype the files hold.
    """
    folder = Path(folder)
    hf_config = read_config(folder)
    config = config_from_hf(hf_config)
    with building(dtype or compute_dtype(hf_config.get("torch_dtype")), weights_follow=True):
        model = QwenVLForConditionalGeneration(config)
    _assign_hf_weights(model, folder)
    return model, _load_tokenizer(folder, config), _load_processor(folder, config)


def read_hf_weights(folder: str | Path) -> dict[str, StoredTensor]:
    """All tensors of a Hugging Face folder: safetensors or PyTorch ``.bin`` files, sharded
    (with an index) or single, read by the toolkit (``.bin`` without torch and without running
    any pickle code)."""
    return read_weights(folder)


def _assign_hf_weights(model: QwenVLForConditionalGeneration, folder: Path) -> None:
    assign_weights(
        model,
        read_hf_weights(folder),
        str(folder),
        to_model_name=model_name_from_hf,
        to_stored_name=hf_name,
        transposed=transposed_weights(model),
        ignore=_HF_IGNORED,
    )


def _is_hf_folder(folder: Path) -> bool:
    return (folder / CONFIG_NAME).is_file() and detect_format(folder) == "hf"


# --- helpers -------------------------------------------------------------------------------


def _load_tokenizer(folder: Path, config: QwenVLConfig) -> QwenVLTokenizer:
    if not (folder / VOCAB_FILE_NAME).is_file():
        raise CheckpointError(f"{folder / VOCAB_FILE_NAME} is missing: the tokenizer is needed")
    tokenizer = QwenVLTokenizer.from_pretrained(str(folder))
    if tokenizer.img_start_id != config.image_start_id:
        raise CheckpointError(
            f"{folder}: the tokenizer's <img> id {tokenizer.img_start_id} differs from the "
            f"config's image_start_id {config.image_start_id}; the vocabulary does not belong "
            "to this model"
        )
    return tokenizer


def image_preprocessor(config: QwenVLConfig) -> ImagePreprocessor:
    """Qwen-VL's transform: RGB, bicubic resize to the tower's square, CLIP mean and std."""
    return ImagePreprocessor(int(config.visual["image_size"]))


def _load_processor(folder: Path, config: QwenVLConfig) -> ImagePreprocessor:
    if (folder / PREPROCESSOR_CONFIG_NAME).is_file():
        return ImagePreprocessor.from_pretrained(folder)
    return image_preprocessor(config)


def _require_plain_model(model: Any) -> None:
    if not isinstance(model, QwenVLForConditionalGeneration):
        raise CheckpointError(
            f"expected a QwenVLForConditionalGeneration, got {type(model).__name__}; merge LoRA "
            "weights into the base model before saving a full checkpoint"
        )
