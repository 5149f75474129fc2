"""Build tiny random Hugging Face BLIP-2 models and their reference logits.

Runs INSIDE the separate torch + transformers venv (see ``build_env.py``); it imports
nothing from mixcore and needs no network. Usage::

    python make_reference.py OUT_DIR

For each variant (``opt``, ``t5``) it writes::

    OUT_DIR/<variant>/            save_pretrained(..., safe_serialization=True)
    OUT_DIR/<variant>-bin/        the same weights as pytorch_model.bin
    OUT_DIR/<variant>/reference.npz   inputs and fp32 logits
    OUT_DIR/<variant>/facts.json      config facts and the saved key layout
    OUT_DIR/manifest.json             versions and the list of variants
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import safetensors
import safetensors.torch
import torch
import transformers
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    OPTConfig,
    T5Config,
)

SEED = 0
VOCAB = 128
NUM_QUERY_TOKENS = 4
IMAGE_TOKEN_INDEX = VOCAB - 1  # placeholder id for each query output in input_ids
BATCH = 2
TEXT_LEN = 6  # text tokens after the placeholders (OPT: BOS included)
DECODER_LEN = 5


def vision_config() -> Blip2VisionConfig:
    return Blip2VisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=28,
        patch_size=14,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
        attention_dropout=0.0,
        qkv_bias=True,
    )


def qformer_config() -> Blip2QFormerConfig:
    return Blip2QFormerConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=64,
        layer_norm_eps=1e-12,
        cross_attention_frequency=2,
    )


def opt_text_config() -> OPTConfig:
    return OPTConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        ffn_dim=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        word_embed_proj_dim=32,
        do_layer_norm_before=True,
        dropout=0.0,
        attention_dropout=0.0,
        activation_function="relu",
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=2,
        tie_word_embeddings=True,
    )


def t5_text_config() -> T5Config:
    return T5Config(
        vocab_size=VOCAB,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        dropout_rate=0.0,
        layer_norm_epsilon=1e-6,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )


def blip2_config(text_config) -> Blip2Config:
    return Blip2Config(
        vision_config=vision_config().to_dict(),
        qformer_config=qformer_config().to_dict(),
        text_config=text_config.to_dict(),
        num_query_tokens=NUM_QUERY_TOKENS,
        image_token_index=IMAGE_TOKEN_INDEX,
    )


@torch.no_grad()
def randomize(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Give every parameter random values, so parity cannot pass by a zero or a one.

    HF initialises query_tokens, biases and LayerNorm to constants; a loader that
    dropped them would still match. The vision attention's fused ``qkv.bias`` keeps
    its key third at zero: the architecture has no key bias (q_bias and v_bias only).
    """
    norm_params = set()
    for mod_name, module in model.named_modules():
        if "LayerNorm" in type(module).__name__ or "RMSNorm" in type(module).__name__:
            norm_params.update(f"{mod_name}.{p}" for p, _ in module.named_parameters(recurse=False))
    for name, param in model.named_parameters():
        noise = torch.randn(param.shape, generator=generator) * 0.1
        if name in norm_params and name.endswith("weight"):
            param.copy_(1.0 + noise)
        elif name.endswith("bias"):
            param.copy_(noise)
        elif name == "query_tokens":
            param.copy_(noise * 10)
        # other weights keep HF's seeded init (std 0.02 normals, conv default)
    # OPT's tied embedding at std 0.02 gives logits of about 0.1; scale it to sharpen the
    # comparison (the padding row, zero in HF, stays zero).
    if model.config.use_decoder_only_language_model:
        model.get_input_embeddings().weight.mul_(25.0)
    for name, module in model.named_modules():
        if (
            name.startswith("vision_model")
            and hasattr(module, "qkv")
            and module.qkv.bias is not None
        ):
            d = module.qkv.bias.shape[0] // 3
            module.qkv.bias[d : 2 * d] = 0.0


def inputs(variant: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    pixel_values = rng.standard_normal((BATCH, 3, 28, 28)).astype(np.float32)
    placeholders = np.full((BATCH, NUM_QUERY_TOKENS), IMAGE_TOKEN_INDEX, dtype=np.int64)
    if variant == "opt":
        bos = np.full((BATCH, 1), 2, dtype=np.int64)
        text = rng.integers(4, IMAGE_TOKEN_INDEX, size=(BATCH, TEXT_LEN - 1), dtype=np.int64)
        input_ids = np.concatenate([placeholders, bos, text], axis=1)
        pad_id = 1
    else:
        text = rng.integers(4, IMAGE_TOKEN_INDEX, size=(BATCH, TEXT_LEN - 1), dtype=np.int64)
        eos = np.full((BATCH, 1), 1, dtype=np.int64)
        input_ids = np.concatenate([placeholders, text, eos], axis=1)
        pad_id = 0
    attention_mask = np.ones_like(input_ids)
    # the second sample is right-padded by two tokens
    attention_mask[1, -2:] = 0
    input_ids[1, -2:] = pad_id
    out = {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention_mask}
    if variant == "t5":
        dec = rng.integers(4, IMAGE_TOKEN_INDEX, size=(BATCH, DECODER_LEN), dtype=np.int64)
        dec[:, 0] = 0  # decoder_start_token_id
        out["decoder_input_ids"] = dec
    return out


def write_bin_copy(folder: Path, bin_folder: Path) -> None:
    """The same tensors under the same keys as a torch pickle ``pytorch_model.bin``.

    transformers 5 ignores ``safe_serialization=False`` (it always writes safetensors),
    so the ``.bin`` is written with ``torch.save`` from the saved safetensors file.
    """
    bin_folder.mkdir(parents=True, exist_ok=True)
    state = safetensors.torch.load_file(str(folder / "model.safetensors"))
    torch.save(state, bin_folder / "pytorch_model.bin")
    for name in ("config.json", "generation_config.json"):
        if (folder / name).exists():
            shutil.copy(folder / name, bin_folder / name)


def key_layout(folder: Path) -> dict[str, list[int]]:
    with safetensors.safe_open(str(folder / "model.safetensors"), framework="np") as f:
        return {k: list(f.get_slice(k).get_shape()) for k in sorted(f.keys())}


def build(variant: str, out: Path) -> dict:
    torch.manual_seed(SEED)
    text_config = opt_text_config() if variant == "opt" else t5_text_config()
    config = blip2_config(text_config)
    model = Blip2ForConditionalGeneration(config)
    randomize(model, torch.Generator().manual_seed(SEED + 1))
    model.eval()

    folder = out / variant
    model.save_pretrained(folder, safe_serialization=True)
    write_bin_copy(folder, out / f"{variant}-bin")

    arrays = inputs(variant, np.random.default_rng(SEED))
    torch_inputs = {k: torch.from_numpy(v) for k, v in arrays.items()}
    with torch.no_grad():
        result = model(**torch_inputs, return_dict=True)
        image_features = model.get_image_features(torch_inputs["pixel_values"], return_dict=True)
    logits = result.logits.detach().float().numpy()
    np.savez(
        folder / "reference.npz",
        **arrays,
        logits=logits,
        vision_last_hidden_state=result.vision_outputs.last_hidden_state.float().numpy(),
        qformer_last_hidden_state=result.qformer_outputs.last_hidden_state.float().numpy(),
        language_model_inputs=image_features.pooler_output.float().numpy(),
    )

    layout = key_layout(folder)
    facts = {
        "variant": variant,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "model_type": config.model_type,
        "text_model_type": config.text_config.model_type,
        "use_decoder_only_language_model": config.use_decoder_only_language_model,
        "vision_hidden_size": config.vision_config.hidden_size,
        "image_size": config.vision_config.image_size,
        "patch_size": config.vision_config.patch_size,
        "qformer_hidden_size": config.qformer_config.hidden_size,
        "cross_attention_frequency": config.qformer_config.cross_attention_frequency,
        "text_hidden_size": config.text_config.hidden_size,
        "vocab_size": config.text_config.vocab_size,
        "num_query_tokens": config.num_query_tokens,
        "image_token_index": config.image_token_index,
        "query_insertion": (
            "placeholder: input_ids carry num_query_tokens copies of image_token_index; their "
            "embeddings are replaced (masked_scatter, in order) by language_projection(query_output). "
            "Nothing is prepended: logits.shape[1] == input_ids.shape[1]"
            + (" (encoder side; logits are decoder logits)" if variant == "t5" else "")
        ),
        "logits_shape": list(logits.shape),
        "compare_where": "attention_mask == 1 (OPT: per token; T5: all decoder positions)",
        "safetensors_keys": layout,
    }
    (folder / "facts.json").write_text(json.dumps(facts, indent=2) + "\n")
    return facts


def main(argv: list[str]) -> int:
    out = Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    variants = {}
    for variant in ("opt", "t5"):
        facts = build(variant, out)
        variants[variant] = {
            "logits_shape": facts["logits_shape"],
            "num_keys": len(facts["safetensors_keys"]),
        }
    manifest = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "variants": variants,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
