"""Checks of a config's parallel layout (data parallel, sharding, tensor and pipeline degrees)
against the number of processes a run will have and the machine's Paddle build.

They run before any process starts and without importing Paddle: the parent of
`mixcore train --nproc-per-node N` checks them for the world it is about to launch, and each
process of a `paddle.distributed.launch` run checks them again for the world it is in.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Any

from mixcore.issues import Issue

#: The degrees PaddleNLP's TrainingArguments multiply; the data-parallel degree is what is left.
DEGREES = ("tensor_parallel_degree", "pipeline_parallel_degree", "sharding_parallel_degree")

#: Sharding stages whose PaddleNLP implementation (Paddle's ``group_sharded_parallel``) asserts
#: a GPU, XPU or custom device; on the CPU it stops with "group_sharded_parallel only support
#: gpu, xpu and custom_device now". Stage 1 (``DygraphShardingOptimizer``) runs over gloo.
GPU_STAGES = ("stage2", "stage3")

#: Set to 1, tensor parallel is accepted on a machine without GPUs: its collectives run over
#: gloo, slowly; for checking a layout (and mixcore's own tests), not for speed.
CPU_TENSOR_PARALLEL = "MIXCORE_CPU_TENSOR_PARALLEL"


def degree(config: dict[str, Any], key: str) -> int:
    """The degree ``key`` asks for, 1 when it is absent, -1 or not a whole number above 0."""
    value = config.get(key)
    if isinstance(value, int) and not isinstance(value, bool) and value > 1:
        return value
    return 1


def sharding_stages(config: dict[str, Any]) -> list[str]:
    value = config.get("sharding")
    return value.split() if isinstance(value, str) else []


def paddle_build() -> str | None:
    """``"gpu"`` for a CUDA build of the installed Paddle, ``"cpu"`` for a build without CUDA,
    None when Paddle is not installed (or its version file cannot be read).

    Read from ``paddle/version/__init__.py``, which the build writes (``cuda_version = 'False'``
    in a CPU build), so Paddle is never imported.
    """
    try:
        spec = importlib.util.find_spec("paddle")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    try:
        text = (Path(spec.origin).parent / "version" / "__init__.py").read_text(encoding="utf-8")
    except OSError:
        return None
    found = re.search(r"^cuda_version\s*=\s*['\"]([^'\"]*)['\"]", text, re.MULTILINE)
    if found is None:
        return None
    return "cpu" if found.group(1) in ("False", "") else "gpu"


def cpu_only(config: dict[str, Any]) -> str | None:
    """Why this run has no GPU (its ``device`` is ``cpu``, or the installed Paddle has no CUDA),
    or None when it may have one (a GPU build, or an XPU/NPU device whose support is Paddle's
    to check)."""
    device = config.get("device")
    if device == "cpu":
        return "device is 'cpu'"
    if device in (None, "gpu") and paddle_build() == "cpu":
        return "the installed Paddle has no CUDA support (a CPU build)"
    return None


def check_parallel(config: dict[str, Any], issues: set[Issue], world_size: int | None) -> None:
    """Degrees that are not degrees, degrees that do not fit ``world_size`` processes, and
    layouts that need GPUs on a machine without them."""
    for key in DEGREES:
        value = config.get(key)
        if value == 0 and not isinstance(value, bool):
            issues.add(
                Issue(f"$.{key}", "0 is not a degree; use 1 for no splitting or -1 to derive")
            )
    tp, pp, sd = (degree(config, key) for key in DEGREES)
    product = tp * pp * sd
    if world_size is not None and world_size % product:
        issues.add(
            Issue(
                "$.tensor_parallel_degree",
                f"tensor ({tp}) x pipeline ({pp}) x sharding ({sd}) degrees = {product} do not "
                f"divide the {world_size} process(es) of this run; the data-parallel degree is "
                "world size / (tensor x pipeline x sharding) and must be a whole number",
            )
        )
    if degree(config, "pipeline_parallel_degree") > 1:
        issues.add(Issue("$.pipeline_parallel_degree", _pipeline_not_trained_yet(config)))
    if tp > 1:
        why = cpu_only(config)
        if why is not None and os.environ.get(CPU_TENSOR_PARALLEL) != "1":
            issues.add(
                Issue(
                    "$.tensor_parallel_degree",
                    f"tensor parallel ({tp}) needs GPUs (it splits the model over cards; on "
                    f"CPUs it is only slower) and {why}; use data parallel or sharding 'stage1' "
                    f"on CPUs, or set {CPU_TENSOR_PARALLEL}=1 to check a tensor-parallel layout "
                    "on CPUs anyway (over gloo)",
                )
            )
    stages = [stage for stage in GPU_STAGES if stage in sharding_stages(config)]
    if not (stages and shards(config, world_size)):
        return
    why = cpu_only(config)
    if why is None:
        return
    fix = "; run on GPUs, or use data parallel or sharding 'stage1', which run on CPUs (gloo)"
    for stage in stages:
        issues.add(
            Issue(
                "$.sharding",
                f"sharding {stage} needs GPUs (Paddle's group-sharded stage 2/3 runs on "
                f"GPU, XPU or custom devices only) and {why}{fix}",
            )
        )


def _pipeline_not_trained_yet(config: dict[str, Any]) -> str:
    # The plans cut stages (kit.tensor_parallel.pipeline_stages), but training them needs the
    # model as fleet's PipelineLayer, which no plugin builds yet; a run that accepted the
    # degree without it would train the whole model on every card unannounced.
    why = cpu_only(config)
    gpus = f" It needs GPUs, and {why}." if why else ""
    return (
        f"pipeline parallel (pipeline_parallel_degree {config['pipeline_parallel_degree']}) is "
        "not trained by mixcore yet: the model's parallel plan names its stages, but `mixcore "
        "train` does not cut the model into them; use tensor parallel, data parallel, or "
        f"sharding 'stage1' (CPUs or GPUs; stage2/3 on GPUs) to spread the model.{gpus}"
    )


def shards(config: dict[str, Any], world_size: int | None) -> bool:
    """Whether ``sharding`` takes effect: over more than one rank. An explicit
    ``sharding_parallel_degree`` above 1 does; without one (-1), PaddleNLP shards over every
    data-parallel rank, which is more than one only in a world of several (unknown without a
    world size: `mixcore validate --world-size N` tells). A single process trains unsharded."""
    if degree(config, "sharding_parallel_degree") > 1:
        return True
    if config.get("sharding_parallel_degree", -1) != -1 or world_size is None:
        return False
    tp, pp = degree(config, "tensor_parallel_degree"), degree(config, "pipeline_parallel_degree")
    return world_size // (tp * pp) > 1
