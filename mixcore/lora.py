"""LoRA adapters after training: fold them into the base weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mixcore.errors import MixcoreError

#: Written next to a LoRA adapter by `mixcore train` so later commands can find the base model.
LORA_BASE_FILE = "mixcore_lora_base.json"


def read_lora_base(lora_dir: Path) -> dict[str, Any]:
    """The base model a LoRA adapter was trained on (model name, source, options)."""
    path = Path(lora_dir) / LORA_BASE_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MixcoreError(
            f"{lora_dir} has no {LORA_BASE_FILE}; name the base model with --model"
        ) from None
    except (OSError, ValueError) as exc:
        raise MixcoreError(f"cannot read {path}: {exc}") from None


def merge_lora(model: Any, lora_dir: Path) -> Any:
    """Load the adapter in ``lora_dir`` onto ``model`` and fold it in: ``W + A @ B * scale``.

    Layers the adapter kept fully trainable (``trainable_modules``) come back with their trained
    weights. Returns the plain model (no LoRA layers left), whose outputs equal base + LoRA.
    """
    import paddle
    from paddlenlp.peft import LoRAModel
    from paddlenlp.peft.lora.lora_layers import LoRALinear

    if not (Path(lora_dir) / "lora_config.json").is_file():
        raise MixcoreError(f"{lora_dir} is not a LoRA adapter folder (no lora_config.json)")
    wrapped = LoRAModel.from_pretrained(model, str(lora_dir))
    with paddle.no_grad():
        merged = {}
        for name, layer in wrapped.model.named_sublayers():
            if isinstance(layer, LoRALinear):
                delta = layer.lora_A @ layer.lora_B * layer.scaling
                merged[f"{name}.weight"] = (
                    layer.weight + delta if not layer.merged else layer.weight
                )
        state = {
            k: v
            for k, v in wrapped.model.state_dict().items()
            if not k.endswith((".lora_A", ".lora_B"))
        }
        state.update(merged)
        plain = wrapped.restore_original_model()
        plain.set_state_dict(state)
    return plain
