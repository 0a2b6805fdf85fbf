"""Shared test problems and measurements."""

import math

import torch

from learned_solvers.learned_samplers import GaussianMixtureDenoiser


class SingleGaussian:
    """One diagonal Gaussian in float64 with a power-law spectrum, and its exact ODE."""

    def __init__(self, dims=16, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.variance = (1.0 + torch.arange(dims, dtype=torch.float64)) ** -1.0
        self.mean = 0.3 * torch.randn(dims, generator=gen, dtype=torch.float64)
        self.denoiser = GaussianMixtureDenoiser(self.mean[None], self.variance[None])
        self.gen = gen

    def start(self, sigma_max, batch=8):
        noise = torch.randn(batch, len(self.mean), generator=self.gen, dtype=torch.float64)
        return self.mean + sigma_max * noise


def fitted_slope(steps, errors):
    """Least-squares slope of -log(error) against log(steps): the measured order."""
    xs = [math.log(n) for n in steps]
    ys = [-math.log(e) for e in errors]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def hub_cache(root, repo_id: str, files: dict, commit: str = "0" * 40) -> str:
    """A huggingface_hub cache under ``root`` holding ``files`` (name -> bytes) of the model
    repository ``repo_id`` at ``commit`` on main, as the Hub's own downloads lay it out."""
    from pathlib import Path

    repo = Path(root) / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)
    return str(root)
