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
    weights. Returns a plain model of ``model``'s own class (no LoRA layers), whose outputs equal
    base + adapter up to float32 rounding. ``model`` itself is consumed.
    """
    import copy

    import paddle
    from paddlenlp.peft import LoRAModel
    from paddlenlp.peft.lora.lora_layers import LoRALinear

    if not (Path(lora_dir) / "lora_config.json").is_file():
        raise MixcoreError(f"{lora_dir} is not a LoRA adapter folder (no lora_config.json)")
    # LoRAModel swaps layers inside the model it wraps; the copy keeps the original layout
    # (PaddleNLP's restore_original_model gives back Linear layers with biases they never had).
    plain = copy.deepcopy(model)
    wrapped = LoRAModel.from_pretrained(model, str(lora_dir))
    with paddle.no_grad():
        state = wrapped.model.state_dict()
        for name, layer in wrapped.model.named_sublayers():
            if isinstance(layer, LoRALinear) and not layer.merged:
                state[f"{name}.weight"] = layer.weight + layer.lora_A @ layer.lora_B * layer.scaling
        wanted = plain.state_dict()
        missing = sorted(set(wanted) - set(state))
        if missing:
            raise MixcoreError(f"the adapter left weights undefined: {', '.join(missing[:5])}")
        plain.set_state_dict({name: state[name] for name in wanted})
    return plain
