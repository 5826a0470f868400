"""Worker-loop helpers that are plain logic (no cluster needed)."""

import torch

from minigpt_ray.training.worker_utils import fmt_seconds, rank_batches


class FakeDatasetIterator:
    """Stands in for a Ray DataIterator: iter_torch_batches over [n, 4] blocks numbered 0..n-1."""

    def __init__(self, n_blocks: int):
        self.blocks = torch.arange(n_blocks).unsqueeze(1).repeat(1, 4)

    def iter_torch_batches(self, batch_size, dtypes):
        for start in range(0, len(self.blocks), batch_size):
            yield {"data": self.blocks[start : start + batch_size].to(dtypes)}


def _first_ids(batches):
    return [int(b[0, 0]) for b in batches]


def test_ranks_cover_the_same_batches_for_any_world_size():
    data = FakeDatasetIterator(10)  # batches of 2 → 5 batches
    for world in (1, 2, 3):
        covered = sorted(i for rank in range(world) for i in _first_ids(rank_batches(data, 2, 0, rank, world)[0]))
        assert covered == [0, 2, 4, 6, 8]


def test_padding_evens_out_forward_passes():
    data = FakeDatasetIterator(10)
    counts = []
    for rank in range(2):
        mine, padding = rank_batches(data, 2, 0, rank, 2)
        counts.append(len(mine) + len(padding))
    assert counts == [3, 3]  # rank 0: 3 counted; rank 1: 2 counted + 1 padding
    assert len(rank_batches(data, 2, 0, 1, 2)[1]) == 1


def test_max_batches_limits_the_evaluated_set():
    mine, padding = rank_batches(FakeDatasetIterator(10), 2, 3, 0, 1)
    assert _first_ids(mine) == [0, 2, 4] and padding == []


def test_fmt_seconds():
    assert fmt_seconds(125.4) == "2m05s"
