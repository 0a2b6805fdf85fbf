"""Procedural training images: gradients, discs, boxes and stripes in random colours.

No download: every batch is drawn from a seeded generator. Images are [B, 3, size, size] in
[-1, 1].
"""

from __future__ import annotations

import math

import torch


def _colour(count, gen):
    return torch.rand(count, 3, 1, 1, generator=gen) * 2 - 1


def procedural_images(count: int, size: int = 32, generator=None) -> torch.Tensor:
    gen = generator or torch.Generator().manual_seed(0)
    axis = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    y, x = axis[:, None].expand(size, size), axis[None, :].expand(size, size)
    angle = torch.rand(count, 1, 1, generator=gen) * 2 * math.pi
    ramp = (x * torch.cos(angle) + y * torch.sin(angle)).unsqueeze(1)
    ramp = (ramp - ramp.amin((2, 3), keepdim=True)) / (ramp.amax((2, 3), keepdim=True) - ramp.amin((2, 3), keepdim=True))
    image = _colour(count, gen) * (1 - ramp) + _colour(count, gen) * ramp
    for _ in range(3):
        present = (torch.rand(count, 1, 1, 1, generator=gen) < 0.7).float()
        cy, cx = torch.rand(2, count, 1, 1, generator=gen) * 0.8 + 0.1
        radius = torch.rand(count, 1, 1, generator=gen) * 0.25 + 0.08
        kind = torch.randint(0, 3, (count, 1, 1), generator=gen)
        disc = radius - ((x - cx) ** 2 + (y - cy) ** 2).sqrt()
        box = radius - torch.maximum((x - cx).abs(), (y - cy).abs())
        freq = torch.rand(count, 1, 1, generator=gen) * 20 + 6
        stripes = torch.sin(freq * (x * torch.cos(angle * 3) + y * torch.sin(angle * 3))) * 0.05 + box * 0.5
        distance = torch.where(kind == 0, disc, torch.where(kind == 1, box, stripes))
        mask = torch.sigmoid(distance * size * 1.5).unsqueeze(1) * present
        image = image * (1 - mask) + _colour(count, gen) * mask
    return image.clamp(-1, 1)
