"""LoRA adapters: saved as safetensors, read back without pickle, folded into the base weights."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from mixcore.api.errors import MixcoreError, UsageError

#: Written next to a LoRA adapter by `mixcore train` so later commands can find the base model.
LORA_BASE_FILE = "mixcore_lora_base.json"
#: PaddleNLP's names for an adapter in safetensors, which ``LoRAModel.from_pretrained`` reads.
ADAPTER_WEIGHTS = "peft_model-00001-of-00001.safetensors"
ADAPTER_INDEX = "peft_model.safetensors.index.json"
#: PaddleNLP's own adapter file: a pickle, read here only through the arrays-only reader.
PICKLED_ADAPTER = "lora_model_state.pdparams"


def save_lora_adapter(model: Any, folder: Path) -> list[str]:
    """Write ``model``'s adapter (LoRA and fully trained weights) as safetensors, with its
    LoRA config and model config; returns the files written.

    PaddleNLP's ``LoRAModel.save_pretrained`` pickles the weights; the same state in
    safetensors, with the index ``LoRAModel.from_pretrained`` looks for, loads without pickle.
    """
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    arrays = {name: tensor.numpy() for name, tensor in model.get_trainable_state_dict().items()}
    save_file(arrays, str(folder / ADAPTER_WEIGHTS), metadata={"format": "np"})
    index = {
        "metadata": {"total_size": int(sum(a.nbytes for a in arrays.values()))},
        "weight_map": dict.fromkeys(sorted(arrays), ADAPTER_WEIGHTS),
    }
    (folder / ADAPTER_INDEX).write_text(json.dumps(index, indent=1), encoding="utf-8")
    model.lora_config.save_pretrained(str(folder))
    model.model.config.save_pretrained(str(folder))
    return [ADAPTER_WEIGHTS, ADAPTER_INDEX, "lora_config.json", "config.json"]


def _safetensors_adapter(lora_dir: Path) -> tuple[Path, tempfile.TemporaryDirectory | None]:
    """A folder holding ``lora_dir``'s adapter as safetensors: itself, or for an adapter saved
    by PaddleNLP as a pickle, a temporary copy converted by the arrays-only reader."""
    if (lora_dir / ADAPTER_INDEX).is_file():
        return lora_dir, None
    pickled = lora_dir / PICKLED_ADAPTER
    if not pickled.is_file():
        raise MixcoreError(
            f"{lora_dir} holds no adapter weights ({ADAPTER_INDEX} or {PICKLED_ADAPTER})"
        )
    from safetensors.numpy import save_file

    from mixcore.kit.safe_pickle import state_dict_arrays

    arrays = state_dict_arrays(pickled)
    scratch = tempfile.TemporaryDirectory(prefix="mixcore-adapter-")
    folder = Path(scratch.name)
    save_file(arrays, str(folder / ADAPTER_WEIGHTS), metadata={"format": "np"})
    index = {"metadata": {}, "weight_map": dict.fromkeys(sorted(arrays), ADAPTER_WEIGHTS)}
    (folder / ADAPTER_INDEX).write_text(json.dumps(index), encoding="utf-8")
    (folder / "lora_config.json").write_bytes((lora_dir / "lora_config.json").read_bytes())
    return folder, scratch


def weights_fingerprint(model: Any) -> dict[str, Any]:
    """A summary of ``model``'s weights that tells two different bases apart: the tensor count
    and, in float64, the sum and the sum of squares over all their values."""
    import numpy as np

    total = squares = 0.0
    count = 0
    for _, tensor in sorted(model.state_dict().items()):
        values = tensor.numpy().astype(np.float64, copy=False)
        total += float(values.sum())
        squares += float(np.square(values).sum())
        count += 1
    return {"tensors": count, "sum": total, "sum_squares": squares}


def check_fingerprint(expected: dict[str, Any] | None, model: Any, lora_dir: Path) -> None:
    """Raise when ``model`` is not the base the adapter in ``lora_dir`` was trained on."""
    if not expected:
        return  # an adapter from before fingerprints, or from another tool
    found = weights_fingerprint(model)

    def close(a: float, b: float) -> bool:
        return abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b))

    if found["tensors"] != expected.get("tensors") or not (
        close(found["sum"], expected.get("sum", 0.0))
        and close(found["sum_squares"], expected.get("sum_squares", 0.0))
    ):
        raise UsageError(
            f"the base model loaded for {lora_dir} is not the one the adapter was trained on "
            f"(weights fingerprint {found} here, {expected} at training); name the right base "
            "with --model"
        )


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
    folder, scratch = _safetensors_adapter(Path(lora_dir))
    try:
        wrapped = LoRAModel.from_pretrained(model, str(folder))
    except (ValueError, RuntimeError) as exc:  # missing keys, shapes of another base model
        raise MixcoreError(
            f"the adapter in {lora_dir} does not fit this base model: {str(exc)[:300]}"
        ) from None
    finally:
        if scratch is not None:
            scratch.cleanup()
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
