"""SFD (a LoRA distilled for few-step Euler) against the best built-in pair and the best learned
solver, on the shipped test UNet: per-sample error to an accurate reference on held-out seeds.

    python benchmarks/sfd_benchmark.py                    # NFE 2 3 4, 64 held-out seeds
    python benchmarks/sfd_benchmark.py --nfe 2 --set rank=16 samples=512

Rows per NFE: the best built-in pair on the held-out seeds (every base solver x karras,
exponential, time-uniform, AYS, beta), the learned solver of the Distill node's defaults
(``distill``), the SFD LoRA with Euler on its grid (``distill_network``'s defaults), and the
learned solver fitted on the distilled network (``with_solver``). Columns: mean, median and p95
per-sample RMSE to the reference (dpmpp_3m refined from 64 steps), the ratio of the mean to the
best learned solver's, the fit's model calls (sample-calls without / with gradients) and wall
time.
"""

from __future__ import annotations

import argparse
import time

import torch

from learned_solvers.distill import NoiseLevels, distill, refine_teacher, start_states
from learned_solvers.distill.sfd import SfdSettings, distill_network
from learned_solvers.learned_samplers import BASE_SOLVERS, sample_learned
from learned_solvers.schedules import builtin_schedules, discrete_vp_sigmas
from learned_solvers.testmodel import load_test_unet

SD15 = discrete_vp_sigmas()


def errors_of(out, reference):
    return (out.double() - reference.double()).flatten(1).pow(2).mean(1).sqrt()


def sample(model, start, sigmas, batch=32, **options):
    outs = []
    with torch.no_grad():
        for first in range(0, len(start), batch):
            outs.append(sample_learned(model, start[first:first + batch], sigmas.to(start.dtype), disable=True,
                                       **options))
    return torch.cat(outs)


def row(label, errors, best_learned, calls, seconds):
    ratio = float(errors.mean() / best_learned.mean()) if best_learned is not None else float("nan")
    made = f"{calls['inference']:,}/{calls['gradient']:,}" if calls else "-"
    fit = f"{seconds:.0f}s" if seconds else "-"
    return (f"   {label:<40} {errors.mean():.4f} {errors.median():.4f} {errors.quantile(0.95):.4f} "
            f"{ratio:>6.2f} {made:>15} {fit:>6}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nfe", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--held-out", type=int, default=64)
    parser.add_argument("--set", nargs="+", default=[], metavar="NAME=VALUE", help="SfdSettings changes")
    args = parser.parse_args(argv)
    changes = {}
    for item in args.set:
        name, _, value = item.partition("=")
        for kind in (int, float, str):  # numbers as numbers, words (inputs=student) as they are
            try:
                changes[name] = kind(value)
                break
            except ValueError:
                continue
    settings = SfdSettings().replace(**changes).check()
    torch.manual_seed(0)
    unet = load_test_unet()
    sigma_min, sigma_max = float(SD15[0]), float(SD15[-1])
    schedules = builtin_schedules(sigma_min, sigma_max, "ve", SD15)
    held = start_states(unet.sample_shape, args.held_out, sigma_max, "ve", seed=10_000)
    reference = refine_teacher(unet, held, 64, levels=NoiseLevels(sigma_min, sigma_max),
                               batch_size=32)
    print(f"## shipped test UNet: {args.held_out} held-out seeds; reference dpmpp_3m refined from 64 steps, "
          f"residual {reference.residual:.5f}; SFD settings {settings}")
    print(f"   {'':<40} {'mean':>6} {'median':>6} {'p95':>6} {'/learned':>6} {'calls':>15} {'fit':>6}")
    for n in args.nfe:
        print(f"NFE {n}")
        builtin = {(base, name): errors_of(sample(unet, held, grid(n), base=base), reference.final)
                   for base in BASE_SOLVERS for name, grid in schedules.items()}
        (base, name), best = min(builtin.items(), key=lambda item: float(item[1].mean()))
        began = time.perf_counter()
        solver = distill(unet, unet.sample_shape,
                         levels=NoiseLevels(sigma_min, sigma_max, convention="ve", sigma_table=SD15),
                         nfe=[n])
        learned_seconds = time.perf_counter() - began
        learned = errors_of(sample(unet, held, solver.fits[n].sigmas, **solver.sampler_options(n)), reference.final)
        began = time.perf_counter()
        result = distill_network(unet, unet, unet.sample_shape,
                                 levels=NoiseLevels(sigma_min, sigma_max, convention="ve", sigma_table=SD15),
                                 nfe=n, settings=settings.replace(with_solver=True))
        sfd_seconds = time.perf_counter() - began
        with result.adapters.attached():
            sfd = errors_of(sample(unet, held, result.sigmas, base="euler"), reference.final)
            combined = result.with_solver
            on_top = errors_of(sample(unet, held, combined.fits[n].sigmas, **combined.sampler_options(n)),
                               reference.final)
        sfd_calls = result.provenance["cost"]["calls"]
        print(row(f"best built-in: {base} + {name}", best, learned, None, 0))
        print(row("learned solver (Distill defaults)", learned, learned, solver.provenance["cost"]["calls"],
                  learned_seconds))
        print(row(f"SFD LoRA rank {settings.rank}, Euler on {result.grid_name}", sfd, learned, sfd_calls,
                  sfd_seconds))
        fit = combined.fits[n]
        print(row(f"SFD LoRA + learned solver ({fit.method})", on_top, learned,
                  combined.provenance["cost"]["calls"], 0), flush=True)


if __name__ == "__main__":
    main()
