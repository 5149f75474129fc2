"""Tensor- and pipeline-parallel plans applied to weights: split, merge, simulate, stage.

A :class:`mixcore.api.ParallelPlan` names layers and parameters by pattern;
:func:`resolve_plan` turns it into what each parameter of one model does at one degree
(:class:`ResolvedPlan`: an axis and a number of fused blocks per split parameter, the role of
each split layer), checking every pattern against the model. Then:

- :func:`split_state` cuts a full state dict into ``degree`` rank shards and
  :func:`merge_state` puts them back together, bit for bit (NumPy arrays or
  :class:`~mixcore.kit.weights.StoredTensor`, so bfloat16 stays exact);
- :func:`simulate` runs the split model in one process: ``degree`` copies of the model, each
  holding only its rank's shard and ``1/degree`` of the heads, run in lockstep, where the
  collective operations of a tensor-parallel group happen (a row layer's output summed over the
  ranks, a vocab layer's lookups summed, a gathered layer's outputs concatenated). Its result
  equals the full model's forward when the plan is right; a wrong split (heads cut in half, a
  fused projection split as one block) shows as a different output;
- :func:`apply_tensor_parallel` does to a training rank's model what :func:`simulate` does to
  each copy, with Paddle fleet's model-parallel collectives (GPUs; not run here);
- :func:`assign_stages` / :func:`pipeline_stages` cut ``pipeline_layers`` into pipeline stages
  balanced by parameter count, with ``first_stage`` on stage 0;
- :func:`write_rank_shards` / :func:`read_rank_shards` write and read a checkpoint's rank files
  (``model.tp00-of-04.safetensors`` ...), each recording its rank, the degree and how each of its
  tensors was split (:class:`StoredSplit`), so merging needs no plugin and an incomplete set is
  refused; :func:`mark_owners` and :func:`stored_splits` find those splits in whatever layout a
  plugin saves its weights in.

Paddle is imported only by the functions that touch a model (:func:`resolve_plan` reads its
layers, :func:`simulate`, :func:`apply_tensor_parallel`, :func:`mark_owners`).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mixcore.api.errors import PluginError, UsageError
from mixcore.api.parallel import ParallelPlan, plan_problems
from mixcore.kit.weights import StoredTensor

__all__ = [
    "COLUMN",
    "ROW",
    "VOCAB",
    "DegreeError",
    "PlanError",
    "RankShardError",
    "ResolvedPlan",
    "Split",
    "StoredSplit",
    "TensorParallelRank",
    "apply_tensor_parallel",
    "assign_stages",
    "gather_split_state",
    "mark_owners",
    "merge_state",
    "merge_tensor_parallel",
    "on_cpu",
    "parameter_counts",
    "pipeline_stages",
    "rank_file_name",
    "read_rank_shards",
    "resolve_plan",
    "simulate",
    "split_state",
    "stored_splits",
    "write_rank_file",
    "write_rank_shards",
]

COLUMN, ROW, VOCAB = "column", "row", "vocab"

#: The safetensors metadata key of a rank file's record (degree, rank, splits).
SHARD_METADATA_KEY = "mixcore_tensor_parallel"
_RANK_FILE = re.compile(r"model\.tp(\d{2,})-of-(\d{2,})\.safetensors")


class PlanError(PluginError):
    """A parallel plan that does not fit its model (or is malformed)."""


class DegreeError(UsageError):
    """A right plan, but sizes of the model that the asked degree does not divide."""


class RankShardError(UsageError):
    """Rank-shard checkpoint files that do not form one complete, consistent set."""


@dataclass(frozen=True)
class Split:
    """How one parameter splits: along ``axis``, as ``parts`` equal blocks split on their own."""

    axis: int
    parts: int = 1


@dataclass
class ResolvedPlan:
    """A plan resolved against one model at one degree (see :func:`resolve_plan`)."""

    degree: int
    splits: dict[str, Split] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)
    gathered: list[str] = field(default_factory=list)
    heads: dict[str, list[str]] = field(default_factory=dict)


#: (role, parameter name, ndim) -> split axis, for the parameters a layer role splits. A
#: LoRA-wrapped layer (PaddleNLP's ``LoRALinear``) splits as Megatron's LoRA layers do: a
#: column layer's ``lora_B`` [r, out] by column with ``lora_A`` whole, a row layer's
#: ``lora_A`` [in, r] by row with ``lora_B`` whole. A row layer's bias stays whole.
_ROLE_AXES: dict[tuple[str | None, str, int], int] = {
    (COLUMN, "weight", 2): 1,
    (COLUMN, "bias", 1): 0,
    (COLUMN, "lora_B", 2): 1,
    (ROW, "weight", 2): 0,
    (ROW, "lora_A", 2): 0,
    (VOCAB, "weight", 2): 0,
}


# --- resolving ---------------------------------------------------------------------------------


def _matching(patterns: Sequence[str] | Mapping[str, Any], names: Sequence[str]) -> dict:
    return {p: [n for n in names if re.fullmatch(p, n)] for p in patterns}


def resolve_plan(model: Any, plan: ParallelPlan, degree: int) -> ResolvedPlan:
    """What ``plan`` means for ``model`` (a Paddle layer) split over ``degree`` ranks.

    Raises :class:`PlanError` listing every problem of the plan (malformed, a pattern that
    matches nothing, a layer with two roles, a head-count attribute the layer lacks), else
    :class:`DegreeError` listing the sizes ``degree`` (times a fused weight's parts) does not
    divide: the plan is right, the degree is not one this model splits by.
    """
    problems = plan_problems(plan)
    if problems:
        raise PlanError("invalid parallel plan: " + "; ".join(problems))
    if degree < 1:
        raise PlanError(f"tensor-parallel degree must be at least 1, not {degree}")
    layers = dict(model.named_sublayers())
    layer_names = list(layers)
    resolved = ResolvedPlan(degree=degree)
    indivisible: list[str] = []
    own: dict[str, tuple[str, str, Any]] = {}  # parameter -> (layer, attribute, tensor)
    for layer_name, layer in layers.items():
        for attr, param in layer.named_parameters(include_sublayers=False):
            own[f"{layer_name}.{attr}"] = (layer_name, attr, param)
    for attr, param in model.named_parameters(include_sublayers=False):
        own[attr] = ("", attr, param)
    params = list(own)

    for role, patterns in ((COLUMN, plan.column), (ROW, plan.row), (VOCAB, plan.vocab)):
        for pattern, names in _matching(patterns, layer_names).items():
            if not names:
                problems.append(f"{role}: {pattern!r} matches no layer")
            for name in names:
                if name in resolved.roles and resolved.roles[name] != role:
                    problems.append(f"layer {name} is both {resolved.roles[name]} and {role}")
                resolved.roles[name] = role
    for pattern, names in _matching(plan.gathered, layer_names).items():
        if not names:
            problems.append(f"gathered: {pattern!r} matches no layer")
        resolved.gathered.extend(n for n in names if n not in resolved.gathered)
    for pattern, attrs in plan.heads.items():
        names = [n for n in layer_names if re.fullmatch(pattern, n)]
        if not names:
            problems.append(f"heads: {pattern!r} matches no layer")
        for name in names:
            for attr in (attrs,) if isinstance(attrs, str) else attrs:
                count = getattr(layers[name], attr, None)
                if not isinstance(count, int) or isinstance(count, bool):
                    problems.append(f"heads: layer {name} has no integer attribute {attr!r}")
                elif count % degree:
                    indivisible.append(f"{name}.{attr} = {count} is not divisible by {degree}")
                else:
                    resolved.heads.setdefault(name, []).append(attr)
    for name, (layer_name, attr, param) in own.items():
        axis = _ROLE_AXES.get((resolved.roles.get(layer_name), attr, len(param.shape)))
        if axis is not None:
            resolved.splits[name] = Split(axis=axis)
    for pattern, names in _matching(plan.split_axes, params).items():
        if not names:
            problems.append(f"split_axes: {pattern!r} matches no parameter")
        for name in names:
            axis = plan.split_axes[pattern]
            if not -len(own[name][2].shape) <= axis < len(own[name][2].shape):
                problems.append(f"split_axes: {name} has no axis {axis}")
                continue
            resolved.splits[name] = Split(axis=axis % len(own[name][2].shape))
    for pattern, names in _matching(plan.fused, params).items():
        if not names:
            problems.append(f"fused: {pattern!r} matches no parameter")
        for name in names:
            if name not in resolved.splits:
                problems.append(f"fused: {name} is not split (give its layer a role)")
                continue
            resolved.splits[name] = Split(resolved.splits[name].axis, plan.fused[pattern])
    for name, split in resolved.splits.items():
        size = int(own[name][2].shape[split.axis])
        if size % (degree * split.parts):
            indivisible.append(
                f"{name}: size {size} along axis {split.axis} is not divisible by "
                f"{degree} rank(s)" + (f" x {split.parts} fused parts" if split.parts > 1 else "")
            )
    if problems:
        raise PlanError("the parallel plan does not fit the model:\n  " + "\n  ".join(problems))
    if indivisible:
        raise DegreeError(
            f"the model cannot be split over {degree} ranks:\n  " + "\n  ".join(indivisible)
        )
    return resolved


# --- splitting and merging ---------------------------------------------------------------------


@dataclass(frozen=True)
class StoredSplit:
    """How a tensor as stored splits: along ``axis``, whose indices belong to the ranks in
    ``runs`` of ``(rank, count)`` in order (a fused ``[q | k | v]`` weight over 2 ranks:
    ``((0, n), (1, n), (0, n), (1, n), (0, n), (1, n))``). Any layout a plugin's saved files
    use (transposed, renamed) has one; rank files record it for every split tensor."""

    axis: int
    runs: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, split: Split, size: int, degree: int) -> StoredSplit:
        """The stored split of a tensor of ``size`` along ``split.axis`` cut as ``split``."""
        piece = size // (split.parts * degree)
        runs = tuple((rank, piece) for _ in range(split.parts) for rank in range(degree))
        return cls(split.axis, runs)

    def owners(self) -> np.ndarray:
        return np.concatenate([np.full(count, rank) for rank, count in self.runs])

    def to_json(self) -> dict[str, Any]:
        return {"axis": self.axis, "runs": [list(run) for run in self.runs]}

    @classmethod
    def from_json(cls, value: Any) -> StoredSplit:
        return cls(int(value["axis"]), tuple((int(r), int(n)) for r, n in value["runs"]))


def _layout(split: Split | StoredSplit, array: np.ndarray, degree: int) -> StoredSplit:
    if isinstance(split, StoredSplit):
        return split
    return StoredSplit.of(split, int(array.shape[split.axis]), degree)


def _split_array(array: np.ndarray, layout: StoredSplit, degree: int) -> list[np.ndarray]:
    owners = layout.owners()
    if owners.size != array.shape[layout.axis]:
        raise RankShardError(
            f"a split of {owners.size} along axis {layout.axis} does not fit shape {array.shape}"
        )
    return [
        np.ascontiguousarray(np.take(array, np.flatnonzero(owners == rank), axis=layout.axis))
        for rank in range(degree)
    ]


def _merge_arrays(shards: Sequence[np.ndarray], layout: StoredSplit) -> np.ndarray:
    owners = layout.owners()
    shape = list(shards[0].shape)
    shape[layout.axis] = owners.size
    merged = np.empty(shape, dtype=shards[0].dtype)
    for rank, shard in enumerate(shards):
        index = [slice(None)] * len(shape)
        index[layout.axis] = np.flatnonzero(owners == rank)
        if shard.shape[layout.axis] != len(index[layout.axis]):
            raise RankShardError(f"rank {rank}'s piece has the wrong size along axis {layout.axis}")
        merged[tuple(index)] = shard
    return merged


def _data(value: Any) -> np.ndarray:
    return value.data if isinstance(value, StoredTensor) else value


def _like(value: Any, data: np.ndarray) -> Any:
    # A StoredTensor keeps its dtype name (BF16 travels as its uint16 bits).
    return StoredTensor(data, value.dtype) if isinstance(value, StoredTensor) else data


def split_state(
    state: Mapping[str, Any], splits: Mapping[str, Split | StoredSplit], degree: int
) -> list[dict[str, Any]]:
    """``degree`` rank shards of a full state dict (NumPy arrays or ``StoredTensor``s):
    tensors in ``splits`` cut as their :class:`Split` (or :class:`StoredSplit`) says,
    everything else copied whole to every rank. A split tensor the state lacks is an error."""
    missing = sorted(set(splits) - set(state))
    if missing:
        raise RankShardError(f"{len(missing)} split tensor(s) missing: {', '.join(missing[:5])}")
    shards: list[dict[str, Any]] = [{} for _ in range(degree)]
    for name, value in state.items():
        if name in splits:
            array = _data(value)
            layout = _layout(splits[name], array, degree)
            for rank, piece in enumerate(_split_array(array, layout, degree)):
                shards[rank][name] = _like(value, piece)
        else:
            for shard in shards:
                shard[name] = value
    return shards


def merge_state(
    shards: Sequence[Mapping[str, Any]], splits: Mapping[str, Split | StoredSplit]
) -> dict:
    """The full state dict of ``shards`` (the inverse of :func:`split_state`). Replicated
    tensors must be identical on every rank."""
    names = list(shards[0])
    for rank, shard in enumerate(shards[1:], start=1):
        if set(shard) != set(names):
            raise RankShardError(f"rank {rank} holds other tensors than rank 0")
    merged: dict[str, Any] = {}
    for name in names:
        values = [shard[name] for shard in shards]
        if name in splits:
            pieces = [_data(v) for v in values]
            split = splits[name]
            if isinstance(split, Split):  # the full size is the pieces' sizes together
                total = sum(int(p.shape[split.axis]) for p in pieces)
                split = StoredSplit.of(split, total, len(shards))
            merged[name] = _like(values[0], _merge_arrays(pieces, split))
        else:
            first = _data(values[0])
            for rank, value in enumerate(values[1:], start=1):
                other = _data(value)
                if other.shape != first.shape or not np.array_equal(
                    other.view(np.uint8), first.view(np.uint8)
                ):
                    raise RankShardError(f"replicated tensor {name} differs on rank {rank}")
            merged[name] = values[0]
    return merged


# --- splits of a checkpoint as a plugin stores it ----------------------------------------------


def mark_owners(model: Any, resolved: ResolvedPlan) -> None:
    """Overwrite ``model``'s state (destroying its weights): each element of a split tensor
    becomes ``1 + the rank that owns it``, every other tensor 0. Saved by the model's plugin,
    these owner maps show where each rank's part lies in whatever layout the plugin's files
    use (renamed, transposed, reshaped): :func:`stored_splits` reads them."""
    import paddle

    for name, tensor in model.state_dict().items():
        split = resolved.splits.get(name)
        if split is None:
            values = np.zeros(tensor.shape, dtype="float32")
        else:
            owners = StoredSplit.of(split, int(tensor.shape[split.axis]), resolved.degree)
            shape = [1] * len(tensor.shape)
            shape[split.axis] = -1
            line = (owners.owners() + 1).astype("float32").reshape(shape)
            values = np.broadcast_to(line, tensor.shape).copy()
        tensor.set_value(paddle.to_tensor(values).astype(tensor.dtype))


def _values(stored: Any) -> np.ndarray:
    data = _data(stored)
    if isinstance(stored, StoredTensor) and stored.dtype == "BF16":
        return (data.astype(np.uint32) << 16).view(np.float32)
    return data.astype(np.float64)


def _share_unowned(name: str, owners: np.ndarray, degree: int) -> np.ndarray:
    """Stretches of a split tensor that no rank owns (-1) are values a plugin's layout puts
    between the split parts, such as the zero key bias Hugging Face's BLIP-2 stores between
    the q and v biases: each such stretch is cut evenly over the ranks, in rank order, as its
    neighbours are."""
    owners = owners.copy()
    start = None
    for i in range(len(owners) + 1):
        if i < len(owners) and owners[i] == -1:
            start = i if start is None else start
        elif start is not None:
            length = i - start
            if length % degree:
                raise RankShardError(
                    f"saved tensor {name} holds {length} whole values between its split parts, "
                    f"not divisible by {degree} ranks"
                )
            owners[start:i] = np.repeat(np.arange(degree), length // degree)
            start = None
    return owners


def stored_splits(owner_maps: Mapping[str, Any], degree: int) -> dict[str, StoredSplit]:
    """The :class:`StoredSplit` of every split tensor of a checkpoint, from the same checkpoint
    saved after :func:`mark_owners`. A tensor whose owners vary along more than one axis cannot
    be cut into rank files (:class:`RankShardError`); whole values between split parts are
    shared out (see :func:`_share_unowned`)."""
    splits: dict[str, StoredSplit] = {}
    for name, stored in owner_maps.items():
        values = _values(stored)
        if not values.any():
            continue
        if not np.all(np.isin(values, np.arange(0, degree + 1))):
            raise RankShardError(f"saved tensor {name} holds values no owner map has")
        found = None
        for axis in range(values.ndim):
            lines = np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)
            if np.all(lines == lines[:, :1]):
                found = axis
                break
        if found is None:
            raise RankShardError(f"saved tensor {name} is split along more than one axis")
        owners = np.moveaxis(values, found, 0).reshape(values.shape[found], -1)[:, 0] - 1
        owners = _share_unowned(name, owners.astype(int), degree)
        runs: list[tuple[int, int]] = []
        for owner in owners.tolist():
            if runs and runs[-1][0] == owner:
                runs[-1] = (owner, runs[-1][1] + 1)
            else:
                runs.append((owner, 1))
        splits[name] = StoredSplit(found, tuple(runs))
    return splits


# --- rank files --------------------------------------------------------------------------------


def rank_file_name(rank: int, degree: int) -> str:
    """``model.tp01-of-04.safetensors``: the weights of rank 1 of 4."""
    return f"model.tp{rank:02d}-of-{degree:02d}.safetensors"


def write_rank_file(
    folder: str | Path,
    tensors: Mapping[str, Any],
    splits: Mapping[str, StoredSplit],
    rank: int,
    degree: int,
) -> Path:
    """Write one rank's tensors (``StoredTensor`` values) as ``folder/model.tpRR-of-NN.
    safetensors``, recording the degree, the rank and the split of every tensor: what each
    rank of a tensor-parallel run writes for its checkpoint, and what :func:`read_rank_shards`
    reads back as a set."""
    from mixcore.kit.weights import write_safetensors

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / rank_file_name(rank, degree)
    record = {name: split.to_json() for name, split in splits.items()}
    meta = {"degree": degree, "rank": rank, "splits": record}
    write_safetensors(path, tensors, {"format": "np", SHARD_METADATA_KEY: json.dumps(meta)})
    return path


def write_rank_shards(
    folder: str | Path, shards: Sequence[Mapping[str, Any]], splits: Mapping[str, StoredSplit]
) -> list[Path]:
    """Write one rank file per shard into ``folder`` (see :func:`write_rank_file`)."""
    return [
        write_rank_file(folder, shard, splits, rank, len(shards))
        for rank, shard in enumerate(shards)
    ]


def rank_files(folder: str | Path) -> dict[int, tuple[int, Path]]:
    """The rank files in ``folder``: rank -> (degree its name says, path)."""
    found: dict[int, tuple[int, Path]] = {}
    for path in sorted(Path(folder).iterdir()):
        match = _RANK_FILE.fullmatch(path.name)
        if match and path.is_file():
            found[int(match.group(1))] = (int(match.group(2)), path)
    return found


def read_rank_shards(
    folder: str | Path,
) -> tuple[list[dict[str, Any]], dict[str, StoredSplit]]:
    """Every rank's tensors from ``folder`` and the splits they record.

    Refused with :class:`RankShardError`: no rank files, names that disagree on the degree, a
    missing rank, a file whose recorded rank, degree or splits differ from its name or the
    others'."""
    from mixcore.kit.weights import read_safetensors

    folder = Path(folder)
    found = rank_files(folder)
    if not found:
        raise RankShardError(f"no rank files (model.tpNN-of-MM.safetensors) in {folder}")
    degrees = {degree for degree, _ in found.values()}
    if len(degrees) > 1:
        raise RankShardError(f"{folder} mixes rank files of degrees {sorted(degrees)}")
    degree = degrees.pop()
    missing = [rank_file_name(r, degree) for r in range(degree) if r not in found]
    extra = [str(found[r][1].name) for r in found if r >= degree]
    if missing or extra:
        raise RankShardError(
            f"incomplete set of {degree} rank files in {folder}: "
            + (f"missing {', '.join(missing)}" if missing else f"unexpected {', '.join(extra)}")
        )
    shards: list[dict[str, Any]] = []
    splits: dict[str, StoredSplit] | None = None
    for rank in range(degree):
        path = found[rank][1]
        tensors = read_safetensors(path)  # checks the header against the file first
        try:
            meta = json.loads(_file_metadata(path)[SHARD_METADATA_KEY])
        except (KeyError, TypeError, ValueError):
            raise RankShardError(f"{path} is not a mixcore rank file (no shard record)") from None
        if meta.get("degree") != degree or meta.get("rank") != rank:
            raise RankShardError(
                f"{path} records rank {meta.get('rank')} of {meta.get('degree')}, "
                f"its name says rank {rank} of {degree}"
            )
        try:
            these = {n: StoredSplit.from_json(v) for n, v in meta["splits"].items()}
        except (KeyError, TypeError, ValueError):
            raise RankShardError(f"{path} has a malformed split record") from None
        if splits is not None and these != splits:
            raise RankShardError(f"{path} records other splits than rank 0's file")
        splits = these
        shards.append(tensors)
    assert splits is not None
    return shards, splits


def _file_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as handle:
        return handle.metadata() or {}


# --- the single-process simulation ---------------------------------------------------------------


class _Lockstep:
    """Collective operations of ``degree`` ranks run one after another, replayed to agreement.

    Rank ``r``'s forward pass calls :meth:`exchange` at each collective, in the same order on
    every rank. A pass cannot wait for the other ranks, so each call returns the combined value
    recorded in the previous round (in the first, the rank's own value stands in for the
    others', which gives the right shape). A round where
    collective ``k`` got correct inputs from every rank makes collective ``k`` correct in the
    next, so after ``collectives + 1`` rounds every pass has run on correct values throughout.
    """

    def __init__(self, degree: int) -> None:
        self.degree = degree
        self.rank = 0
        self.step = 0
        self.inputs: dict[int, list[Any]] = {}
        self.combined: dict[int, list[Any]] = {}
        self.calls: list[str] = []
        self.seen: set[str] = set()  # split layers whose forward ran

    def begin(self, rank: int) -> None:
        self.rank, self.step = rank, 0

    def exchange(self, layer: str, value: Any, combine: Callable[[list[Any]], Any]) -> Any:
        step = self.step
        self.step += 1
        self.seen.add(layer)
        if self.rank == 0 and step == len(self.calls):
            self.calls.append(layer)
        slot = self.inputs.setdefault(step, [None] * self.degree)
        slot[self.rank] = value
        if self.rank == self.degree - 1:
            self.combined[step] = combine(slot)
        previous = self.combined.get(step)
        if previous is None:  # first round: right shape, values to be replaced next round
            return combine([value if v is None else v for v in slot])
        return previous

    # The collectives a tensor-parallel rank needs (see _FleetGroup for the real ones).
    def identity(self, layer: str, value: Any) -> Any:
        self.seen.add(layer)
        return value

    def all_reduce(self, layer: str, value: Any) -> Any:
        def total(parts: list[Any]) -> Any:
            out = parts[0]
            for part in parts[1:]:
                out = out + part
            return out

        return self.exchange(layer, value, total)

    def all_gather(self, layer: str, value: Any, parts: int) -> Any:
        return self.exchange(layer, value, lambda pieces: _concat_last(pieces, parts))

    def sum_gradient(self, grad: Any) -> Any:  # a simulation runs no backward pass
        return grad


def _concat_last(pieces: Sequence[Any], parts: int) -> Any:
    """The ranks' last-axis pieces of a (``parts``-fused) output put back in the full order."""
    import paddle

    if parts == 1:
        return paddle.concat(list(pieces), axis=-1)
    per_rank = [paddle.split(piece, parts, axis=-1) for piece in pieces]
    return paddle.concat(
        [paddle.concat([r[b] for r in per_rank], axis=-1) for b in range(parts)], axis=-1
    )


class _FleetGroup:
    """The same collectives over Paddle fleet's model-parallel group (GPU training)."""

    def __init__(self, group: Any) -> None:
        self.group = group

    def identity(self, layer: str, value: Any) -> Any:
        from paddle.distributed.fleet.layers.mpu import mp_ops

        # Forward: the value itself; backward: the ranks' input gradients summed.
        return mp_ops._c_identity(value, group=self.group)

    def all_reduce(self, layer: str, value: Any) -> Any:
        from paddle.distributed.fleet.layers.mpu import mp_ops

        return mp_ops._mp_allreduce(
            value, group=self.group, use_calc_stream=True, use_model_parallel=True
        )

    def all_gather(self, layer: str, value: Any, parts: int) -> Any:
        import paddle
        from paddle.distributed.fleet.layers.mpu import mp_ops

        if parts == 1:
            return mp_ops._c_concat(value, group=self.group)
        # Gather each fused block on its own, then lay the blocks side by side.
        blocks = paddle.split(value, parts, axis=-1)
        return paddle.concat([mp_ops._c_concat(b, group=self.group) for b in blocks], axis=-1)

    def sum_gradient(self, grad: Any) -> Any:
        return _summed_over(grad, self.group)


def _summed_over(value: Any, group: Any) -> Any:
    import paddle.distributed as dist

    out = value.clone()
    dist.all_reduce(out, group=group)
    return out


class _GlooGroup:
    """The same collectives over any process group through ``paddle.distributed``'s own
    collective calls, each inside a ``PyLayer`` that gives it its tensor-parallel gradient.
    Gloo (CPU training) has no model-parallel kernels (``_mp_allreduce`` refuses it)."""

    def __init__(self, group: Any) -> None:
        self.group = group
        self._identity, self._reduce, self._gather = _gloo_layers()

    def identity(self, layer: str, value: Any) -> Any:
        return self._identity.apply(value, self.group)

    def all_reduce(self, layer: str, value: Any) -> Any:
        return self._reduce.apply(value, self.group)

    def all_gather(self, layer: str, value: Any, parts: int) -> Any:
        return self._gather.apply(value, self.group, parts)

    def sum_gradient(self, grad: Any) -> Any:
        return _summed_over(grad, self.group)


def _gloo_layers() -> tuple[Any, Any, Any]:
    import paddle
    import paddle.distributed as dist
    from paddle.autograd import PyLayer

    summed = _summed_over

    class Identity(PyLayer):
        # Forward: the value; backward: the ranks' gradients summed (a column layer's input).
        @staticmethod
        def forward(ctx: Any, value: Any, group: Any) -> Any:
            ctx.group = group
            return value.clone()

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            return summed(grad, ctx.group)

    class Reduce(PyLayer):
        # Forward: the ranks' partial values summed (a row layer's output); backward: as is.
        @staticmethod
        def forward(ctx: Any, value: Any, group: Any) -> Any:
            return summed(value, group)

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            return grad.clone()

    class Gather(PyLayer):
        # Forward: the ranks' last-axis pieces in the full order; backward: this rank's piece.
        @staticmethod
        def forward(ctx: Any, value: Any, group: Any, parts: int) -> Any:
            pieces: list[Any] = []
            dist.all_gather(pieces, value.contiguous(), group=group)
            ctx.rank, ctx.degree, ctx.parts = group.rank, group.nranks, parts
            return _concat_last(pieces, parts)

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            blocks = paddle.split(grad, ctx.parts * ctx.degree, axis=-1)
            mine = [blocks[b * ctx.degree + ctx.rank] for b in range(ctx.parts)]
            return paddle.concat(mine, axis=-1) if len(mine) > 1 else mine[0].clone()

    return Identity, Reduce, Gather


@dataclass
class _Installed:
    """What :func:`_install` changed on a model, so :func:`merge_tensor_parallel` can undo it."""

    hooks: list[Any] = field(default_factory=list)


def _install(
    model: Any, resolved: ResolvedPlan, shard: Mapping[str, Any], rank: int, comm: Any
) -> _Installed:
    """Make ``model`` (in place) rank ``rank`` of ``resolved``: its split parameters replaced by
    the shard's (marked ``is_distributed`` with their ``split_axis``, as fleet's parallel layers
    mark theirs), head counts divided, and the collectives of ``comm`` around the split layers:
    a column layer's input passes ``identity`` (its gradient is summed over the ranks), a row
    layer's output and a vocab layer's lookups are ``all_reduce``d (the row bias added after),
    a gathered layer's output ``all_gather``ed."""
    import paddle

    installed = _Installed()
    replaced: dict[int, Any] = {}
    layers = dict(model.named_sublayers())
    for name, split in resolved.splits.items():
        layer_name, _, attr = name.rpartition(".")
        owner = layers[layer_name] if layer_name else model
        old = getattr(owner, attr)
        new = replaced.get(id(old))  # a table two layers share (a tied head) stays shared
        if new is None:
            value = np.ascontiguousarray(_data(shard[name]))
            new = paddle.create_parameter(
                shape=list(value.shape),
                dtype=old.dtype,
                default_initializer=paddle.nn.initializer.Assign(paddle.to_tensor(value)),
            )
            new.stop_gradient = old.stop_gradient
            new.is_distributed = True
            new.split_axis = split.axis
            replaced[id(old)] = new
        setattr(owner, attr, new)
    for name, attrs in resolved.heads.items():
        for attr in attrs:
            setattr(layers[name], attr, getattr(layers[name], attr) // resolved.degree)

    # A LoRA layer's whole matrix beside a split one (a column layer's lora_A, a row layer's
    # lora_B) gets from each rank the part of its gradient that rank's piece makes: summed, it
    # is the whole gradient (Megatron's LoRA layers sum it with a collective between A and B).
    for name, role in resolved.roles.items():
        whole = {COLUMN: "lora_A", ROW: "lora_B"}.get(role)
        param = getattr(layers[name], whole, None) if whole else None
        if param is not None and f"{name}.{whole}" not in resolved.splits:
            installed.hooks.append(param.register_hook(comm.sum_gradient))
    for name, role in resolved.roles.items():
        layer = layers[name]
        if role == COLUMN:

            def column_pre(layer, inputs, name=name):
                return (comm.identity(name, inputs[0]), *inputs[1:])

            installed.hooks.append(layer.register_forward_pre_hook(column_pre))
        elif role == ROW:
            # The bias is added once, after the sum: the layer runs without it, and it stays
            # the layer's parameter (trained, saved under its name) outside the forward.
            held: list[Any] = []  # the bias, during the layer's forward
            if getattr(layer, "bias", None) is not None:

                def row_pre(layer, inputs, held=held):
                    held.append(layer._parameters["bias"])
                    layer._parameters["bias"] = None

                installed.hooks.append(layer.register_forward_pre_hook(row_pre))

            def row_post(layer, inputs, output, name=name, held=held):
                output = comm.all_reduce(name, output)
                bias = held.pop() if held else None
                if bias is None:
                    return output
                layer._parameters["bias"] = bias
                return output + bias

            installed.hooks.append(layer.register_forward_post_hook(row_post))
        elif role == VOCAB:
            rows = int(layer.weight.shape[0])
            start = rank * rows
            masks: list[Any] = []

            def vocab_pre(layer, inputs, start=start, rows=rows, masks=masks):
                local = inputs[0] - start
                inside = paddle.logical_and(local >= 0, local < rows)
                masks.append(inside)
                return (paddle.where(inside, local, paddle.zeros_like(local)), *inputs[1:])

            def vocab_post(layer, inputs, output, name=name, masks=masks):
                inside = masks.pop().unsqueeze(-1).astype(output.dtype)
                return comm.all_reduce(name, output * inside)

            installed.hooks.append(layer.register_forward_pre_hook(vocab_pre))
            installed.hooks.append(layer.register_forward_post_hook(vocab_post))
    for name in resolved.gathered:
        parts = max(
            (s.parts for p, s in resolved.splits.items() if p.rpartition(".")[0] == name),
            default=1,
        )
        if resolved.roles.get(name) != COLUMN:  # a head on a tied table: its input, replicated

            def head_pre(layer, inputs, name=name):
                return (_on_hidden(inputs[0], lambda x: comm.identity(name, x)), *inputs[1:])

            installed.hooks.append(layers[name].register_forward_pre_hook(head_pre))

        def gather_post(layer, inputs, output, name=name, parts=parts):
            return comm.all_gather(name, output, parts)

        installed.hooks.append(layers[name].register_forward_post_hook(gather_post))
    _hide_split_marks(model, resolved, layers, installed)
    return installed


def _on_hidden(value: Any, apply: Callable[[Any], Any]) -> Any:
    """``apply`` to a layer's input tensor, or to the ``last_hidden_state`` of the model output
    some heads take instead (PaddleNLP's OPT head)."""
    if isinstance(value, Mapping) and "last_hidden_state" in value:
        changed = copy.copy(value)
        changed["last_hidden_state"] = apply(value["last_hidden_state"])
        return changed
    return apply(value)


def _hide_split_marks(
    model: Any, resolved: ResolvedPlan, layers: Mapping[str, Any], installed: _Installed
) -> None:
    """During a split layer's forward its weights are not marked ``is_distributed``.

    The mark is for fleet (which then leaves the shard alone when it broadcasts replicated
    weights, and sums the shards' gradient norms); but some of PaddleNLP's layers also read it
    and then run collectives of their own (QWen's head: ``parallel_matmul``), which the hooks
    above already run: twice, the input's gradient would be summed twice."""
    params = model.state_dict()
    marked = list({id(params[name]): params[name] for name in resolved.splits}.values())
    depth = [0]

    def hide(layer: Any, inputs: Any) -> None:
        if depth[0] == 0:
            for param in marked:
                param.is_distributed = False
        depth[0] += 1

    def show(layer: Any, inputs: Any, output: Any) -> None:
        depth[0] -= 1
        if depth[0] == 0:
            for param in marked:
                param.is_distributed = True

    for name in {*resolved.roles, *resolved.gathered}:
        # First of the pre-hooks, last of the post-hooks: around the collectives too.
        installed.hooks.append(layers[name].register_forward_pre_hook(hide, prepend=True))
        installed.hooks.append(layers[name].register_forward_post_hook(show))


@dataclass
class TensorParallelRank:
    """A model split in place for one rank of a tensor-parallel group (see
    :func:`apply_tensor_parallel`): what :func:`gather_split_state` and
    :func:`merge_tensor_parallel` need to put the whole model back together."""

    model: Any
    resolved: ResolvedPlan
    group: Any
    full_shapes: dict[str, list[int]]
    installed: _Installed

    @property
    def rank(self) -> int:
        return int(self.group.rank)

    def split_of(self, name: str) -> StoredSplit:
        """How the full tensor of split parameter ``name`` is cut over the ranks."""
        split = self.resolved.splits[name]
        return StoredSplit.of(split, self.full_shapes[name][split.axis], self.resolved.degree)

    def shard_of(self, name: str, full: np.ndarray) -> np.ndarray:
        """This rank's piece of ``full``, a whole tensor shaped as split parameter ``name``."""
        return _split_array(full, self.split_of(name), self.resolved.degree)[self.rank]

    def gather(self, name: str, local: Any) -> np.ndarray:
        """The whole tensor of split parameter ``name`` from every rank's ``local`` piece of it
        (the parameter itself, or an optimizer state shaped as it); every rank must call it."""
        import paddle.distributed as dist

        pieces: list[Any] = []
        dist.all_gather(pieces, local.contiguous(), group=self.group)
        return _merge_arrays([piece.numpy() for piece in pieces], self.split_of(name))


def on_cpu() -> bool:
    """Whether this process computes on the CPU, where collectives run over gloo."""
    import paddle

    return paddle.get_device().startswith("cpu")


def _collectives(group: Any) -> Any:
    # Fleet's model-parallel kernels run on GPUs (and XPUs); the CPU has none of them.
    return _GlooGroup(group) if on_cpu() else _FleetGroup(group)


def apply_tensor_parallel(model: Any, resolved: ResolvedPlan, group: Any) -> TensorParallelRank:
    """Split ``model`` in place for this process's rank of the model-parallel ``group``
    (``fleet.get_hybrid_communicate_group().get_model_parallel_group()``): each split
    parameter keeps only this rank's shard, head counts are divided, and the split layers
    communicate through the group. On GPUs (NCCL) these are Paddle fleet's own model-parallel
    collectives (``_c_identity``, ``_mp_allreduce``, ``_c_concat``: what fleet's
    ``ColumnParallelLinear``, ``RowParallelLinear`` and ``VocabParallelEmbedding`` run); over
    gloo, ``paddle.distributed``'s all-reduce and all-gather with the same gradients. The same
    hooks with simulated collectives are what :func:`simulate` checks in one process.
    """
    if group.nranks != resolved.degree:
        raise PlanError(
            f"the plan was resolved for {resolved.degree} ranks, the group has {group.nranks}"
        )
    params = model.state_dict()  # a tied table under each of its names
    full_shapes = {name: [int(d) for d in params[name].shape] for name in resolved.splits}
    state = {name: params[name].numpy() for name in resolved.splits}
    shard = split_state(state, resolved.splits, resolved.degree)[group.rank]
    installed = _install(model, resolved, shard, group.rank, _collectives(group))
    return TensorParallelRank(model, resolved, group, full_shapes, installed)


def gather_split_state(split: TensorParallelRank) -> dict[str, np.ndarray]:
    """The whole value of every split parameter of the model, on every rank."""
    params = split.model.state_dict()
    return {name: split.gather(name, params[name]) for name in split.resolved.splits}


def merge_tensor_parallel(split: TensorParallelRank) -> None:
    """Undo :func:`apply_tensor_parallel` on every rank: whole parameters (gathered from the
    ranks) in place of the shards, head counts restored, hooks removed. The
    model is then the whole trained model again, for a plugin to save as one."""
    import paddle

    model, resolved = split.model, split.resolved
    whole = gather_split_state(split)
    layers = dict(model.named_sublayers())
    replaced: dict[int, Any] = {}
    for handle in split.installed.hooks:
        handle.remove()
    for name, value in whole.items():
        layer_name, _, attr = name.rpartition(".")
        owner = layers[layer_name] if layer_name else model
        old = getattr(owner, attr)
        new = replaced.get(id(old))
        if new is None:
            new = paddle.create_parameter(
                shape=list(value.shape),
                dtype=old.dtype,
                default_initializer=paddle.nn.initializer.Assign(paddle.to_tensor(value)),
            )
            new.stop_gradient = old.stop_gradient
            replaced[id(old)] = new
        setattr(owner, attr, new)
    for name, attrs in resolved.heads.items():
        for attr in attrs:
            setattr(layers[name], attr, getattr(layers[name], attr) * resolved.degree)
    split.installed = _Installed()


@dataclass
class Simulation:
    """What :func:`simulate` ran: each rank's result and the collectives in order."""

    outputs: list[Any]
    collectives: list[str]
    rounds: int


def simulate(
    model: Any,
    plan: ParallelPlan,
    degree: int,
    run: Callable[[Any], Any],
    state: Mapping[str, np.ndarray] | None = None,
    train_mode: bool = False,
) -> Simulation:
    """Run ``run(rank_model)`` for each of ``degree`` ranks of ``model`` split by ``plan``, in
    one process and in lockstep (see the module docstring); ``state`` (default: the model's own)
    is split with :func:`split_state`. ``run`` must be deterministic: the copies are in eval
    mode, or in the model's training mode with ``train_mode`` (for layers whose eval mode
    changes their weights, such as LoRA's merge; dropout must then be 0). It returns a tensor
    or a structure of tensors. Every rank's result is returned; with a
    right plan each equals ``run(model)``."""
    import paddle

    resolved = resolve_plan(model, plan, degree)
    if state is None:
        state = {name: tensor.numpy() for name, tensor in model.state_dict().items()}
    shards = split_state(state, resolved.splits, degree)
    sync = _Lockstep(degree)
    ranks = []
    for rank in range(degree):
        copied = copy.deepcopy(model)
        _install(copied, resolved, shards[rank], rank, sync)
        copied.train() if train_mode else copied.eval()
        ranks.append(copied)
    outputs: list[Any] = []
    rounds = 0
    with paddle.no_grad():
        while True:
            rounds += 1
            outputs = []
            for rank, rank_model in enumerate(ranks):
                sync.begin(rank)
                outputs.append(run(rank_model))
            if rounds > len(sync.calls):
                break
    skipped = sorted(set(resolved.roles) - sync.seen)
    if skipped:
        raise PlanError(
            "split layers whose forward never ran (the model uses their weights directly, so "
            "no collective can surround them; call the layer instead): " + ", ".join(skipped[:5])
        )
    return Simulation(outputs=outputs, collectives=list(sync.calls), rounds=rounds)


# --- pipeline stages -----------------------------------------------------------------------------


def parameter_counts(model: Any, names: Sequence[str]) -> list[int]:
    """The number of parameter elements under each layer of ``names`` (a name may also be a
    parameter of the model itself, such as BLIP-2's ``query_tokens``)."""
    layers = dict(model.named_sublayers())
    params = dict(model.named_parameters())
    seen: set[int] = set()  # a table shared by two layers (a tied head) counts once, first
    counts = []
    for name in names:
        if name in layers:
            held = layers[name].parameters()
        elif name in params:
            held = [params[name]]
        else:
            raise PlanError(f"pipeline_layers: {name!r} is neither a layer nor a parameter")
        fresh = [p for p in held if id(p) not in seen]
        seen.update(id(p) for p in fresh)
        counts.append(sum(int(np.prod(p.shape)) for p in fresh))
    return counts


def assign_stages(
    names: Sequence[str], counts: Sequence[int], stages: int, first_stage: Sequence[str] = ()
) -> list[list[str]]:
    """Cut ``names`` (in order) into ``stages`` consecutive non-empty runs whose largest
    parameter count is as small as it can be, with every name of ``first_stage`` on stage 0.

    :raises PlanError: fewer layers than stages (after ``first_stage`` counts as one).
    """
    if stages < 1:
        raise PlanError(f"pipeline degree must be at least 1, not {stages}")
    lead = len(first_stage)
    if tuple(names[:lead]) != tuple(first_stage):
        raise PlanError("first_stage must be the leading pipeline layers")
    # The pinned layers become one unit: they can only share stage 0 with what follows.
    units = ([list(names[:lead])] if lead else []) + [[n] for n in names[lead:]]
    weights = ([sum(counts[:lead])] if lead else []) + list(counts[lead:])
    if len(units) < stages:
        raise PlanError(f"{len(names)} pipeline layers cannot fill {stages} stages")
    n = len(units)
    prefix = [0]
    for w in weights:
        prefix.append(prefix[-1] + w)
    inf = float("inf")
    # best[k][i]: the smallest possible largest stage over the first i units in k stages.
    best = [[inf] * (n + 1) for _ in range(stages + 1)]
    cut = [[0] * (n + 1) for _ in range(stages + 1)]
    best[0][0] = 0
    for k in range(1, stages + 1):
        for i in range(k, n + 1):
            for j in range(k - 1, i):
                cost = max(best[k - 1][j], prefix[i] - prefix[j])
                if cost < best[k][i]:
                    best[k][i], cut[k][i] = cost, j
    bounds, i = [], n
    for k in range(stages, 0, -1):
        bounds.append((cut[k][i], i))
        i = cut[k][i]
    return [[name for unit in units[a:b] for name in unit] for a, b in reversed(bounds)]


def pipeline_stages(model: Any, plan: ParallelPlan, stages: int) -> list[list[str]]:
    """``plan.pipeline_layers`` of ``model`` cut into ``stages`` stages balanced by parameter
    count, ``plan.first_stage`` on stage 0 (:func:`assign_stages`). Every parameter of the
    model must sit under exactly one of the layers, so no weight is left off every stage."""
    names = list(plan.pipeline_layers)
    counts = parameter_counts(model, names)
    total = sum(int(np.prod(p.shape)) for p in model.parameters())
    if sum(counts) != total:
        raise PlanError(
            f"pipeline_layers hold {sum(counts)} of the model's {total} parameters; "
            "each parameter must sit under exactly one of them"
        )
    return assign_stages(names, counts, stages, plan.first_stage)
