"""Command line: python -m learned_solvers COMMAND (COMMAND --help for its options).

  demo      distill a few-step solver for the shipped test UNet, print it against every
            classical solver x schedule on held-out seeds, and write a PNG of the grids and samples
  compare   every base solver on classical grids on the exact Gaussian-mixture denoiser, as RMSE
            to the ODE's solution
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

from .distill.settings import METHODS
from .learned_samplers import BASE_SOLVERS, GaussianMixtureDenoiser, sample_learned
from .schedules import SD15_SIGMA_MAX, SD15_SIGMA_MIN, exponential, karras, sd15_schedules

GRIDS = {
    "karras": lambda n: karras(n, SD15_SIGMA_MIN, SD15_SIGMA_MAX, final_zero=True),
    "exponential": lambda n: exponential(n, SD15_SIGMA_MIN, SD15_SIGMA_MAX, final_zero=True),
}
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
    """Progress lines for the fit: the teacher run's batches, then the fit's steps with loss,
    held-out RMSE and an ETA from the fit's own pace (the teacher's says nothing of it). On a
    terminal one line is redrawn; written to a file, a line per tenth of the work."""

    def __init__(self, out):
        self.out, self.began, self.shown = out, time.perf_counter(), -1
        self.redraw = hasattr(out, "isatty") and out.isatty()
        self.fit_began = None  # (time, step) of the fit's first report

    def __call__(self, step, total, loss, held_out):
        now = time.perf_counter()
        if loss != loss and held_out != held_out:  # NaN, NaN: a teacher batch, which has no loss
            text = f"  teacher run: batch {step} done"
        else:
            if self.fit_began is None:
                self.fit_began = (now, step - 1)
            pace = (now - self.fit_began[0]) / (step - self.fit_began[1])
            text = f"  fitting {step}/{total}  held-out RMSE {held_out:.4f}" + (
                f"  loss {loss:.4f}" if loss == loss else "")
            if step < total:
                text += f"  about {pace * (total - step):.0f} s left"
        text += f"  ({now - self.began:.0f} s)"
        tenth = 10 * step // max(total, 1)
        if self.redraw:
            print(f"\r{text:<100}", end="" if step < total else "\n", file=self.out, flush=True)
        elif tenth != self.shown or step == total:
            print(text, file=self.out, flush=True)
        self.shown = tenth


# ---------------------------------------------------------------------------------------------
# demo and compare

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


def to_pil(image: torch.Tensor, scale: int = 1):
    """A [3, H, W] tensor in [-1, 1] as a PIL image, enlarged ``scale`` times."""
    from .schedules.plot import pil

    Image, _ = pil()
    pixels = ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    picture = Image.fromarray(pixels, "RGB")
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    return picture


def sample_sheet(columns: dict, scale: int = 3, pad: int = 4):
    """columns: label -> [N, 3, H, W] tensors in [-1, 1]; one column per label, N rows."""
    from .schedules.plot import pil

    Image, ImageDraw = pil()
    labels = list(columns)
    rows = min(len(v) for v in columns.values())
    tile_h, tile_w = (columns[labels[0]].shape[-2] * scale, columns[labels[0]].shape[-1] * scale)
    sheet = Image.new("RGB", (len(labels) * (tile_w + pad) + pad, rows * (tile_h + pad) + pad + 20), "white")
    draw = ImageDraw.Draw(sheet)
    for c, label in enumerate(labels):
        x = pad + c * (tile_w + pad)
        draw.text((x, 4), label[: max(4, tile_w // 6)], fill=(0, 0, 0))
        for r in range(rows):
            sheet.paste(to_pil(columns[label][r], scale), (x, 20 + pad + r * (tile_h + pad)))
    return sheet


def demo(nfe: int, method: str, iterations: int, seed: int, out_path: str, use_mixture: bool, out=sys.stdout,
         save: str | None = None):
    """Distill, compare on held-out seeds, write the PNG (and, with ``save``, the learned-solver
    file); returns (learned RMSE, best classical RMSE)."""
    from .distill import distill, start_states
    from .schedules import reference_schedules
    from .schedules.plot import plot_grids, stack_vertically

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
                     iterations=iterations, teacher_steps=32, convention="ve", progress=Progress(out))
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
        plot_grids({"learned": solver.sigmas(nfe), **reference_schedules(nfe, SD15_SIGMA_MIN, SD15_SIGMA_MAX)},
                   title=f"{name}: sigma per step, NFE {nfe}"),
        sample_sheet({"teacher": teacher[:6], f"{best_base}+{best_grid}": run(held[:6], grids[best_grid](nfe), best_base),
                      "2m+karras": run(held[:6], grids["karras"](nfe), "dpmpp_2m"), "learned": learned[:6]}, scale=3),
    ])
    picture.save(out_path)
    if save:
        from .schedules import save_learned_solver

        description = (f"Fitted by `python -m learned_solvers demo --nfe {nfe} --iterations {iterations} --seed {seed}"
                       f"{' --mixture' if use_mixture else ''}` on the {name}; held-out RMSE {learned_rmse:.4f} against "
                       f"{ranked[0][1]:.4f} for the best built-in pair ({ranked[0][0]}).")
        written = save_learned_solver(solver, save, {"model_family": "TinyUNet" if not use_mixture else "mixture",
                                                     "prediction": "EPS", "description": description,
                                                     "license": "MIT", "author": "learned-solvers"})
        print(f"wrote {written}", file=out)
    print(f"wrote {out_path}  ({time.perf_counter() - began:.0f} s in all)", file=out)
    return learned_rmse, ranked[0][1]


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
    parser.add_argument("--iterations", type=whole_number(0, 5000), default=100,
                        help="gradient steps of the fit (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the noises and the fit (default 0)")
    parser.add_argument("--out", type=writable_file, default="learned_solver_demo.png",
                        help="the PNG to write (default learned_solver_demo.png)")
    parser.add_argument("--mixture", action="store_true", help="use the exact Gaussian mixture instead of the UNet")
    parser.add_argument("--save", type=writable_file, help="also write the learned solver to this .safetensors file")


def run_demo(args) -> int:
    demo(args.nfe, args.method, args.iterations, args.seed, args.out, args.mixture, save=args.save)
    return 0


def compare_options(parser):
    parser.add_argument("--nfe", type=whole_number(1, 1000), nargs="+", default=[4, 5, 6, 8, 10],
                        help="step counts to compare (default 4 5 6 8 10)")
    parser.add_argument("--samples", type=whole_number(1), default=16, help="noise samples (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the mixture and the noises (default 0)")
    parser.add_argument("--reference-steps", type=whole_number(2), default=500,
                        help="steps of the dpmpp_3m reference solution (default 500)")


def run_compare(args) -> int:
    compare(args.nfe, args.samples, args.seed, args.reference_steps)
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
    "compare": ("base solvers x grids on the exact mixture denoiser", compare_options, run_compare),
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
