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
