"""Command line: ``python -m learned_solvers <command>``.

``demo``: distill a few-step solver for the shipped test UNet, print it against every
classical solver x schedule on held-out seeds, and write a PNG of the learned grid and samples.
``compare``: sample the exact Gaussian-mixture denoiser (SD-latent sized, SD1.5 sigma range)
with every base solver on classical grids and print each one's RMSE to the ODE's solution.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from .learned_samplers import BASE_SOLVERS, GaussianMixtureDenoiser, sample_learned
from .schedules import exponential, karras, sd15_schedules

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


def demo(nfe: int, method: str, iterations: int, seed: int, out_path: str, use_mixture: bool, out=sys.stdout):
    """Distill, compare on held-out seeds, write the PNG; returns (learned RMSE, best classical RMSE)."""
    from .distill import distill, start_states
    from .schedules.plot import plot_grids, sample_sheet, stack_vertically

    began = time.perf_counter()
    if use_mixture:
        model = GaussianMixtureDenoiser.power_law(shape=(3, 32, 32), seed=seed)
        name = "exact Gaussian mixture (3x32x32)"
    else:
        from .testmodel import load_test_unet

        model = load_test_unet()
        name = "shipped TinyUNet (3x32x32, eps model on SD1.5 sigmas)"
    shape = (3, 32, 32)
    grids = sd15_schedules()

    def run(start, sigmas, base, **options):
        with torch.no_grad():
            return sample_learned(model, start, sigmas.to(start.dtype), base=base, disable=True, **options)

    teacher_grid = exponential(48, SD15_SIGMA_MIN, SD15_SIGMA_MAX, final_zero=True)
    probe = start_states(shape, 16, SD15_SIGMA_MAX, "ve", seed=seed)
    probe_teacher = run(probe, teacher_grid, "dpmpp_3m")
    rmse = lambda a, b: (a.double() - b.double()).pow(2).mean().sqrt().item()  # noqa: E731
    pairs = [(b, g) for b in BASE_SOLVERS for g in grids]
    init_base, init_grid = min(pairs, key=lambda p: rmse(run(probe, grids[p[1]](nfe), p[0]), probe_teacher))
    print(f"{name}: NFE {nfe}, starting from the best built-in pair on training seeds: "
          f"{init_base} + {init_grid}", file=out)
    solver = distill(model, shape, sigma_min=SD15_SIGMA_MIN, sigma_max=SD15_SIGMA_MAX, nfe=[nfe], method=method,
                     base=init_base, init_sigmas=grids[init_grid], samples=40, validation=16, seed=seed,
                     iterations=iterations, teacher_steps=32, convention="ve",
                     progress=lambda step, total, loss, held: print(
                         f"\r  fitting {step}/{total}  loss {loss:.4f}  validation RMSE {held:.4f}", end="", file=out))
    print(file=out)
    held = start_states(shape, 32, SD15_SIGMA_MAX, "ve", seed=seed + 10_000)
    teacher = run(held, teacher_grid, "dpmpp_3m")
    scores = {f"{b} + {g}": rmse(run(held, grids[g](nfe), b), teacher) for b, g in pairs}
    learned = solver.sample(model, held, nfe)
    learned_rmse = rmse(learned, teacher)
    ranked = sorted(scores.items(), key=lambda item: item[1])
    print(f"\nRMSE to the teacher (dpmpp_3m, 48 steps) on 32 held-out seeds, NFE {nfe}:", file=out)
    for label, value in ranked[:5]:
        print(f"  {label:<26} {value:.4f}", file=out)
    print(f"  {'... ' + str(len(ranked) - 5) + ' more built-in pairs':<26}", file=out)
    fit = solver.fits[nfe]
    print(f"  {'learned (' + fit.method + ')':<26} {learned_rmse:.4f}   "
          f"= {learned_rmse / ranked[0][1]:.2f} x the best built-in; fit {fit.fit_seconds:.0f} s", file=out)
    best_base, best_grid = ranked[0][0].split(" + ")
    picture = stack_vertically([
        plot_grids({"learned": solver.sigmas(nfe), "karras": grids["karras"](nfe), "ays": grids["ays"](nfe),
                    "exponential": grids["exponential"](nfe)}, title=f"{name}: sigma per step, NFE {nfe}"),
        sample_sheet({"teacher": teacher[:6], f"{best_base}+{best_grid}": run(held[:6], grids[best_grid](nfe), best_base),
                      "2m+karras": run(held[:6], grids["karras"](nfe), "dpmpp_2m"), "learned": learned[:6]}, scale=3),
    ])
    picture.save(out_path)
    print(f"wrote {out_path}  ({time.perf_counter() - began:.0f} s in all)", file=out)
    return learned_rmse, ranked[0][1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m learned_solvers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    dem = commands.add_parser("demo", help="distill a solver for the shipped test UNet and write a PNG")
    dem.add_argument("--nfe", type=int, default=4)
    dem.add_argument("--method", default="auto", choices=["auto", "dode", "ld3", "s4s", "s4s_alt"])
    dem.add_argument("--iterations", type=int, default=100)
    dem.add_argument("--seed", type=int, default=0)
    dem.add_argument("--out", default="learned_solver_demo.png")
    dem.add_argument("--mixture", action="store_true", help="use the exact Gaussian mixture instead of the UNet")
    cmp = commands.add_parser("compare", help="base solvers x grids on the exact mixture denoiser")
    cmp.add_argument("--nfe", type=int, nargs="+", default=[4, 5, 6, 8, 10])
    cmp.add_argument("--samples", type=int, default=16)
    cmp.add_argument("--seed", type=int, default=0)
    cmp.add_argument("--reference-steps", type=int, default=500)
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.nfe < 2:
            parser.error("--nfe must be at least 2")
        demo(args.nfe, args.method, args.iterations, args.seed, args.out, args.mixture)
    if args.command == "compare":
        if min(args.nfe) < 1:
            parser.error("--nfe values must be >= 1")
        compare(args.nfe, args.samples, args.seed, args.reference_steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
