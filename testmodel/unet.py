"""TinyUNet: a compact EDM-preconditioned denoiser for 3x32x32 images (about 1.0M parameters).

Called like a k-diffusion model, ``unet(x, sigma) -> D`` with x = x0 + sigma * eps (VE units),
over SD1.5's sigma range so that the same classical schedules apply to it as to SD1.5.
``ConditionalTinyUNet`` also takes a class ("prompt") and was trained with the class dropped
now and then, so classifier-free guidance applies to it: ``GuidedUNet`` is the model ComfyUI's
CFG makes of it for one class and scale.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

WEIGHTS_PATH = Path(__file__).with_name("tiny_unet.safetensors")
CONDITIONAL_WEIGHTS_PATH = Path(__file__).with_name("tiny_unet_conditional.safetensors")
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

    def network(self, x_in, c_noise, emb_extra=None):
        """The raw network F(c_in x, c_noise); EDM preconditioning is in ``forward``. emb_extra:
        [B, embed] added to the noise embedding (a class's)."""
        emb = self._noise_embedding(c_noise)
        if emb_extra is not None:
            emb = emb + emb_extra
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
        return self._preconditioned(x, sigma, None)

    def _preconditioned(self, x, sigma, emb_extra):
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(x.shape[0])
        s = sigma[:, None, None, None]
        c_skip = SIGMA_DATA ** 2 / (s * s + SIGMA_DATA ** 2)
        c_out = s * SIGMA_DATA / (s * s + SIGMA_DATA ** 2).sqrt()
        c_in = 1 / (s * s + SIGMA_DATA ** 2).sqrt()
        out = self.network((c_in * x).to(x.dtype), sigma.log() / 4, emb_extra)
        return c_skip * x + c_out * out.to(x.dtype)


class ConditionalTinyUNet(TinyUNet):
    """TinyUNet with a class embedding added to the noise embedding: ``unet(x, sigma, label=...)``
    with label an int or [B] class indices, or None (or ``classes``) for the unconditional
    model, which training taught by dropping the class (``testmodel.train --conditional``)."""

    def __init__(self, classes: int = 4, channels=(32, 64, 96), embed=128):
        super().__init__(channels, embed)
        self.classes = classes
        self.class_embed = nn.Embedding(classes + 1, embed)  # the last row: no class

    def forward(self, x, sigma, label=None, **kwargs):
        """D(x, sigma | label): x [B, 3, 32, 32], sigma [B] (VE units), label int, [B] or None."""
        label = self.classes if label is None else label
        labels = torch.as_tensor(label, dtype=torch.long, device=x.device).reshape(-1).expand(x.shape[0])
        if int(labels.min()) < 0 or int(labels.max()) > self.classes:
            raise ValueError(f"label must be a class 0-{self.classes - 1} (or None); got {labels.tolist()}")
        return self._preconditioned(x, sigma, self.class_embed(labels).to(x.dtype))


class GuidedUNet(nn.Module):
    """Classifier-free guidance over a ``ConditionalTinyUNet`` as ComfyUI computes it:
    ``uncond + cfg * (cond - uncond)`` on the denoised values, cond and uncond in one batch of 2B
    (at cfg 1 the cond alone, as ComfyUI skips the uncond there). A k-diffusion denoiser; one call
    is one sample-call (a CFG pair counts as one, as in ``distill.cost``)."""

    sigma_convention = "ve"

    def __init__(self, unet: ConditionalTinyUNet, label: int, cfg: float):
        super().__init__()
        if not 0 <= int(label) < unet.classes:
            raise ValueError(f"label must be one of the model's classes 0-{unet.classes - 1}; got {label}")
        self.unet, self.label, self.cfg = unet, int(label), float(cfg)
        self.sample_shape = unet.sample_shape

    def forward(self, x, sigma, **kwargs):
        if self.cfg == 1.0:
            return self.unet(x, sigma, label=self.label)
        batch = x.shape[0]
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(batch)
        labels = torch.cat([torch.full((batch,), self.label), torch.full((batch,), self.unet.classes)]).to(x.device)
        cond, uncond = self.unet(torch.cat([x, x]), torch.cat([sigma, sigma]), label=labels).chunk(2)
        return uncond + self.cfg * (cond - uncond)


def load_test_unet(path=None, device="cpu", conditional: bool = False) -> TinyUNet:
    """The shipped, trained TinyUNet (or ``ConditionalTinyUNet``) in eval mode with frozen weights."""
    from safetensors.torch import load_file

    path = Path(path or (CONDITIONAL_WEIGHTS_PATH if conditional else WEIGHTS_PATH))
    if not path.is_file():
        flag = " --conditional" if conditional else ""
        raise FileNotFoundError(
            f"{path} is missing; train it with `python -m learned_solvers.testmodel.train{flag}` "
            f"(about 15-25 minutes on 2 CPU cores)")
    model = ConditionalTinyUNet() if conditional else TinyUNet()
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    model.load_state_dict(state)
    model.requires_grad_(False).eval()
    return model.to(device)
