"""Command line: ``python -m learned_solvers <command>``.

``compare``: sample the exact Gaussian-mixture denoiser (SD-latent sized, SD1.5 sigma range)
with every base solver on classical grids and print each one's RMSE to the ODE's solution.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from .learned_samplers import BASE_SOLVERS, GaussianMixtureDenoiser, sample_learned
from .schedules import exponential, karras

SD15_SIGMA_MIN, SD15_SIGMA_MAX = 0.0291675, 14.6146412  # SD1.x's discrete schedule range

GRIDS = {
    "karras": lambda n: karras(n, SD15_SIGMA_MIN, SD15_SIGMA_MAX, final_zero=True),
    "exponential": lambda n: exponential(n, SD15_SIGMA_MIN, SD15_SIGMA_MAX, final_zero=True),
}


def compare(nfes, samples: int, seed: int, reference_steps: int, out=sys.stdout) -> dict:
    """RMSE to the reference ODE solution for each (base, grid, NFE); returns the table."""
    model = GaussianMixtureDenoiser.power_law(shape=(4, 32, 32), seed=seed, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed + 1)
    x = SD15_SIGMA_MAX * torch.randn(samples, *model.shape, generator=gen, dtype=torch.float64)
    start = time.perf_counter()
    reference = sample_learned(model, x, GRIDS["exponential"](reference_steps), base="dpmpp_3m", disable=True)
    print(f"reference: dpmpp_3m, {reference_steps} steps, {time.perf_counter() - start:.1f} s", file=out)
    table = {}
    header = f"{'base':<10} {'grid':<12}" + "".join(f"{'NFE ' + str(n):>10}" for n in nfes)
    print(header, file=out)
    for base in BASE_SOLVERS:
        for grid_name, grid in GRIDS.items():
            row = []
            for nfe in nfes:
                result = sample_learned(model, x, grid(nfe), base=base, disable=True)
                rmse = (result - reference).pow(2).mean().sqrt().item()
                table[(base, grid_name, nfe)] = rmse
                row.append(rmse)
            print(f"{base:<10} {grid_name:<12}" + "".join(f"{v:>10.4f}" for v in row), file=out)
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m learned_solvers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    cmp = commands.add_parser("compare", help="base solvers x grids on the exact mixture denoiser")
    cmp.add_argument("--nfe", type=int, nargs="+", default=[4, 5, 6, 8, 10])
    cmp.add_argument("--samples", type=int, default=16)
    cmp.add_argument("--seed", type=int, default=0)
    cmp.add_argument("--reference-steps", type=int, default=500)
    args = parser.parse_args(argv)
    if args.command == "compare":
        if min(args.nfe) < 1:
            parser.error("--nfe values must be >= 1")
        compare(args.nfe, args.samples, args.seed, args.reference_steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
