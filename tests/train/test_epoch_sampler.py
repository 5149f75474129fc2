"""The training sampler resumes at the batch a run stopped before, for one rank or several."""

from __future__ import annotations

import pytest

from mixcore.train.trainer import epoch_order_sampler


def sampler(size, batch, *, accumulation=1, drop_last=False, replicas=1, rank=0, seed=5):
    return epoch_order_sampler(
        list(range(size)),
        batch_size=batch,
        seed=seed,
        drop_last=drop_last,
        num_replicas=replicas,
        rank=rank,
        accumulation_steps=accumulation,
    )


@pytest.mark.parametrize(
    ("size", "batch", "accumulation", "drop_last"),
    [(37, 4, 1, False), (37, 4, 2, False), (40, 5, 3, True), (9, 4, 1, False)],
)
def test_resume_at_any_step_gives_the_batches_of_the_uninterrupted_run(
    size, batch, accumulation, drop_last
):
    straight_sampler = sampler(size, batch, accumulation=accumulation, drop_last=drop_last)
    straight = [list(straight_sampler) for _ in range(3)]
    assert straight[0] != straight[1]  # each epoch has its own order
    updates_per_epoch = max(len(straight[0]) // accumulation, 1)
    for step in range(3 * updates_per_epoch):
        resumed = sampler(size, batch, accumulation=accumulation, drop_last=drop_last)
        # What PaddleNLP passes on resume: samples consumed by all ranks since the start.
        resumed.set_epoch(consumed_samples=step * batch * accumulation)
        epoch, update = divmod(step, updates_per_epoch)
        assert list(resumed) == straight[epoch][update * accumulation :]
        if epoch + 1 < 3:
            assert list(resumed) == straight[epoch + 1]  # the next epoch starts at its beginning


def test_two_ranks_share_each_global_batch_like_one_process_with_twice_the_batch():
    one = list(sampler(24, 6, seed=1))
    ranks = [list(sampler(24, 3, replicas=2, rank=r, seed=1)) for r in (0, 1)]
    assert [a + b for a, b in zip(*ranks, strict=True)] == one
    # 23 items: the short last batch is split evenly (one item repeated so both ranks get one).
    ranks = [list(sampler(23, 3, replicas=2, rank=r, seed=1)) for r in (0, 1)]
    assert [len(b) for b in ranks[0]] == [len(b) for b in ranks[1]] == [3, 3, 3, 3]
    assert {i for r in ranks for b in r for i in b} == set(range(23))
