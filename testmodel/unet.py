"""TinyUNet: a compact EDM-preconditioned denoiser for 3x32x32 images (about 1.0M parameters).

Called like a k-diffusion model, ``unet(x, sigma) -> D`` with x = x0 + sigma * eps (VE units),
over SD1.5's sigma range so that the same classical schedules apply to it as to SD1.5.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

WEIGHTS_PATH = Path(__file__).with_name("tiny_unet.safetensors")
SIGMA_DATA = 0.5


class ResBlock(nn.Module):
    def __init__(self, channels_in, channels_out, embed):
        super().__init__()
        self.norm1 = nn.GroupNorm(8, channels_in)
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, padding=1)
        self.embed = nn.Linear(embed, 2 * channels_out)
        self.norm2 = nn.GroupNorm(8, channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1)
        self.skip = nn.Conv2d(channels_in, channels_out, 1) if channels_in != channels_out else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        scale, shift = self.embed(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(nn.functional.silu(h))
        return self.skip(x) + h


class TinyUNet(nn.Module):
    """Three resolutions (32, 16, 8), channels (32, 64, 96), one residual block per level each way."""

    sigma_convention = "ve"
    sample_shape = (3, 32, 32)

    def __init__(self, channels=(32, 64, 96), embed=128):
        super().__init__()
        self.embed_dim = embed
        self.embed = nn.Sequential(nn.Linear(embed, embed), nn.SiLU(), nn.Linear(embed, embed))
        self.stem = nn.Conv2d(3, channels[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        previous = channels[0]
        for i, width in enumerate(channels):
            self.down.append(ResBlock(previous, width, embed))
            self.downsample.append(nn.Conv2d(width, width, 3, stride=2, padding=1) if i < len(channels) - 1 else nn.Identity())
            previous = width
        self.middle = ResBlock(previous, previous, embed)
        self.up = nn.ModuleList()
        for width in reversed(channels):
            self.up.append(ResBlock(previous + width, width, embed))
            previous = width
        self.out_norm = nn.GroupNorm(8, previous)
        self.out = nn.Conv2d(previous, 3, 3, padding=1)

    def _noise_embedding(self, c_noise):
        half = self.embed_dim // 2
        freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=c_noise.device) / half)
        angles = c_noise[:, None].float() * 100.0 * freqs[None]
        return self.embed(torch.cat([angles.sin(), angles.cos()], dim=1))

    def network(self, x_in, c_noise):
        """The raw network F(c_in x, c_noise); EDM preconditioning is in ``forward``."""
        emb = self._noise_embedding(c_noise)
        h = self.stem(x_in)
        skips = []
        for block, down in zip(self.down, self.downsample):
            h = block(h, emb)
            skips.append(h)
            h = down(h)
        h = self.middle(h, emb)
        for block in self.up:
            skip = skips.pop()
            if h.shape[-1] != skip.shape[-1]:
                h = nn.functional.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], dim=1), emb)
        return self.out(nn.functional.silu(self.out_norm(h)))

    def forward(self, x, sigma, **kwargs):
        """D(x, sigma): x [B, 3, 32, 32] at noise level sigma [B] (VE units) -> x0 estimate."""
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(x.shape[0])
        s = sigma[:, None, None, None]
        c_skip = SIGMA_DATA ** 2 / (s * s + SIGMA_DATA ** 2)
        c_out = s * SIGMA_DATA / (s * s + SIGMA_DATA ** 2).sqrt()
        c_in = 1 / (s * s + SIGMA_DATA ** 2).sqrt()
        out = self.network((c_in * x).to(x.dtype), sigma.log() / 4)
        return c_skip * x + c_out * out.to(x.dtype)


def load_test_unet(path=WEIGHTS_PATH, device="cpu") -> TinyUNet:
    """The shipped, trained TinyUNet in eval mode with frozen weights."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; train it with `python -m learned_solvers.testmodel.train` "
            f"(about 15 minutes on 2 CPU cores)")
    model = TinyUNet()
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    model.load_state_dict(state)
    model.requires_grad_(False).eval()
    return model.to(device)
