"""Checkpoint folders: finding and reading the weights in the layouts models are published in,
writing them (sharded, with an index), building a model without a wasted random init, and the
record of which plugin wrote a folder.

Layouts read, in this order of preference: ``model.safetensors.index.json`` + shards,
``model.safetensors``, ``pytorch_model.bin.index.json`` + shards, ``pytorch_model.bin``. PaddleNLP's
own ``model_state.pdparams`` is a pickle and is never read from a folder.

:func:`save_checkpoint` and :func:`load_checkpoint` are the round trip of a PaddleNLP
``PretrainedModel`` through mixcore's own folder layout, built from the pieces below; a model
that reads other layouts (Hugging Face names, transposed weights) uses the pieces directly.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from mixcore.api.constants import MODEL_RECORD_KEY
from mixcore.kit.weights import (
    CheckpointError,
    StoredTensor,
    WeightsNotFoundError,
    assign_weights,
    parameter_dtype,
    read_safetensors,
    read_torch_bin,
    split_evenly,
    state_tensors,
    write_safetensors,
)

__all__ = [
    "BIN_INDEX_NAME",
    "BIN_WEIGHTS_NAME",
    "CONFIG_NAME",
    "INDEX_NAME",
    "WEIGHTS_NAME",
    "building",
    "compute_dtype",
    "distribution_of",
    "distribution_version",
    "has_weights",
    "load_checkpoint",
    "read_config",
    "read_model_record",
    "read_weights",
    "save_checkpoint",
    "write_config",
    "write_weights",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
BIN_WEIGHTS_NAME = "pytorch_model.bin"
BIN_INDEX_NAME = "pytorch_model.bin.index.json"
_LAYOUTS = (INDEX_NAME, WEIGHTS_NAME, BIN_INDEX_NAME, BIN_WEIGHTS_NAME)


def has_weights(folder: str | Path) -> bool:
    """Whether ``folder`` holds weights in one of the layouts :func:`read_weights` reads."""
    return any((Path(folder) / name).is_file() for name in _LAYOUTS)


def read_weights(folder: str | Path) -> dict[str, StoredTensor]:
    """All tensors of a checkpoint folder, in whichever supported layout it holds them.

    Shards are checked against their index: a listed shard that is missing, or a listed tensor
    no shard holds, is a :class:`CheckpointError`; no weights at all is a
    :class:`WeightsNotFoundError` naming the files looked for.
    """
    folder = Path(folder)
    for index_name, read in ((INDEX_NAME, read_safetensors), (BIN_INDEX_NAME, read_torch_bin)):
        index_path = folder / index_name
        if index_path.is_file():
            return _read_shards(folder, index_path, read)
    if (folder / WEIGHTS_NAME).is_file():
        return read_safetensors(folder / WEIGHTS_NAME)
    if (folder / BIN_WEIGHTS_NAME).is_file():
        return read_torch_bin(folder / BIN_WEIGHTS_NAME)
    raise WeightsNotFoundError(f"no {', '.join(_LAYOUTS[:-1])} or {_LAYOUTS[-1]} in {folder}")


def _read_shards(
    folder: Path, index_path: Path, read: Callable[[Path], dict[str, StoredTensor]]
) -> dict[str, StoredTensor]:
    try:
        weight_map = json.loads(index_path.read_text("utf-8"))["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{index_path} is not a shard index ({err})") from None
    tensors: dict[str, StoredTensor] = {}
    for file_name in sorted(set(weight_map.values())):
        shard = folder / file_name
        if Path(file_name).name != file_name or not shard.is_file():
            raise WeightsNotFoundError(f"{shard} is listed in {index_path} but missing")
        tensors.update(read(shard))
    unlisted = sorted(set(weight_map) - set(tensors))
    if unlisted:
        raise CheckpointError(f"{index_path} lists tensors no shard holds: {unlisted[:10]}")
    return tensors


def write_weights(
    folder: str | Path,
    tensors: Mapping[str, StoredTensor],
    *,
    shards: int = 1,
    metadata: Mapping[str, str] | None = None,
) -> list[Path]:
    """Write ``tensors`` as safetensors into ``folder``: one ``model.safetensors``, or ``shards``
    files of about equal size named as Hugging Face names them plus their index. Returns the
    files written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"format": "np", **(metadata or {})}
    if shards <= 1:
        write_safetensors(folder / WEIGHTS_NAME, tensors, meta)
        return [folder / WEIGHTS_NAME]
    groups = split_evenly(tensors, shards)
    weight_map: dict[str, str] = {}
    written: list[Path] = []
    total = 0
    for number, group in enumerate(groups, start=1):
        file_name = f"model-{number:05d}-of-{len(groups):05d}.safetensors"
        total += write_safetensors(folder / file_name, group, meta)
        weight_map.update(dict.fromkeys(group, file_name))
        written.append(folder / file_name)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return [*written, folder / INDEX_NAME]


def read_config(folder: str | Path) -> dict[str, Any]:
    """The folder's ``config.json`` as a dict; a missing or broken one is a CheckpointError."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; is {Path(folder)} a checkpoint folder?")
    try:
        data = json.loads(path.read_text("utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return data


def write_config(
    folder: str | Path,
    config: Mapping[str, Any],
    *,
    plugin: str,
    model: str,
    distribution: str | None = None,
) -> Path:
    """Write ``config.json`` with the record of who wrote the folder under
    :data:`~mixcore.api.MODEL_RECORD_KEY`: ``{"plugin", "model", "version"}``. The registry
    resolves the folder to ``model`` by it, whatever ``model_type`` says."""
    record = {"plugin": plugin, "model": model, "version": distribution_version(distribution)}
    data = {**config, MODEL_RECORD_KEY: record}
    path = Path(folder) / CONFIG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def read_model_record(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The record :func:`write_config` left in a config dict, or None."""
    record = config.get(MODEL_RECORD_KEY)
    return dict(record) if isinstance(record, dict) else None


def distribution_version(distribution: str | None) -> str:
    """Installed version of a distribution ("unknown" when absent or run from a bare tree)."""
    if not distribution:
        return "unknown"
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def distribution_of(obj: Any) -> str | None:
    """The installed distribution whose top-level package defines ``obj`` (a class or
    function), or None (run from a bare source tree, or several distributions share it)."""
    package = getattr(obj, "__module__", "").partition(".")[0]
    owners = set(importlib.metadata.packages_distributions().get(package, []))
    return owners.pop() if len(owners) == 1 else None


@contextlib.contextmanager
def building(dtype: str | None = None, *, weights_follow: bool) -> Iterator[None]:
    """Build a PaddleNLP model inside this block: parameters are created in ``dtype`` (default:
    Paddle's default dtype), and when ``weights_follow`` the random initialisation, which the
    weights would overwrite anyway, is skipped (minutes and a second copy of memory at 7B)."""
    import paddle
    from paddlenlp.transformers.model_utils import dtype_guard, no_init_weights

    with dtype_guard(dtype or paddle.get_default_dtype()), no_init_weights(_enable=weights_follow):
        yield


def compute_dtype(config_dtype: str | None, device: str | None = None) -> str:
    """The dtype to build a checkpoint in: the config's ``torch_dtype`` (``bfloat16``,
    ``float16``) where the device computes in it, else float32.

    CPUs compute bfloat16 in Paddle but many kernels are missing or slow for float16, and a GPU
    older than Ampere has no bfloat16: there the weights are upcast to float32 on load.
    """
    import paddle

    wanted = (config_dtype or "float32").removeprefix("torch.")
    if wanted not in ("bfloat16", "float16"):
        return "float32"
    place = device or paddle.device.get_device()
    if not place.startswith("gpu"):
        return "float32"
    if wanted == "bfloat16":
        major, _ = paddle.device.cuda.get_device_capability()
        return "bfloat16" if major >= 8 else "float32"
    return "float16"


def save_checkpoint(
    folder: str | Path,
    model: Any,
    *,
    plugin: str,
    model_name: str | None = None,
    distribution: str | None = None,
    tokenizer: Any = None,
    processor: Any = None,
    shards: int = 1,
) -> Path:
    """Write ``model`` (a PaddleNLP ``PretrainedModel``) as a folder :func:`load_checkpoint`
    reads back and the registry resolves to ``model_name`` (default: ``plugin``).

    ``config.json`` holds the model's config (what differs from PaddleNLP's defaults, its
    ``model_type`` included), ``torch_dtype`` (the parameters' dtype) and the record of
    :func:`write_config` (``distribution`` defaults to the installed distribution that holds
    the model's class); the weights are :func:`write_weights`' safetensors; ``tokenizer`` and
    ``processor`` (when given) write their own files with ``save_pretrained(folder)``.
    Returns the folder.
    """
    folder = Path(folder)
    config = {**model.config.to_diff_dict(), "torch_dtype": parameter_dtype(model)}
    config.pop(MODEL_RECORD_KEY, None)
    distribution = distribution or distribution_of(type(model))
    write_config(
        folder, config, plugin=plugin, model=model_name or plugin, distribution=distribution
    )
    write_weights(folder, state_tensors(model), shards=shards)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    if processor is not None:
        processor.save_pretrained(folder)
    return folder


def load_checkpoint(folder: str | Path, model_class: Any, *, dtype: str | None = None) -> Any:
    """The model in a folder :func:`save_checkpoint` wrote: ``model_class`` (a PaddleNLP
    ``PretrainedModel``) built from ``config.json`` through its ``config_class``, in ``dtype``
    (default: :func:`compute_dtype` of the stored ``torch_dtype``), without the random
    initialisation the weights replace (:func:`building`), then filled by
    :func:`~mixcore.kit.weights.assign_weights`, which refuses missing, unexpected or misshapen
    tensors. The tokenizer and image processor are the caller's to load.
    """
    folder = Path(folder)
    fields = read_config(folder)
    fields.pop(MODEL_RECORD_KEY, None)
    config = model_class.config_class.from_dict(fields)
    with building(dtype or compute_dtype(fields.get("torch_dtype")), weights_follow=True):
        model = model_class(config)
    assign_weights(model, read_weights(folder), str(folder))
    return model
