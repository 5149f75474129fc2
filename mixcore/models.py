"""A model through its plugin: the one way `train`, `infer` and `merge-lora` get a bundle.

:func:`load_model_bundle` resolves what a config's ``model_name_or_path`` (or ``--model``) names
to a registered model, seeds Paddle, and calls that model's ``load_model`` hook. Training loads
its base model with it; inference (:mod:`mixcore.inference`) adds the LoRA adapter on top.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mixcore.api.errors import PluginError, UsageError
from mixcore.api.records import ModelBundle
from mixcore.registry import ModelEntry, Registry
from mixcore.run_folder import unfinished_run


def load_model_bundle(
    registry: Registry,
    source: str,
    *,
    model: str | None = None,
    options: dict[str, Any] | None = None,
    seed: int,
) -> tuple[ModelEntry, ModelBundle]:
    """Resolve ``source`` (a checkpoint folder or an alias) and load it with its plugin.

    :param model: the registered model name, when ``source`` alone is ambiguous.
    :param options: the model's options, already checked (:mod:`mixcore.config`).
    :param seed: Paddle's seed right before loading, so that a preset built with ``random_init``
        is the same model every time the same seed builds it (a LoRA adapter's base is rebuilt
        that way).
    :raises UsageError: ``source`` is the output folder of a run that has not finished.
    """
    import paddle

    refuse_unfinished(source)
    entry = registry.resolve_model(source, model)
    paddle.seed(seed)
    bundle = registry.hook.load_model(model_name=entry.name, source=source, options=options or {})
    if bundle is None:
        raise PluginError(
            f"no plugin loaded model {entry.name!r}: plugin {entry.plugin!r} registered it but "
            "its load_model hook returned nothing"
        )
    return entry, bundle


def refuse_unfinished(source: str) -> None:
    """Raise :class:`UsageError` when ``source`` is the output folder of a run that has not
    finished: its model files are not a model to use (one of its checkpoints is)."""
    if _is_dir(source):
        problem = unfinished_run(Path(source))
        if problem:
            raise UsageError(problem)


def _is_dir(source: str) -> bool:
    try:
        return Path(source).is_dir()
    except (OSError, RuntimeError):  # a name too long, an unknown ~user: resolve_model says so
        return False


def model_parallel_plan(
    registry: Registry, entry: ModelEntry, bundle: ModelBundle, degree: int = 1
) -> Any:
    """The model's :class:`~mixcore.api.ParallelPlan` from its plugin's ``parallel_plan`` hook,
    resolved against the loaded model for ``degree`` ranks
    (:func:`mixcore.kit.tensor_parallel.resolve_plan`); returns ``(plan, resolved)``.

    :raises PluginError: the model has no plan, or its plan is malformed or does not fit the
        model; the message names the plugin.
    :raises DegreeError: a usage error: the model's sizes do not divide by ``degree``.
    """
    from mixcore.kit.tensor_parallel import DegreeError, PlanError, resolve_plan

    plan = registry.hook.parallel_plan(model_name=entry.name, bundle=bundle)
    if plan is None:
        raise PluginError(
            f"model {entry.name!r} has no parallel plan (its plugin {entry.plugin!r} "
            "implements no parallel_plan for it)"
        )
    try:
        return plan, resolve_plan(bundle.model, plan, degree)
    except PlanError as err:
        raise PluginError(
            f"plugin {entry.plugin!r} gave model {entry.name!r} a bad parallel plan: {err}"
        ) from None
    except DegreeError as err:
        raise DegreeError(f"model {entry.name!r}: {err}") from None


def apply_parallel_plan(
    registry: Registry, entry: ModelEntry, bundle: ModelBundle, degree: int
) -> Any:
    """Split ``bundle.model`` in place for this process's rank of a tensor-parallel run of
    ``degree`` ranks, by its plugin's plan; returns the
    :class:`~mixcore.kit.tensor_parallel.TensorParallelRank` that puts it back together.

    Called by `mixcore train` with ``tensor_parallel_degree > 1``, after fleet's hybrid groups
    exist (PaddleNLP's ``TrainingArguments`` create them) and after LoRA (LoRA-wrapped layers
    split as Megatron's LoRA layers do).
    """
    from paddle.distributed import fleet

    from mixcore.kit.tensor_parallel import apply_tensor_parallel

    _, resolved = model_parallel_plan(registry, entry, bundle, degree)
    group = fleet.get_hybrid_communicate_group().get_model_parallel_group()
    return apply_tensor_parallel(bundle.model, resolved, group)
