"""How many seeds each built-in sampler x schedule (and a fitted solver) sends far off under strong
guidance: the figures behind the divergence screen.

    python benchmarks/guided_divergence.py --fit                 # prompt 3, CFG 7, NFE 8, 1,024 seeds, 5 min
    python benchmarks/guided_divergence.py --nfe 4 --seeds 512 --fit

The model is the guided benchmark mixture (``GaussianMixtureDenoiser.close_modes(prompts=True)``,
4x32x32, SD1.5 sigmas) under classifier-free guidance as ComfyUI computes it. A result counts as
diverged where its RMS is above ``pipeline.DIVERGED_FACTOR`` x the largest RMS of a 32-step
teacher's results on the same seeds (the rule ``distill``'s screen applies, ``scoring.diverged``).
Every base solver x built-in schedule is counted; with ``--fit`` also the solver ``distill``
fits at the node's defaults (its own seeds, none of these) and its built-in floor.
"""

from __future__ import annotations

import argparse
import time

import torch

from learned_solvers.distill import NoiseLevels, distill, refine_teacher, start_states
from learned_solvers.distill.pipeline import DIVERGED_FACTOR
from learned_solvers.learned_samplers import BASE_SOLVERS, GaussianMixtureDenoiser, sample_learned
from learned_solvers.schedules import builtin_schedules, discrete_vp_sigmas

SD15 = discrete_vp_sigmas()


def rms(values: torch.Tensor) -> torch.Tensor:
    return values.double().flatten(1).pow(2).mean(1).sqrt()


def results(model, start, sigmas, batch=256, **options) -> torch.Tensor:
    outs = []
    with torch.no_grad():
        for first in range(0, len(start), batch):
            outs.append(sample_learned(model, start[first:first + batch], sigmas.to(start.dtype), disable=True,
                                       **options))
    return torch.cat(outs)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", type=int, default=3)
    parser.add_argument("--cfg", type=float, default=7.0)
    parser.add_argument("--nfe", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=1024)
    parser.add_argument("--fit", action="store_true", help="also count distill's fitted solver and its floor")
    args = parser.parse_args(argv)
    shape = (4, 32, 32)
    model = GaussianMixtureDenoiser.close_modes(shape=shape, prompts=True).guided(args.prompt, args.cfg)
    low, high = float(SD15[0]), float(SD15[-1])
    start = start_states(shape, args.seeds, high, "ve", seed=30_000)
    began = time.perf_counter()
    teacher = refine_teacher(model, start, 32, levels=NoiseLevels(low, high), batch_size=256,
                             max_steps=32)
    limit = DIVERGED_FACTOR * float(rms(teacher.final).max())
    print(f"## guided hard mixture, prompt {args.prompt}, CFG {args.cfg:g}, NFE {args.nfe}, {args.seeds} seeds: "
          f"diverged = result RMS above {limit:.2f} ({DIVERGED_FACTOR} x the largest 32-step teacher result's; "
          f"teacher {time.perf_counter() - began:.0f} s)")
    counts = {}
    for base in BASE_SOLVERS:
        for name, grid in builtin_schedules(low, high, "ve", SD15).items():
            counts[f"{base} + {name}"] = int((~(rms(results(model, start, grid(args.nfe), base=base)) <= limit)).sum())
    if args.fit:
        solver = distill(model, shape,
                         levels=NoiseLevels(low, high, convention="ve", sigma_table=SD15),
                         nfe=[args.nfe])
        fit = solver.fits[args.nfe]
        out = results(model, start, solver.sigmas(args.nfe), **solver.sampler_options(args.nfe))
        counts[f"fitted ({fit.method}, from {(fit.start or fit.floor)['base']} + "
               f"{(fit.start or fit.floor)['schedule']})"] = int((~(rms(out) <= limit)).sum())
    width = max(len(label) for label in counts)
    for label, count in sorted(counts.items(), key=lambda item: item[1]):
        print(f"  {label:<{width}}  {count:>5} of {args.seeds}  ({count / args.seeds:.1%})")
    print(f"({time.perf_counter() - began:.0f} s)")


if __name__ == "__main__":
    main()
