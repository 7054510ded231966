"""Deterministic batch order: the global batch of step s is a pure function of (seed, s).

That makes a resumed run read exactly the batches the uninterrupted run would have read, and lets every
process take its own slice of the same global batch (so results do not depend on the number of processes).
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
from torch.utils.data import Sampler


def global_batch_indices(num_items: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Item indices of the global batch at `step`: epochs are seeded permutations, the tail is dropped."""
    if batch_size > num_items:
        raise ValueError(f"batch size {batch_size} is larger than the {num_items} training items; "
                         "lower the stage's batch_size")
    batches_per_epoch = num_items // batch_size
    epoch, position = divmod(step, batches_per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(num_items)  # (num_items,)
    return order[position * batch_size:(position + 1) * batch_size]


def local_slice(indices: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This process's contiguous share of a global batch (the batch must divide by the world size)."""
    if len(indices) % world_size:
        raise ValueError(f"global batch {len(indices)} does not divide by {world_size} processes; "
                         "choose a batch_size that is a multiple of the number of processes")
    per_process = len(indices) // world_size
    return indices[rank * per_process:(rank + 1) * per_process]


class StepBatchSampler(Sampler[list[int]]):
    """Yields this process's batch indices for steps start_step .. total_steps - 1.

    `draw(step)` gives the global batch of a step (default: `global_batch_indices`, seeded epochs); any pure
    function of the step keeps resumption exact, e.g. `neighbours.neighbour_batch_indices`.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, start_step: int, total_steps: int,
                 rank: int = 0, world_size: int = 1, draw: Callable[[int], np.ndarray] | None = None):
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.start_step, self.total_steps = start_step, total_steps
        self.rank, self.world_size = rank, world_size
        self.draw = draw or (lambda step: global_batch_indices(num_items, batch_size, seed, step))

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.total_steps):
            batch = self.draw(step)
            yield local_slice(batch, self.rank, self.world_size).tolist()

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)
