"""Procedural training images: gradients, discs, boxes and stripes in random colours.

No download: every batch is drawn from a seeded generator. Images are [B, 3, size, size] in
[-1, 1]. ``labelled_images`` draws them by class ("prompt"), for the class-conditional test UNet.
"""

from __future__ import annotations

import math

import torch


def _colour(count, gen):
    return torch.rand(count, 3, 1, 1, generator=gen) * 2 - 1


# the classes of ``labelled_images``: which shapes an image holds (0-2: the kind of every shape,
# 3: none, only the coloured ramp)
CLASSES = ("discs", "boxes", "stripes", "ramp only")


def labelled_images(count: int, size: int = 32, generator=None) -> tuple:
    """(images [count, 3, size, size] in [-1, 1], labels [count] in range(len(CLASSES))):
    ``procedural_images`` whose shapes are all of the label's kind (none for "ramp only")."""
    gen = generator or torch.Generator().manual_seed(0)
    labels = torch.randint(0, len(CLASSES), (count,), generator=gen)
    return procedural_images(count, size, gen, kinds=labels), labels


def procedural_images(count: int, size: int = 32, generator=None, kinds=None) -> torch.Tensor:
    """[count, 3, size, size] in [-1, 1]; kinds: [count] labels of ``labelled_images`` that fix
    each image's shapes (None: every shape's kind drawn at random)."""
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
        if kinds is not None:
            kind = kinds.reshape(count, 1, 1)
            present = present * (kinds < 3).float().reshape(count, 1, 1, 1)
        disc = radius - ((x - cx) ** 2 + (y - cy) ** 2).sqrt()
        box = radius - torch.maximum((x - cx).abs(), (y - cy).abs())
        freq = torch.rand(count, 1, 1, generator=gen) * 20 + 6
        stripes = torch.sin(freq * (x * torch.cos(angle * 3) + y * torch.sin(angle * 3))) * 0.05 + box * 0.5
        distance = torch.where(kind == 0, disc, torch.where(kind == 1, box, stripes))
        mask = torch.sigmoid(distance * size * 1.5).unsqueeze(1) * present
        image = image * (1 - mask) + _colour(count, gen) * mask
    return image.clamp(-1, 1)
