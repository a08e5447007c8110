import torch

from brainseg.data.sampler import EpochSampler, derive_seed


def test_order_and_seeds_depend_on_seed_and_epoch_alone():
    def epoch(seed: int, number: int) -> list[tuple[int, int]]:
        sampler = EpochSampler(range(50), seed=seed)
        sampler.set_epoch(number)
        return list(sampler)

    torch.manual_seed(0)
    first = epoch(seed=3, number=4)
    torch.manual_seed(1)
    assert epoch(seed=3, number=4) == first
    assert sorted(index for index, _ in first) == list(range(50))
    assert len({seed for _, seed in first}) == 50
    # seed + epoch does not name the epoch: (3, 4) and (4, 3) are unrelated
    assert [i for i, _ in epoch(seed=4, number=3)] != [i for i, _ in first]
    assert [i for i, _ in epoch(seed=3, number=5)] != [i for i, _ in first]


def test_processes_share_one_permutation_and_a_slice_keeps_its_seed():
    whole = EpochSampler(range(10), seed=0)
    whole.set_epoch(2)
    parts = [EpochSampler(range(10), seed=0, num_replicas=3, rank=r) for r in range(3)]
    for part in parts:
        part.set_epoch(2)
    taken = [pair for part in parts for pair in part]
    assert len(taken) == 12  # 10 slices padded to equal shares of 4
    assert set(taken) == set(whole)  # same (index, seed) pairs, the two repeats included


def test_derived_seeds_fit_int64_and_differ():
    seeds = {derive_seed(0, epoch, index) for epoch in range(5) for index in range(200)}
    assert len(seeds) == 1000 and max(seeds) < 2**63
