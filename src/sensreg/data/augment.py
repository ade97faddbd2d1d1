"""The usual CIFAR training augmentation (random crop of the padded image, random flip), applied
to a whole batch on its device, with the random draws made on the CPU so that a seed gives the
same augmentation everywhere and a checkpoint can continue the stream.

Folder datasets augment as they decode instead (``folders.image_transform``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def random_crop_flip(x: Tensor, generator: torch.Generator, padding: int = 4,
                     fill: Sequence[float] | float = 0.0) -> Tensor:
    """The usual CIFAR training augmentation of a whole batch ``x`` (N, C, H, W), on its device.

    Each image is padded by ``padding`` pixels of value ``fill`` (one per channel, or one for
    all) on every side, cropped back to H x W at a random offset, and mirrored left-right with
    probability 1/2. The offsets and flips are drawn on the CPU from ``generator`` (as the
    shuffling order is), so that a seed gives the same augmentation on every device and a
    resumed run, given the generator's saved state, continues the same stream.
    """
    return crop_flip(x, crop_flip_draws(x.shape[0], generator, padding), padding, fill)


def crop_flip_draws(n: int, generator: torch.Generator, padding: int = 4) -> tuple[Tensor, Tensor, Tensor]:
    """The random part of ``random_crop_flip`` for ``n`` images: row offsets, column offsets
    and flips, in that order, on the CPU. (Drawn for a whole batch and then divided with
    ``part_of``, they give each process of a distributed run its images' share.)"""
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flip = torch.randint(0, 2, (n,), generator=generator).bool()
    return top, left, flip


def crop_flip(x: Tensor, draws: tuple[Tensor, Tensor, Tensor], padding: int = 4,
              fill: Sequence[float] | float = 0.0) -> Tensor:
    """Crop and flip every image of ``x`` as ``draws`` (from ``crop_flip_draws``) say."""
    n, c, h, w = x.shape
    top, left, flip = (d.to(x.device) for d in draws)
    value = torch.as_tensor(fill, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    padded = value.expand(n, c, h + 2 * padding, w + 2 * padding).clone()
    padded[:, :, padding:padding + h, padding:padding + w] = x
    # Source row and column of every output pixel, per image; a flip reverses the columns.
    rows = top[:, None] + torch.arange(h, device=x.device)
    cols = left[:, None] + torch.arange(w, device=x.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    # One gather for the whole batch: indexing dims 0, 2 and 3 around the channel slice gives
    # (N, H, W, C), which is permuted back (a channels-last view, what the models use).
    out = padded[torch.arange(n, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)
