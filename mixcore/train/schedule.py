"""The cosine learning-rate schedule with a floor and a warm start (PaddleMIX's BLIP-2 configs).

PaddleMIX's ``CosineDecayWithWarmup`` warms up linearly from ``warmup_start_lr`` and decays to
``eta_min``. PaddleNLP 2.8.1's ``cosine`` schedule warms up from 0 and decays to 0, and its
``TrainingArguments`` have no field for either end, so the config's ``eta_min`` and
``warmup_start_lr`` reach the Trainer as arguments of its own and this module builds the
schedule. With both at 0 it is PaddleNLP's cosine, step for step.

The schedule is a ``paddle.optimizer.lr.LambdaDecay``, as PaddleNLP's is, so a checkpoint stores
and restores its state the same way.
"""

from __future__ import annotations

import math
from typing import Any


def cosine_rate(
    step: int,
    *,
    learning_rate: float,
    warmup_steps: int,
    total_steps: int,
    min_lr: float = 0.0,
    warmup_start_lr: float = 0.0,
    num_cycles: float = 0.5,
) -> float:
    """The learning rate after ``step`` optimizer steps.

    During warmup it rises linearly from ``warmup_start_lr`` (at step 0) towards
    ``learning_rate``; afterwards it follows PaddleNLP's cosine over the remaining steps, scaled
    to run from ``learning_rate`` down to ``min_lr`` (reached at ``total_steps``).
    """
    if step < warmup_steps:
        return warmup_start_lr + (learning_rate - warmup_start_lr) * step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    factor = max(0.0, 0.5 * (1.0 + math.cos(math.pi * num_cycles * 2.0 * progress)))
    return min_lr + (learning_rate - min_lr) * factor


def warmup_steps(args: Any, num_training_steps: int) -> int:
    """Warmup steps as PaddleNLP's ``Trainer.create_scheduler`` counts them."""
    if args.warmup_steps > 0:
        return int(args.warmup_steps)
    return int(args.warmup_ratio * num_training_steps)


def cosine_scheduler(
    args: Any, num_training_steps: int, *, min_lr: float, warmup_start_lr: float
) -> Any:
    """The ``LambdaDecay`` for ``args`` (PaddleNLP ``TrainingArguments``: ``learning_rate``,
    ``warmup_steps`` / ``warmup_ratio``, ``decay_steps``, ``num_cycles``) over
    ``num_training_steps``, ending at ``min_lr`` and warming up from ``warmup_start_lr``."""
    from paddle.optimizer.lr import LambdaDecay

    peak = float(args.learning_rate)
    decay = getattr(args, "decay_steps", 0) or 0
    shape = {
        "learning_rate": peak,
        "warmup_steps": warmup_steps(args, num_training_steps),
        "total_steps": decay if decay > 0 else num_training_steps,
        "min_lr": float(min_lr),
        "warmup_start_lr": float(warmup_start_lr),
        "num_cycles": float(args.num_cycles),
    }

    def factor(step: int) -> float:
        return cosine_rate(step, **shape) / peak

    return LambdaDecay(peak, factor)
