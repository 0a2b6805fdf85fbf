"""Command line: python -m learned_solvers COMMAND (COMMAND --help for its options).

  demo      distill a few-step solver for the shipped test UNet, print it against every
            classical solver x schedule on held-out seeds, and write a PNG of the grids and samples
  compare   the teacher, a learned-solver file and every base solver x built-in schedule on a
            shipped denoiser, by per-sample error to the teacher (and a PNG side by side)
  inspect   a learned-solver file's metadata and fits, and a PNG of its grids
  validate  check learned-solver files (exit status 1 if any is invalid)
  export    a file's sigmas as a plain list, for any UI that takes custom sigmas
  pull      download a learned-solver file from the Hugging Face Hub, validated
  push      upload a learned-solver file (and a model card) to the Hub
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from .distill.settings import METHODS, FitSettings, NoiseLevels, RunHooks
from .learned_samplers import GaussianMixtureDenoiser
from .schedules import SD15_SIGMA_MAX, SD15_SIGMA_MIN

DEMO_NFES = range(2, 21)  # each step adds fit time; past 20 steps built-in solvers are already close


def pick_threads(requested: int | None = None) -> int:
    """Threads for torch: ``requested``, else the cores that other processes leave free (from
    the 1-minute load average), at least 1. OpenMP threads that share a core with another busy
    process spin-wait at every parallel step: with one of 2 cores busy a teacher run took 2.4x
    as long on 2 threads as quiet, and on 1 thread was fastest."""
    if requested:
        return requested
    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this system
        busy = 0.0
    return max(1, min(cores, round(cores - busy)))


class CommandError(Exception):
    """A command line problem to report as one line (exit status 1)."""


# ---------------------------------------------------------------------------------------------
# Checks made before any long work starts

def writable_file(path: str) -> str:
    """``path`` if a file can be written there (its folder exists and is writable)."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"{path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise argparse.ArgumentTypeError(f"{path}: cannot write there (permission denied)")
    return path


def whole_number(low: int, high: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value} is outside {low}..{high}" if high is not None
                                             else f"{value} must be at least {low}")
        return value

    return parse


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{value} must be in (0, 1]")
    return value


# ---------------------------------------------------------------------------------------------
# Progress

class Progress:
    """Progress lines for the fit: the teacher run's batches, then the fit's steps with loss and
    held-out RMSE, each with the library's estimate of the time left (``distill.cost.TimeLeft``).
    On a terminal one line is redrawn; written to a file, a line per tenth of the work."""

    def __init__(self, out):
        self.out, self.began, self.shown = out, time.perf_counter(), -1
        self.redraw = hasattr(out, "isatty") and out.isatty()

    def __call__(self, step, total, loss, held_out, seconds_left=float("nan")):
        from .distill.cost import duration

        now = time.perf_counter()
        if loss != loss and held_out != held_out:  # NaN, NaN: a teacher batch, which has no loss
            text = f"  teacher run: batch {step} done"
        else:
            text = f"  fitting {step}/{total}  held-out RMSE {held_out:.4f}" + (
                f"  loss {loss:.4f}" if loss == loss else "")
        if step < total and seconds_left == seconds_left:
            text += f"  {duration(seconds_left)} left"
        text += f"  ({now - self.began:.0f} s)"
        tenth = 10 * step // max(total, 1)
        if self.redraw:
            print(f"\r{text:<100}", end="" if step < total else "\n", file=self.out, flush=True)
        elif tenth != self.shown or step == total:
            print(text, file=self.out, flush=True)
        self.shown = tenth


# ---------------------------------------------------------------------------------------------
# demo and compare

SHIPPED_MODELS = ("unet", "mixture", "hard")


def shipped_model(name: str):
    """(model, sample shape, description) of a denoiser the package ships, on SD1.5's sigmas."""
    if name == "mixture":
        return GaussianMixtureDenoiser.power_law(shape=(4, 32, 32)), (4, 32, 32), "exact Gaussian mixture (4x32x32)"
    if name == "hard":
        return (GaussianMixtureDenoiser.close_modes(shape=(4, 32, 32)), (4, 32, 32),
                "hard mixture: 8 close pairs of different widths (4x32x32)")
    if name == "unet":
        from .testmodel import load_test_unet

        unet = load_test_unet()
        return unet, tuple(unet.sample_shape), "shipped TinyUNet (3x32x32, eps model on SD1.5 sigmas)"
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(SHIPPED_MODELS)}")


def shipped_levels() -> NoiseLevels:
    """The noise levels every shipped denoiser runs on: SD1.5's discrete sigmas (eps, "ve")."""
    from .schedules import discrete_vp_sigmas

    return NoiseLevels(SD15_SIGMA_MIN, SD15_SIGMA_MAX, convention="ve", sigma_table=discrete_vp_sigmas())


def compare(model_name: str, nfe: int, seeds: int, seed: int, solver=None, png: str | None = None, shown: int = 4,
            out=None, limit: int | None = None):
    """The teacher, a learned solver (optional: a ``LearnedSolver`` or a file's path) and every base
    solver x built-in schedule on one shipped denoiser, by per-sample error to the teacher;
    returns the ``Comparison``."""
    from .distill.compare import compare_solvers
    from .schedules import load_learned_solver

    out = out or sys.stdout
    model, shape, name = shipped_model(model_name)
    solver = load_learned_solver(solver) if isinstance(solver, str) else solver
    began = time.perf_counter()
    result = compare_solvers(model, shape, levels=shipped_levels(), nfe=nfe, solver=solver, samples=seeds,
                             show=min(shown, seeds), seed=seed)
    print(f"{name}:", file=out)
    print(result.table(limit), file=out)
    print(f"({time.perf_counter() - began:.0f} s)", file=out)
    if png:
        comparison_picture(result).save(png)
        print(f"wrote {png}", file=out)
    return result


def comparison_picture(result, built_ins: int = 3):
    """The teacher, the learned solver and the best ``built_ins`` pairs, one row each."""
    from .schedules.plot import labelled_rows, preview

    rows = [(label, preview(latents)) for label, latents in result.rows(built_ins)]
    return labelled_rows(rows)


def demo(nfe: int, method: str, iterations: int, seed: int, out_path: str, use_mixture: bool, out=sys.stdout,
         save: str | None = None):
    """Distill with the defaults (which start from the best built-in pair), compare on held-out
    seeds, write the PNG (and, with ``save``, the learned-solver file); returns (learned mean
    per-sample error, best built-in pair's)."""
    from .distill import distill
    from .schedules import reference_schedules
    from .schedules.plot import plot_grids, stack_vertically

    began = time.perf_counter()
    model, shape, name = shipped_model("mixture" if use_mixture else "unet")
    print(f"{name}: NFE {nfe}, method {method}", file=out)
    solver = distill(model, shape, levels=shipped_levels(), nfe=[nfe], method=method, iterations=iterations, seed=seed,
                     hooks=RunHooks(progress=Progress(out)))
    print(solver.summary(), file=out)
    result = compare(model_name="mixture" if use_mixture else "unet", nfe=nfe, seeds=32, seed=seed + 10_000,
                     solver=solver, out=out, shown=6, limit=6)
    learned = result.learned()
    best = next(entry for entry in result.entries if not entry.learned)
    learned_error, best_error = learned.summary()["mean"], best.summary()["mean"]
    picture = stack_vertically([
        plot_grids({"learned": solver.sigmas(nfe), **reference_schedules(nfe, SD15_SIGMA_MIN, SD15_SIGMA_MAX)},
                   title=f"{name}: sigma per step, NFE {nfe}"),
        comparison_picture(result),
    ])
    picture.save(out_path)
    if save:
        from .schedules import save_learned_solver

        description = (f"Fitted by `python -m learned_solvers demo --nfe {nfe} --iterations {iterations} --seed {seed}"
                       f"{' --mixture' if use_mixture else ''}` on the {name}; mean per-sample error to the teacher "
                       f"on 32 held-out seeds {learned_error:.4f} against {best_error:.4f} for the best built-in "
                       f"pair ({best.label}).")
        written = save_learned_solver(solver, save, {"model_family": "TinyUNet" if not use_mixture else "mixture",
                                                     "prediction": "EPS", "description": description,
                                                     "license": "MIT", "author": "learned-solvers"})
        print(f"wrote {written}", file=out)
    print(f"wrote {out_path}  ({time.perf_counter() - began:.0f} s in all)", file=out)
    return learned_error, best_error


# ---------------------------------------------------------------------------------------------
# Learned-solver files

def inspect_file(path: str, png: str | None, out=None) -> int:
    """Print a file's metadata and fits; with ``png``, draw each NFE's grid against karras/AYS."""
    out = out or sys.stdout
    import json

    from .schedules import load_learned_solver, read_metadata, reference_schedules
    from .schedules.files import DESCRIPTION_KEYS
    from .schedules.plot import plot_grids, stack_vertically

    solver = load_learned_solver(path)
    metadata = read_metadata(path)
    print(f"{path}: learned solver, format {metadata['format_version']}", file=out)
    for key in DESCRIPTION_KEYS:
        if key in metadata:
            print(f"  {key:<16} {metadata[key]}", file=out)
    teacher = json.loads(metadata.get("provenance", "{}")).get("teacher")
    if teacher:
        print(f"  {'teacher':<16} {teacher.get('base')}, {teacher.get('steps')} steps", file=out)
    print(solver.summary(), file=out)
    for nfe in solver.nfes:
        print(f"  NFE {nfe} sigmas: " + ", ".join(f"{float(s):.6g}" for s in solver.sigmas(nfe)), file=out)
    if png:
        pictures = [plot_grids({"learned": solver.sigmas(nfe), **reference_schedules(nfe, *solver.sigma_range)},
                               title=f"{os.path.basename(path)}: NFE {nfe}") for nfe in solver.nfes]
        stack_vertically(pictures).save(png)
        print(f"wrote {png}", file=out)
    return 0


def validate_files(paths, out=None) -> int:
    """One line per file, ``ok`` or the reason it is refused; 1 if any is invalid."""
    out = out or sys.stdout
    from .schedules import LearnedSolverFileError, load_learned_solver

    failed = 0
    for path in paths:
        try:
            solver = load_learned_solver(path)
        except LearnedSolverFileError as err:
            failed += 1
            print(f"invalid  {err}", file=out)
        else:
            print(f"ok       {path}: {solver.method} on {solver.base}, NFE {', '.join(map(str, solver.nfes))}",
                  file=out)
    return 1 if failed else 0


def export_sigmas(path: str, steps: int | None, denoise: float, sigma_range, style: str, out=None) -> int:
    """Print the grid for ``steps`` model calls (None: the first fitted NFE) as a plain list;
    warnings go to stderr."""
    out = out or sys.stdout
    import json

    from .schedules import load_learned_solver

    solver = load_learned_solver(path)
    steps = solver.nfes[0] if steps is None else steps
    sigmas, warnings = solver.schedule(steps, denoise, sigma_range=tuple(sigma_range) if sigma_range else None)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    values = [float(s) for s in sigmas]
    if style == "json":
        print(json.dumps(values), file=out)
    else:
        print(", ".join(f"{v:.6g}" for v in values), file=out)
    return 0


# ---------------------------------------------------------------------------------------------
# The subcommands: name -> (help, options, run(args) -> exit status)

def demo_options(parser):
    parser.add_argument("--nfe", type=whole_number(DEMO_NFES.start, DEMO_NFES.stop - 1), default=4,
                        help=f"model calls of the learned solver ({DEMO_NFES.start}..{DEMO_NFES.stop - 1}; default 4)")
    parser.add_argument("--method", default="auto", choices=list(METHODS),
                        help="what to fit: auto (recommended), dode (step scales, seconds), ld3 (time grid), "
                             "s4s (coefficients), s4s_alt (both, alternating)")
    parser.add_argument("--iterations", type=whole_number(0, 5000), default=FitSettings().iterations,
                        help=f"gradient steps of the fit (default {FitSettings().iterations}, as the Distill node)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the noises and the fit (default 0)")
    parser.add_argument("--out", type=writable_file, default="learned_solver_demo.png",
                        help="the PNG to write (default learned_solver_demo.png)")
    parser.add_argument("--mixture", action="store_true", help="use the exact Gaussian mixture instead of the UNet")
    parser.add_argument("--save", type=writable_file, help="also write the learned solver to this .safetensors file")


def run_demo(args) -> int:
    demo(args.nfe, args.method, args.iterations, args.seed, args.out, args.mixture, save=args.save)
    return 0


def compare_options(parser):
    parser.add_argument("--model", choices=SHIPPED_MODELS, default="unet",
                        help="the shipped denoiser: the test UNet, the exact mixture, or the hard mixture (default unet)")
    parser.add_argument("--nfe", type=whole_number(2, 100), default=4, help="model calls per sample (default 4)")
    parser.add_argument("--solver", help="a learned-solver file to compare with the built-ins")
    parser.add_argument("--seeds", type=whole_number(1), default=16, help="noise seeds (default 16)")
    parser.add_argument("--seed", type=int, default=1, help="seeds the noises (default 1)")
    parser.add_argument("--png", type=writable_file, help="write the samples side by side to this PNG")


def run_compare(args) -> int:
    compare(args.model, args.nfe, args.seeds, args.seed, args.solver, args.png)
    return 0


def inspect_options(parser):
    parser.add_argument("file", help="a learned-solver .safetensors file")
    parser.add_argument("--png", type=writable_file, help="write the grids against karras/exponential/AYS to this PNG")


def validate_options(parser):
    parser.add_argument("files", nargs="+", help="learned-solver .safetensors files")


def export_options(parser):
    parser.add_argument("file", help="a learned-solver .safetensors file")
    parser.add_argument("--steps", type=whole_number(1, 1000), help="model calls (default: the first fitted NFE)")
    parser.add_argument("--denoise", type=fraction, default=1.0, help="below 1: the tail of a longer grid")
    parser.add_argument("--sigma-range", type=float, nargs=2, metavar=("MIN", "MAX"),
                        help="another model's sigma range (0 < MIN < MAX): remap the grid to it")
    parser.add_argument("--format", choices=["list", "json"], default="list", help="comma-separated or JSON")


def run_export(args) -> int:
    if args.sigma_range and not 0 < args.sigma_range[0] < args.sigma_range[1]:
        raise CommandError(f"--sigma-range takes MIN then MAX with 0 < MIN < MAX; got {args.sigma_range[0]:g} "
                           f"{args.sigma_range[1]:g}")
    return export_sigmas(args.file, args.steps, args.denoise, args.sigma_range, args.format)


def pull_options(parser):
    parser.add_argument("repo_id", help="e.g. someone/solvers")
    parser.add_argument("filename", help="e.g. sdxl_cfg5_nfe6.safetensors")
    parser.add_argument("--revision", help="branch, tag or commit (default main)")
    parser.add_argument("--dest", default=None, help="folder (default: $COMFYUI_PATH/models/learned_solvers if "
                                                     "COMFYUI_PATH is set, else the current folder)")
    parser.add_argument("--offline", action="store_true", help="only the local Hugging Face cache")


def run_pull(args) -> int:
    from .schedules.hub import pull_learned_solver

    dest = args.dest or (os.path.join(os.environ["COMFYUI_PATH"], "models", "learned_solvers")
                         if os.environ.get("COMFYUI_PATH") else ".")
    path = pull_learned_solver(args.repo_id, args.filename, dest, revision=args.revision,
                               local_files_only=args.offline)
    print(f"pulled {path}")
    return 0


def push_options(parser):
    parser.add_argument("file", help="a learned-solver .safetensors file")
    parser.add_argument("repo_id", help="the model repository, e.g. you/solvers")
    parser.add_argument("--path-in-repo", help="the file's name there (default: its own)")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--no-card", action="store_true", help="do not write README.md")


def run_push(args) -> int:
    from .schedules.hub import push_learned_solver

    url = push_learned_solver(args.file, args.repo_id, path_in_repo=args.path_in_repo, private=args.private,
                              card=not args.no_card)
    print(f"pushed {url}")
    return 0


COMMANDS = {
    "demo": ("distill a solver for the shipped test UNet and write a PNG", demo_options, run_demo),
    "compare": ("a learned solver against every built-in pair on a shipped denoiser", compare_options, run_compare),
    "inspect": ("a learned-solver file's metadata and fits, optionally a PNG", inspect_options,
                lambda args: inspect_file(args.file, args.png)),
    "validate": ("check learned-solver files; exit status 1 if any is invalid", validate_options,
                 lambda args: validate_files(args.files)),
    "export": ("print a file's sigmas as a plain list (custom sigmas in any UI)", export_options, run_export),
    "pull": ("download a learned-solver file from the Hugging Face Hub, validated", pull_options, run_pull),
    "push": ("upload a learned-solver file (and a model card) to the Hub", push_options, run_push),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m learned_solvers",
                                     description="Few-step diffusion solvers fitted to a model: a demo, and "
                                                 "the commands for learned-solver files. COMMAND --help "
                                                 "lists a command's options.")
    parser.add_argument("--threads", type=whole_number(1, 256),
                        help="CPU threads for torch (default: the cores other processes leave free)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (summary, options, _) in COMMANDS.items():
        options(commands.add_parser(name, help=summary, description=summary))
    return parser


def main(argv=None) -> int:
    from .schedules import LearnedSolverFileError
    from .schedules.hub import SharingError

    args = build_parser().parse_args(argv)
    if args.command in ("demo", "compare"):  # the commands that compute; the file commands take no time
        threads = pick_threads(args.threads)
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
            print(f"using {threads} CPU thread{'s' if threads > 1 else ''} (--threads to choose)", file=sys.stderr)
    try:
        return COMMANDS[args.command][2](args)
    except (CommandError, LearnedSolverFileError, SharingError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
