"""Worker-loop helpers that are plain logic (no cluster needed)."""

import numpy as np
import torch

from minigpt_ray.training.worker_utils import endless_batches, fmt_seconds, rank_batches


def numbered_blocks(n_blocks: int) -> np.ndarray:
    """[n, 4] blocks whose tokens are their own index 0..n-1."""
    return np.repeat(np.arange(n_blocks, dtype=np.int32)[:, None], 4, axis=1)


def _first_ids(batches):
    return [int(b[0, 0]) for b in batches]


def test_ranks_cover_the_same_batches_for_any_world_size():
    data = numbered_blocks(10)  # batches of 2 → 5 batches
    for world in (1, 2, 3):
        covered = sorted(i for rank in range(world) for i in _first_ids(rank_batches(data, 2, 0, rank, world)[0]))
        assert covered == [0, 2, 4, 6, 8]


def test_padding_evens_out_forward_passes():
    data = numbered_blocks(10)
    counts = []
    for rank in range(2):
        mine, padding = rank_batches(data, 2, 0, rank, 2)
        counts.append(len(mine) + len(padding))
    assert counts == [3, 3]  # rank 0: 3 counted; rank 1: 2 counted + 1 padding
    assert len(rank_batches(data, 2, 0, 1, 2)[1]) == 1


def test_max_batches_limits_the_evaluated_set():
    mine, padding = rank_batches(numbered_blocks(10), 2, 3, 0, 1)
    assert _first_ids(mine) == [0, 2, 4] and padding == []


def test_fmt_seconds():
    assert fmt_seconds(125.4) == "2m05s"


def test_each_worker_trains_on_its_own_share_every_epoch_in_a_new_order():
    blocks = numbered_blocks(12)
    for rank in range(3):
        stream = endless_batches(blocks, 2, seed=5, rank=rank, world=3)
        epochs = [[int(i) for _ in range(2) for i in next(stream)[:, 0]] for _ in range(3)]  # 4 blocks an epoch
        assert all(sorted(epoch) == list(range(rank, 12, 3)) for epoch in epochs)
        assert len({tuple(epoch) for epoch in epochs}) > 1  # reshuffled
        assert next(stream).dtype == torch.long
    again = endless_batches(blocks, 2, seed=5, rank=1, world=3)
    first = endless_batches(blocks, 2, seed=5, rank=1, world=3)
    assert all(torch.equal(next(again), next(first)) for _ in range(6))  # the seed fixes the order


def test_a_share_smaller_than_a_batch_still_gives_full_batches():
    stream = endless_batches(numbered_blocks(3), 4, seed=0, rank=1, world=2)  # rank 1 holds block 1 only
    assert next(stream)[:, 0].tolist() == [1, 1, 1, 1]
    stream = endless_batches(numbered_blocks(1), 2, seed=0, rank=1, world=2)  # more workers than blocks
    assert next(stream)[:, 0].tolist() == [0, 0]
