r"""The parallel plan a model plugin returns from ``parallel_plan``: how its weights split across
the cards of a tensor-parallel group and which layers form pipeline stages.

Names are regular expressions matched with ``re.fullmatch`` against the model's own names
(``model.named_sublayers()`` for layers, ``model.state_dict()`` for parameters), as LoRA targets
are. Paddle stores a ``Linear`` weight as ``[in, out]``, so:

- a **column** layer's weight splits along axis 1 (its output features) and its bias along
  axis 0; rank ``r`` computes its slice of the output, which the next layer consumes locally;
- a **row** layer's weight splits along axis 0 (its input features); each rank multiplies its
  slice of the input, the ranks' outputs are summed, and the bias (kept whole) is added once;
- a **vocab** layer is an embedding table ``[vocab, width]`` split by rows; each rank looks up
  the ids in its range and the ranks' outputs are summed;
- everything else is **replicated**: every rank holds all of it.

Example (a decoder block with a fused ``[all q | all k | all v]`` projection)::

    ParallelPlan(
        column=(r"lm\.h\.\d+\.attn\.c_attn", r"lm\.h\.\d+\.mlp\.up", r"lm\.head"),
        row=(r"lm\.h\.\d+\.attn\.c_proj", r"lm\.h\.\d+\.mlp\.down"),
        vocab=(r"lm\.wte",),
        fused={r"lm\.h\.\d+\.attn\.c_attn\.(weight|bias)": 3},
        gathered=(r"lm\.head",),
        heads={r"lm\.h\.\d+\.attn": "num_heads"},
        pipeline_layers=("vision", "lm.wte", "lm.h.0", "lm.h.1", "lm.ln_f", "lm.head"),
        first_stage=("vision",),
    )

This module imports nothing; :mod:`mixcore.kit.tensor_parallel` resolves a plan against a
model, checks it and applies it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ParallelPlan", "plan_problems"]


@dataclass(frozen=True)
class ParallelPlan:
    """How one model splits for tensor and pipeline parallelism.

    :param column: layers split by output features (weight axis 1, bias axis 0).
    :param row: layers split by input features (weight axis 0; the bias stays whole).
    :param vocab: embedding layers split by rows of their table.
    :param gathered: column layers whose output every rank needs whole (gathered across the
        ranks), such as the language-model head that produces the logits.
    :param fused: parameter patterns -> ``parts``: the split axis holds ``parts`` equal blocks
        (a fused ``[all q | all k | all v]`` projection has 3); each block is split on its own
        and rank ``r`` gets piece ``r`` of every block, so it holds whole heads of q, k and v.
        A per-head interleaved layout (``[q k v]`` of head 0, then head 1, ...) needs no entry.
    :param split_axes: parameter patterns -> axis, for parameters that split without a layer
        role of their own (a query bias ``[width]``: 0; a relative-position table
        ``[buckets, heads]``: 1) or whose axis differs from their layer role's default (a head
        tied to a ``[vocab, width]`` embedding: 0).
    :param heads: layer patterns -> the attribute (or a tuple of attributes) holding that
        layer's head count, or the width of all its heads (T5's ``("n_heads", "inner_dim")``);
        on each rank they are divided by the degree, so its copy works on its own heads.
    :param pipeline_layers: the names of the layers that, in this order, make up the forward
        pass; pipeline stages are consecutive runs of them.
    :param first_stage: the leading ``pipeline_layers`` that always go with stage 0 (the vision
        tower and the adapter feeding the language model).
    """

    column: tuple[str, ...] = ()
    row: tuple[str, ...] = ()
    vocab: tuple[str, ...] = ()
    gathered: tuple[str, ...] = ()
    fused: Mapping[str, int] = field(default_factory=dict)
    split_axes: Mapping[str, int] = field(default_factory=dict)
    heads: Mapping[str, str | tuple[str, ...]] = field(default_factory=dict)
    pipeline_layers: tuple[str, ...] = ()
    first_stage: tuple[str, ...] = ()


def plan_problems(plan: Any) -> list[str]:
    """What is wrong with a ``parallel_plan`` result on its own (no model needed): not a
    :class:`ParallelPlan`, fields of the wrong type, patterns that do not compile, a layer in
    two roles, ``first_stage`` not leading ``pipeline_layers``. Empty when it is well formed."""
    if not isinstance(plan, ParallelPlan):
        return [f"returned {type(plan).__name__}, not a mixcore.api.ParallelPlan"]
    problems: list[str] = []
    for name in ("column", "row", "vocab", "gathered", "pipeline_layers", "first_stage"):
        value = getattr(plan, name)
        if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
            problems.append(f"{name} must be a tuple of strings")
    for name, kind in (("fused", int), ("split_axes", int)):
        value = getattr(plan, name)
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, kind) and not isinstance(v, bool)
            for k, v in value.items()
        ):
            problems.append(f"{name} must map strings to {kind.__name__} values")
    if not isinstance(plan.heads, Mapping) or not all(
        isinstance(k, str)
        and (
            isinstance(v, str)
            or (isinstance(v, tuple) and v and all(isinstance(a, str) for a in v))
        )
        for k, v in plan.heads.items()
    ):
        problems.append("heads must map strings to an attribute name or a tuple of them")
    if problems:
        return problems
    for name in ("column", "row", "vocab", "gathered", "fused", "split_axes", "heads"):
        for pattern in getattr(plan, name):
            try:
                re.compile(pattern)
            except re.error as err:
                problems.append(f"{name}: {pattern!r} is not a regular expression ({err})")
    for pattern, parts in plan.fused.items():
        if parts < 2:
            problems.append(f"fused: {pattern!r} has {parts} part(s); a fused weight has 2 or more")
    roles = {"column": plan.column, "row": plan.row, "vocab": plan.vocab}
    for a, b in (("column", "row"), ("column", "vocab"), ("row", "vocab")):
        for pattern in set(roles[a]) & set(roles[b]):
            problems.append(f"{pattern!r} is both {a} and {b}")
    if tuple(plan.pipeline_layers[: len(plan.first_stage)]) != tuple(plan.first_stage):
        problems.append("first_stage must be the leading entries of pipeline_layers")
    if len(set(plan.pipeline_layers)) != len(plan.pipeline_layers):
        problems.append("pipeline_layers names a layer twice")
    return problems
