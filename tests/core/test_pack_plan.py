"""The bulk best-fit-decreasing planner places every sample where one-at-a-time best fit would."""

from __future__ import annotations

import bisect

import numpy as np
import pytest

from mixcore.kit.pack_plan import plan_pack_array


def one_at_a_time(lengths: np.ndarray, capacity: int, seed: int) -> list[list[int]]:
    """Best-fit decreasing placing one sample per step, in the planner's tie order."""
    shuffled = np.random.default_rng(seed).permutation(len(lengths))
    order = shuffled[np.argsort(-lengths[shuffled], kind="stable")].tolist()
    packs: list[list[int]] = []
    rooms: list[tuple[int, int]] = []  # (room, pack), sorted
    for i in order:
        need = int(lengths[i])
        at = bisect.bisect_left(rooms, (need, -1))
        if at < len(rooms):
            room, pack = rooms.pop(at)
        else:
            room, pack = capacity, len(packs)
            packs.append([])
        packs[pack].append(i)
        if room - need > 0:
            bisect.insort(rooms, (room - need, pack))
    return packs


@pytest.mark.parametrize(
    ("n", "low", "high", "capacity"),
    [(500, 1, 64, 64), (2000, 5, 300, 512), (3000, 311, 720, 2048), (800, 1, 4, 7), (50, 8, 8, 8)],
)
@pytest.mark.parametrize("seed", [0, 3])
def test_bulk_plan_equals_one_at_a_time(n, low, high, capacity, seed):
    lengths = np.random.default_rng(seed + n).integers(low, high + 1, n)
    plan = plan_pack_array(lengths, capacity, seed)
    assert plan.to_lists() == one_at_a_time(lengths, capacity, seed)
    assert sorted(plan.order.tolist()) == list(range(n))
    assert plan.tokens(lengths).max() <= capacity


def test_skewed_mix_with_many_short_samples_matches_too():
    rng = np.random.default_rng(7)
    lengths = np.concatenate([rng.integers(1, 20, 3000), rng.integers(900, 1000, 40)])
    assert plan_pack_array(lengths, 1024, 1).to_lists() == one_at_a_time(lengths, 1024, 1)


def test_empty_and_too_long():
    assert len(plan_pack_array([], 16)) == 0
    with pytest.raises(ValueError, match="exceed the pack capacity 16, the first is #1"):
        plan_pack_array([3, 17], 16)
