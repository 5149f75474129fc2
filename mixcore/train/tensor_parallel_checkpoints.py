"""Checkpoints of a tensor-parallel run, written whole: the layout one card writes.

Every rank of a tensor-parallel group holds a piece of each split weight and of its optimizer
states. At a save the pieces are gathered (:meth:`~mixcore.kit.tensor_parallel.TensorParallelRank.
gather`) and the first rank writes them in PaddleNLP's single-card unified-checkpoint layout
(``model-00001-of-00001.safetensors`` or ``peft_model-...`` with its index, ``optimizer-...``
with its index), so a checkpoint does not depend on the degree it was trained at: it resumes on
one card, at another degree, or is used as a model as any checkpoint is. A resumed rank reads
the whole weights before the model is split (:func:`load_whole_weights`) and takes its own piece
of each optimizer state (:func:`load_split_optimizer`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

OPTIMIZER_FILE = "optimizer-00001-of-00001.safetensors"
MASTER_WEIGHTS_FILE = "master_weights-00001-of-00001.safetensors"


def _expected_state(model: Any) -> dict[str, Any]:
    from paddlenlp.trainer.plugins.unified_checkpoint import get_expected_state_dict

    return get_expected_state_dict(model)


def _whole(split: Any, name: str, tensor: Any) -> np.ndarray:
    # Scalars (Adam's beta powers) are the same on every rank; the rest of a split
    # parameter's states are cut as the parameter is.
    if name in split.resolved.splits and int(np.prod(tensor.shape)) > 1:
        return split.gather(name, tensor)
    return tensor.numpy()


def save_whole(
    args: Any, model: Any, optimizer: Any, split: Any, folder: Path, write: bool
) -> None:
    """Gather the model's weights (and the optimizer's states, unless ``args`` says not to save
    them) from every rank of ``split``'s group into ``folder``; only a rank with ``write``
    writes. Every rank must call it at the same point."""
    from paddlenlp.peft import LoRAModel
    from paddlenlp.trainer.plugins.unified_checkpoint import (
        file_save_async_or_sync,
        generate_base_static_name,
        save_config,
    )
    from paddlenlp.utils.env import (
        SAFE_MASTER_WEIGHTS_INDEX_NAME,
        SAFE_OPTIMIZER_INDEX_NAME,
        SAFE_PEFT_WEIGHTS_INDEX_NAME,
        SAFE_WEIGHTS_INDEX_NAME,
    )

    state = _expected_state(model)
    weights = {name: _whole(split, name, tensor) for name, tensor in sorted(state.items())}
    lora = isinstance(model, LoRAModel)
    optimizer_states: dict[str, np.ndarray] = {}
    master: dict[str, np.ndarray] = {}
    if not args.ignore_save_lr_and_optim:
        struct = {tensor.name: name for name, tensor in state.items()}
        saved = dict(optimizer.state_dict())
        saved.pop("LR_Scheduler", None)
        masters = saved.pop("master_weights", None) or {}
        named = []
        for key, tensor in saved.items():
            static, kind = generate_base_static_name(key)
            named.append((f"{struct[static]}/{kind}", struct[static], tensor))
        # In the same order on every rank: each gather is a collective call.
        for key, parameter, tensor in sorted(named, key=lambda item: item[0]):
            optimizer_states[key] = _whole(split, parameter, tensor)
        for static, tensor in sorted(masters.items(), key=lambda item: struct[item[0]]):
            master[struct[static]] = _whole(split, struct[static], tensor)
    if not write:
        return
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "peft_model" if lora else "model"
    weights_file = f"{prefix}-00001-of-00001.safetensors"
    index = {
        "metadata": {"total_size": sum(int(v.nbytes) for v in weights.values())},
        "weight_map": dict.fromkeys(weights, weights_file),
    }
    if lora:
        index["type"] = "lora"
    index_name = SAFE_PEFT_WEIGHTS_INDEX_NAME if lora else SAFE_WEIGHTS_INDEX_NAME
    _write_json(folder / index_name, index)
    file_save_async_or_sync(weights, os.path.join(folder, weights_file), safe_serialization=True)
    if lora:
        model.lora_config.save_pretrained(str(folder))
    config = save_config(model)
    config.architectures = [model.__class__.__name__]
    config.save_pretrained(str(folder))
    if args.ignore_save_lr_and_optim:
        return
    _write_json(
        folder / SAFE_OPTIMIZER_INDEX_NAME,
        {
            "metadata": {"total_size": sum(int(v.nbytes) for v in optimizer_states.values())},
            "weight_map": dict.fromkeys(optimizer_states, OPTIMIZER_FILE),
            "master_weights": bool(master),
        },
    )
    file_save_async_or_sync(
        optimizer_states, os.path.join(folder, OPTIMIZER_FILE), safe_serialization=True
    )
    if master:
        _write_json(
            folder / SAFE_MASTER_WEIGHTS_INDEX_NAME,
            {
                "metadata": {"total_size": sum(int(v.nbytes) for v in master.values())},
                "weight_map": dict.fromkeys(master, MASTER_WEIGHTS_FILE),
            },
        )
        file_save_async_or_sync(
            master, os.path.join(folder, MASTER_WEIGHTS_FILE), safe_serialization=True
        )


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def load_whole_weights(args: Any, model: Any, checkpoint: str | Path) -> None:
    """Read a checkpoint's whole weights into the (not yet split) ``model``."""
    from paddlenlp.trainer.plugins.unified_checkpoint import load_single_card_checkpoint

    load_single_card_checkpoint(args, model, str(checkpoint))


def load_split_optimizer(model: Any, split: Any, checkpoint: str | Path) -> dict[str, Any]:
    """The optimizer state of this rank from a whole checkpoint: each split parameter's states
    cut to this rank's piece, keyed by the names of this rank's parameters."""
    import paddle
    from paddlenlp.trainer.plugins.unified_checkpoint import FP32_MASTER
    from paddlenlp.utils.env import SAFE_MASTER_WEIGHTS_INDEX_NAME, SAFE_OPTIMIZER_INDEX_NAME
    from safetensors.numpy import load_file

    folder = Path(checkpoint)
    index = json.loads((folder / SAFE_OPTIMIZER_INDEX_NAME).read_text(encoding="utf-8"))
    static = {name: tensor.name for name, tensor in _expected_state(model).items()}

    def mine(name: str, value: np.ndarray) -> np.ndarray:
        if name in split.resolved.splits and value.size > 1:
            return split.shard_of(name, value)
        return value

    stored: dict[str, np.ndarray] = {}
    for file in sorted(set(index["weight_map"].values())):
        stored.update(load_file(str(folder / file)))
    masters = bool(index.get("master_weights"))
    state: dict[str, Any] = {}
    for key, value in stored.items():
        name, kind = key.split("/", 1)
        joined = [static[name], FP32_MASTER, kind] if masters else [static[name], kind]
        state["_".join(joined)] = paddle.to_tensor(mine(name, value))
    if masters:
        master_index = json.loads(
            (folder / SAFE_MASTER_WEIGHTS_INDEX_NAME).read_text(encoding="utf-8")
        )
        state["master_weights"] = {}
        for file in sorted(set(master_index["weight_map"].values())):
            for name, value in load_file(str(folder / file)).items():
                state["master_weights"][static[name]] = paddle.to_tensor(mine(name, value))
    return state
