"""Minibatches of a split: shuffled by one permutation drawn on the CPU, resumable part-way
through an epoch (``start``), divided among the processes of a distributed run (``shard``).

Tensor splits are indexed on their device; a folder split (``folders.FolderSplit``) takes the
same index batches and decodes their images in its DataLoader.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from .tensors import Split


def batches(split: Split, batch_size: int, shuffle: bool = False,
            generator: torch.Generator | None = None, start: int = 0,
            shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[Tensor, Tensor]]:
    """Minibatches of a split, shuffled by a random index permutation.

    The permutation is drawn on the CPU from ``generator`` so that the order is the same on
    every device; only the index tensor travels. ``start`` skips that many batches of the same
    order (to continue an epoch that was stopped part-way). ``shard=(rank, world)``: of each
    batch, the part that process ``rank`` of ``world`` takes (``part_of``); together the parts
    are the batch a single process would take. A folder split (``folders.FolderSplit``)
    takes the same index batches (``index_batches``) and decodes their images in its DataLoader.
    """
    if not isinstance(split, Split):
        return split.batches(index_batches(len(split), batch_size, shuffle, generator, start, shard))
    return _device_batches(split, batch_size, shuffle, generator, start, shard)


def _device_batches(split: Split, batch_size: int, shuffle: bool, generator: torch.Generator | None,
                    start: int, shard: tuple[int, int]) -> Iterator[tuple[Tensor, Tensor]]:
    n = len(split)
    order = torch.randperm(n, generator=generator).to(split.y.device) if shuffle else None
    for begin in range(start * batch_size, n, batch_size):
        if order is None:
            lo, hi = part_bounds(min(batch_size, n - begin), shard)
            yield split.x[begin + lo:begin + hi], split.y[begin + lo:begin + hi]
        else:
            idx = part_of(order[begin:begin + batch_size], shard)
            yield split.x[idx], split.y[idx]


def index_batches(n: int, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                  start: int = 0, shard: tuple[int, int] = (0, 1)) -> Iterator[Tensor]:
    """The indices (CPU) of each batch ``batches`` takes of ``n`` items, drawn as it draws them:
    one permutation from ``generator`` when the first batch is asked for."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for begin in range(start * batch_size, n, batch_size):
        yield part_of(order[begin:begin + batch_size], shard)


def part_bounds(n: int, shard: tuple[int, int]) -> tuple[int, int]:
    """[lo, hi): the contiguous part of ``n`` items that process ``rank`` of ``world`` takes, as
    ``Tensor.tensor_split`` divides them (the first n % world parts one item longer)."""
    rank, world = shard
    size, extra = divmod(n, world)
    lo = rank * size + min(rank, extra)
    return lo, lo + size + (rank < extra)


def part_of(t: Tensor, shard: tuple[int, int]) -> Tensor:
    """Process ``rank``'s part of ``t`` along its first dimension (see ``part_bounds``)."""
    if shard == (0, 1):
        return t
    lo, hi = part_bounds(t.shape[0], shard)
    return t[lo:hi]


def num_batches(split: Split, batch_size: int) -> int:
    return -(-len(split) // batch_size)
