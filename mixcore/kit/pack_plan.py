"""Planning MIXToken packs: best-fit decreasing bin packing in ``O(n log n)``, for millions.

Samples are taken longest first (ties in an order drawn from the seed); each goes into the open
pack with the least room that still fits it (the lowest-numbered such pack on a tie), or opens a
new pack. Placed one sample at a time in Python, that is a second per 100k samples and the
sorted list of open packs makes it worse than ``n log n`` once it holds millions of nearly full
packs. Two facts let the plan be made in bulk instead, with the same result:

* all samples of one length are consecutive in the order, and every open pack with the same
  room treats them alike. Take the smallest room ``r`` that fits length ``l``: no open pack has
  room in ``[l, r)``, so after a pack of room ``r`` takes one sample it is still the best fit
  while its room allows, and it takes ``r // l`` of them in a row before the next pack of room
  ``r`` is used. One step therefore places ``r // l`` samples into each of ``k`` packs at once
  (numpy), and the Python loop runs once per (length, room) pair met, not once per sample;
* the shortest sample is the last one placed, so a pack whose room is below the shortest length
  can never take another sample: it leaves the search structure (closed), which keeps the
  structure as small as the number of distinct rooms, at most ``capacity``.

The plan is returned as two arrays (:class:`PackPlan`): the sample indexes pack by pack, and where
each pack starts; ten million lengths plan in seconds and take 160 MB.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["PackPlan", "plan_pack_array"]


@dataclass(frozen=True)
class PackPlan:
    """Packs as arrays: pack ``p`` holds samples ``order[offsets[p]:offsets[p + 1]]``, in the
    order they were placed."""

    order: np.ndarray  # int64 sample indexes
    offsets: np.ndarray  # int64, len(packs) + 1

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def pack(self, p: int) -> list[int]:
        return self.order[self.offsets[p] : self.offsets[p + 1]].tolist()

    def to_lists(self) -> list[list[int]]:
        return [chunk.tolist() for chunk in np.split(self.order, self.offsets[1:-1])]

    def tokens(self, lengths: np.ndarray) -> np.ndarray:
        """Tokens in each pack."""
        return np.add.reduceat(lengths[self.order], self.offsets[:-1]) if len(self) else lengths[:0]


class _OpenPacks:
    """Open packs by room: a sorted list of the distinct rooms, and each room's pack numbers."""

    def __init__(self, smallest: int) -> None:
        self.smallest = smallest  # a pack with less room than this is closed
        self.rooms: list[int] = []
        self.packs: dict[int, np.ndarray] = {}

    def best_room(self, need: int) -> int | None:
        at = bisect.bisect_left(self.rooms, need)
        return self.rooms[at] if at < len(self.rooms) else None

    def take(self, room: int, count: int) -> np.ndarray:
        """The ``count`` lowest-numbered packs of ``room``, removed from it."""
        packs = self.packs[room]
        taken, left = packs[:count], packs[count:]
        if len(left):
            self.packs[room] = left
        else:
            del self.packs[room]
            self.rooms.pop(bisect.bisect_left(self.rooms, room))
        return taken

    def put(self, room: int, packs: np.ndarray) -> None:
        if room < self.smallest or room <= 0 or not len(packs):
            return
        if room in self.packs:
            self.packs[room] = np.sort(np.concatenate([self.packs[room], packs]))
        else:
            self.packs[room] = packs
            bisect.insort(self.rooms, room)


def plan_pack_array(lengths: Sequence[int] | np.ndarray, capacity: int, seed: int = 0) -> PackPlan:
    """Group sample indexes into packs whose lengths sum to at most ``capacity``.

    Best-fit decreasing (see the module docstring); the same ``lengths`` and ``seed`` always give
    the same plan. A sample longer than ``capacity`` is a ``ValueError``: callers apply their
    over-long policy first.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    n = len(lengths)
    if n == 0:
        return PackPlan(np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64))
    too_long = np.flatnonzero(lengths > capacity)
    if len(too_long):
        first = int(too_long[0])
        raise ValueError(
            f"{len(too_long)} sample(s) exceed the pack capacity {capacity}, "
            f"the first is #{first} with {int(lengths[first])} tokens"
        )
    if lengths.min() < 0:
        raise ValueError("sample lengths cannot be negative")
    shuffled = np.random.default_rng(seed).permutation(n)
    order = shuffled[np.argsort(-lengths[shuffled], kind="stable")]
    sorted_lengths = lengths[order]
    # Runs of equal length in the decreasing order.
    starts = np.flatnonzero(np.r_[True, sorted_lengths[1:] != sorted_lengths[:-1]])
    ends = np.r_[starts[1:], n]

    open_packs = _OpenPacks(int(sorted_lengths[-1]))
    placed_packs: list[np.ndarray] = []
    placed_samples: list[np.ndarray] = []
    pack_count = 0
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        need = int(sorted_lengths[start])
        position = start
        while position < end:
            left = end - position
            room = open_packs.best_room(need)
            if room is None:  # no open pack fits: open as many as this length fills
                room = capacity
                per_pack = capacity // need if need else left
                count = -(-left // per_pack)
                packs = np.arange(pack_count, pack_count + count, dtype=np.int64)
                pack_count += count
            else:
                per_pack = room // need if need else left
                count = min(len(open_packs.packs[room]), -(-left // per_pack))
                packs = open_packs.take(room, count)
            placed = min(left, count * per_pack)
            placed_packs.append(np.repeat(packs, per_pack)[:placed])
            placed_samples.append(order[position : position + placed])
            position += placed
            last = placed - (count - 1) * per_pack  # the last pack may take fewer
            open_packs.put(room - per_pack * need, packs[:-1])
            open_packs.put(room - last * need, packs[-1:])

    pack_of = np.concatenate(placed_packs)
    samples = np.concatenate(placed_samples)
    by_pack = np.argsort(pack_of, kind="stable")  # keeps each pack's placing order
    sizes = np.bincount(pack_of, minlength=pack_count)
    offsets = np.zeros(pack_count + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    return PackPlan(samples[by_pack].astype(np.int64), offsets)
