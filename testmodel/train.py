"""Train the shipped TinyUNet on procedural images (no download), EDM loss and weighting.

    python -m learned_solvers.testmodel.train --iterations 4000
    python -m learned_solvers.testmodel.train --conditional --iterations 3000   # the class-conditional one

Writes ``testmodel/tiny_unet.safetensors`` (``tiny_unet_conditional.safetensors`` with
``--conditional``; float16 weights, a few MB) atomically. Sigmas are drawn log-normally (EDM's
P_mean -1.2, P_std 1.2), clipped to SD1.5's range 0.0292..14.6. The conditional UNet learns
``labelled_images`` with the class dropped (the unconditional model) on ``DROP_CLASS`` of the
samples, so classifier-free guidance applies to it.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from ..schedules import SD15_SIGMA_MAX, SD15_SIGMA_MIN
from .data import labelled_images, procedural_images
from .unet import CONDITIONAL_WEIGHTS_PATH, SIGMA_DATA, WEIGHTS_PATH, ConditionalTinyUNet, TinyUNet

SIGMA_MIN, SIGMA_MAX = SD15_SIGMA_MIN, SD15_SIGMA_MAX
DROP_CLASS = 0.15  # the share of samples trained without their class


def train(iterations: int, batch_size: int, lr: float, seed: int, out=WEIGHTS_PATH, log_every=100,
          conditional: bool = False):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    make = ConditionalTinyUNet if conditional else TinyUNet
    model = make()
    ema = make()
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    print(f"{make.__name__}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    began = time.perf_counter()
    for step in range(1, iterations + 1):
        options = {}
        if conditional:
            x0, labels = labelled_images(batch_size, generator=gen)
            dropped = torch.rand(batch_size, generator=gen) < DROP_CLASS
            options["label"] = torch.where(dropped, torch.full_like(labels, model.classes), labels)
        else:
            x0 = procedural_images(batch_size, generator=gen)
        sigma = (torch.randn(batch_size, generator=gen) * 1.2 - 1.2).exp().clamp(SIGMA_MIN, SIGMA_MAX)
        noisy = x0 + sigma[:, None, None, None] * torch.randn(x0.shape, generator=gen)
        weight = (sigma ** 2 + SIGMA_DATA ** 2) / (sigma * SIGMA_DATA) ** 2
        loss = (weight[:, None, None, None] * (model(noisy, sigma, **options) - x0) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for group in optimizer.param_groups:  # warm up, then cosine decay
            group["lr"] = lr * min(1.0, step / 200) * 0.5 * (1 + torch.cos(torch.tensor(step / iterations * 3.14159)).item())
        optimizer.step()
        with torch.no_grad():
            decay = min(0.999, (1 + step) / (10 + step))
            for p_ema, p in zip(ema.parameters(), model.parameters()):
                p_ema.lerp_(p, 1 - decay)
        if step % log_every == 0:
            print(f"step {step}/{iterations}  loss {loss.item():.4f}  {time.perf_counter() - began:.0f}s", flush=True)
    save(ema, out)
    return ema


def save(model, path):
    from safetensors.torch import save_file

    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    tmp = f"{path}.tmp"
    conditional = isinstance(model, ConditionalTinyUNet)
    save_file(state, tmp, metadata={"format": "pt", "model": type(model).__name__,
                                    "data": "labelled_images" if conditional else "procedural_images"})
    os.replace(tmp, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="the weights file (default: the shipped one's path)")
    parser.add_argument("--conditional", action="store_true",
                        help="the class-conditional UNet (trained with the class dropped now and then, for CFG)")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    out = args.out or str(CONDITIONAL_WEIGHTS_PATH if args.conditional else WEIGHTS_PATH)
    train(args.iterations, args.batch_size, args.lr, args.seed, out, conditional=args.conditional)


if __name__ == "__main__":
    main()
