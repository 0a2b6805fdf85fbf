"""Measured convergence order of every base solver on the exact single-Gaussian ODE.

    python benchmarks/orders.py

Float64, 16 dimensions with a power-law spectrum, sigma 80 -> 0.05 (Karras, half-log-SNR
uniform) and 2 -> 0.1 (uniform in sigma); the order is the least-squares slope of
-log(RMSE to the exact solution) against log(steps) over 32..256 steps.
"""

import math

import torch

from learned_solvers.learned_samplers import BASE_SOLVERS, GaussianMixtureDenoiser, sample_learned
from learned_solvers.learned_samplers import single_gaussian_ode_solution
from learned_solvers.schedules import exponential, karras, uniform

STEPS = (32, 64, 128, 256)
GRIDS = {
    "karras 80..0.05": lambda n: karras(n, 0.05, 80.0),
    "log-uniform 80..0.05": lambda n: exponential(n, 0.05, 80.0),
    "uniform 2..0.1": lambda n: uniform(n, 0.1, 2.0),
}


def slope(errors):
    xs, ys = [math.log(n) for n in STEPS], [-math.log(e) for e in errors]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def main():
    gen = torch.Generator().manual_seed(0)
    variance = (1.0 + torch.arange(16, dtype=torch.float64)) ** -1.0
    mean = 0.3 * torch.randn(16, generator=gen, dtype=torch.float64)
    model = GaussianMixtureDenoiser(mean[None], variance[None])
    noise = torch.randn(8, 16, generator=gen, dtype=torch.float64)
    print(f"{'base':<18}" + "".join(f"{name:>22}" for name in GRIDS))
    variants = [(base, {}) for base in BASE_SOLVERS] + [("ipndm", {"max_order": 3})]
    for base, options in variants:
        label = base + (" (max_order 3)" if options else "")
        row = []
        for grid in GRIDS.values():
            sigma_max, sigma_min = float(grid(1)[0]), float(grid(1)[-1])
            x = mean + sigma_max * noise
            exact = single_gaussian_ode_solution(x, sigma_max, sigma_min, mean, variance)
            errors = [(sample_learned(model, x, grid(n), base=base, disable=True, **options) - exact)
                      .pow(2).mean().sqrt().item() for n in STEPS]
            row.append(slope(errors))
        print(f"{label:<18}" + "".join(f"{value:>22.2f}" for value in row))


if __name__ == "__main__":
    main()
