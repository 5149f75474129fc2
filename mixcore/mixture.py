"""Dataset mixtures: how many samples each source contributes, and which ones.

A ``dataset.train`` list with several entries is a mixture. Each entry either

* gives ``num_samples``: exactly that many samples are drawn from it;
* gives ``weight``: it gets that share (weights are normalised over the weighted entries) of the
  weighted budget, which is ``dataset.train_samples`` when set, else the weighted entries' total
  size (so weights re-balance the data without changing the epoch length);
* gives neither: every sample is used once.

The shares are allocated exactly (largest remainder), not by drawing a source per sample, so a
0.5/0.3/0.2 mixture of 10,000 samples has 5,000/3,000/2,000 samples, not roughly so. Which samples
a source contributes is drawn from the seed: a source asked for more samples than it has repeats
whole shuffled passes (every sample equally often, give or take one), one asked for fewer takes a
random subset. The result is shuffled with the seed as well, so the same config and seed always
give the same mixture in the same order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["MixtureSource", "allocate", "draw_mixture", "draw_mixture_arrays"]


@dataclass(frozen=True)
class MixtureSource:
    """One entry of a mixture: its label, how many samples it has, and what it asks for."""

    label: str
    size: int
    weight: float | None = None
    num_samples: int | None = None


def allocate(sources: Sequence[MixtureSource], budget: int | None = None) -> list[int]:
    """How many samples each source contributes (see the module docstring for the rules)."""
    counts = [0] * len(sources)
    weighted = [i for i, s in enumerate(sources) if s.weight is not None]
    for i, source in enumerate(sources):
        if source.num_samples is not None:
            counts[i] = source.num_samples
        elif source.weight is None:
            counts[i] = source.size
    if weighted:
        total = budget if budget is not None else sum(sources[i].size for i in weighted)
        weight_sum = math.fsum(sources[i].weight or 0.0 for i in weighted)
        exact = [total * (sources[i].weight or 0.0) / weight_sum for i in weighted]
        floors = [math.floor(x) for x in exact]
        left = total - sum(floors)
        # Largest remainder: the sources closest to their next sample get the leftovers.
        by_remainder = sorted(range(len(weighted)), key=lambda j: (floors[j] - exact[j], j))
        for j in by_remainder[:left]:
            floors[j] += 1
        for j, i in enumerate(weighted):
            counts[i] = floors[j]
    return counts


def _draw(size: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` indexes into ``range(size)``: whole shuffled passes, then a random subset."""
    passes, rest = divmod(count, size)
    parts = [rng.permutation(size) for _ in range(passes)]
    parts.append(rng.choice(size, rest, replace=False) if rest else np.zeros(0, dtype=np.int64))
    return np.concatenate(parts).astype(np.int64)


def draw_mixture_arrays(
    sources: Sequence[MixtureSource], seed: int, budget: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The mixture as two arrays, source by source: each drawn sample's source number and its
    index in that source.

    A source used whole keeps its own order; only sources drawn by weight or count use the seed.
    The order carries no meaning: the trainer's sampler shuffles it every epoch.
    """
    counts = allocate(sources, budget)
    rng = np.random.default_rng(seed)
    numbers, indexes = [], []
    for number, (source, count) in enumerate(zip(sources, counts, strict=True)):
        if count and source.size == 0:
            raise ValueError(f"source {source.label!r} has no samples to draw {count} from")
        if source.weight is None and source.num_samples is None:
            drawn = np.arange(source.size, dtype=np.int64)
        else:
            drawn = _draw(source.size, count, rng)
        numbers.append(np.full(len(drawn), number, dtype=np.int32))
        indexes.append(drawn)
    if not numbers:
        return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int64)
    return np.concatenate(numbers), np.concatenate(indexes)


def draw_mixture(
    sources: Sequence[MixtureSource], seed: int, budget: int | None = None
) -> list[tuple[int, int]]:
    """:func:`draw_mixture_arrays` as ``(source number, sample index)`` pairs."""
    numbers, indexes = draw_mixture_arrays(sources, seed, budget)
    return list(zip(numbers.tolist(), indexes.tolist(), strict=True))
