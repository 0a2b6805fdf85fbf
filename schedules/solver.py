"""The learned solver: fitted parameters per NFE, with provenance, ready to sample.

The product's own type: the fitter (``distill``) makes it, the file format (``files``) reads
and writes it, the hosts' adapters sample with it.
"""

from __future__ import annotations

import functools
import re
import warnings
from dataclasses import dataclass, field

import torch

from ..learned_samplers import (LEARNED_OPTIONS, MIN_LAMBDA_GAP, StepCorrections, append_zero, half_log_snr,
                                sample_learned)
from .grids import grid_coordinate, loglinear_interp, sigmas_from_coordinate


# a learned solver is a few-step sampler: past this many steps classical solvers have converged
MAX_NFE = 100

# what each convention's models are, for messages
MODEL_KINDS = {"ve": "an eps/v-prediction model (SD1.x, SDXL)", "flow": "a flow model (SD3, Flux, Wan)"}


def parse_nfes(text) -> list:
    """'4, 6' -> [4, 6]; each a step count from 2 to MAX_NFE (one teacher serves them all)."""
    if isinstance(text, int):
        text = str(text)
    parts = [p for p in re.split(r"[,\s]+", str(text).strip()) if p]
    try:
        values = sorted({int(p) for p in parts})
    except ValueError:
        raise ValueError(f"NFE must be whole numbers separated by commas, e.g. '4' or '4, 6'; got {text!r}") from None
    if not values or values[0] < 2 or values[-1] > MAX_NFE:
        raise ValueError(f"each NFE must be between 2 and {MAX_NFE}; got {text!r}")
    return values


class ModelFamilyError(ValueError):
    """The solver or the MODEL does not fit: a solver for another ODE (flow vs eps/v), or a
    MODEL that is not a diffusion model."""


@dataclass
class FittedSteps:
    """One fitted NFE. Tensors are float64 on the CPU, N = len(sigmas) - 1 model calls.

    sigmas [N+1]: host sigmas (a final 0 is a denoising step); coordinate [N+1]: the same grid
    as fractions of the model's sigma range (see ``grids.grid_coordinate``), for other models' ranges;
    eval_offsets [N], d_corrections [N, K], step_scales [N], corrector_corrections [N]: the
    solver options that differ from the base (None where not learned). base, corrector: this
    fit's own base solver and corrector when they differ from the solver's (None: the solver's),
    as when each NFE starts from its own best built-in pair. held_out: per-sample error summary
    on the validation seeds (``distill.scoring.error_summary``); floor: the best built-in pair
    it was measured against ({"base", "schedule", and its summary}); start: the pair the fit
    started from ({"base", "schedule"}: the floor, another pair or the teacher-trajectory grid;
    "also_fitted": "<base> + <schedule>" where a second fit from there was not kept). model_calls: what this
    NFE's fit cost, in sample-calls by kind ({"inference", "gradient", "backward"}, see
    ``distill.cost``; the teacher's are the solver's provenance).
    """

    sigmas: torch.Tensor
    coordinate: torch.Tensor
    eval_offsets: torch.Tensor | None = None
    d_corrections: torch.Tensor | None = None
    step_scales: torch.Tensor | None = None
    corrector_corrections: torch.Tensor | None = None
    method: str = "base"
    held_out_rmse: float = float("nan")
    base_held_out_rmse: float = float("nan")
    fit_seconds: float = 0.0
    losses: list = field(default_factory=list)
    validation: list = field(default_factory=list)
    rejected_steps: int = 0
    base: str | None = None
    corrector: bool | None = None
    held_out: dict = field(default_factory=dict)
    floor: dict = field(default_factory=dict)
    model_calls: dict = field(default_factory=dict)
    start: dict = field(default_factory=dict)

    @property
    def nfe(self) -> int:
        return len(self.sigmas) - 1

    def options(self) -> dict:
        """The corrections this fit learned, name -> tensor (what its file holds)."""
        return {name: getattr(self, name) for name in LEARNED_OPTIONS if getattr(self, name) is not None}

    def corrections(self) -> StepCorrections:
        """The corrections this fit learned, as ``sample_learned`` takes them."""
        return StepCorrections(**self.options())

    def solver_options(self) -> dict:
        """``sample_learned`` options: the corrections plus this fit's own base and corrector
        where it has them."""
        own = {name: getattr(self, name) for name in ("base", "corrector") if getattr(self, name) is not None}
        return {**own, "corrections": self.corrections()}


@dataclass
class LearnedSolver:
    """A solver of the ``learned_samplers`` family fitted to one model, for one or more NFEs.

    base, convention, corrector: the solver-family settings every fit shares. sigma_range:
    (sigma_min, sigma_max) of the model, the range ``coordinate`` refers to. provenance: how it
    was made (teacher settings, seeds, sample counts, package version).
    """

    base: str
    convention: str
    corrector: bool
    method: str
    sigma_range: tuple
    fits: dict
    provenance: dict = field(default_factory=dict)

    @property
    def nfes(self) -> list:
        return sorted(self.fits)

    def _fit(self, nfe):
        if nfe is None:
            if len(self.fits) != 1:
                raise ValueError(f"this solver holds NFEs {self.nfes}; say which one with nfe=")
            nfe = self.nfes[0]
        if nfe not in self.fits:
            raise ValueError(f"no fit for NFE {nfe}; this solver holds NFEs {self.nfes}")
        return self.fits[nfe]

    def sigmas(self, nfe=None) -> torch.Tensor:
        """The fitted grid [N+1] in host units."""
        return self._fit(nfe).sigmas.clone()

    def sampler_options(self, nfe=None) -> dict:
        """Keyword options for ``sample_learned`` (or a ComfyUI KSAMPLER's extra_options)."""
        fit = self._fit(nfe)
        return {"base": self.base, "convention": self.convention, "corrector": self.corrector, **fit.solver_options()}

    def sampler(self, nfe=None):
        """A k-diffusion sampler function with this fit's coefficients bound; pass it ``sigmas(nfe)``."""
        return functools.partial(sample_learned, **self.sampler_options(nfe))

    def schedule(self, steps: int, denoise: float = 1.0, sigma_range=None, convention=None) -> tuple:
        """Sigmas [steps+1] for ``steps`` model calls, and a list of warnings (strings).

        The one way sigmas are made from a learned solver: the ComfyUI node, the KSampler
        entries (both through ``comfyui.sigmas_for_model``) and the command line call it.
        ``convention`` ("ve" or "flow"), when given, is the model's: a solver fitted for the
        other kind is refused with ``ModelFamilyError`` (its grid and coefficients describe
        another ODE).

        denoise < 1 returns the last ``steps + 1`` sigmas of the ``int(steps / denoise)``-step
        grid, as ComfyUI's schedulers do. A step count that was not fitted is log-linearly
        interpolated from the nearest fitted grid. ``sigma_range`` = (sigma_min, sigma_max) of
        another model remaps the grid through its model-independent coordinate.
        """
        if convention is not None and convention != self.convention:
            raise ModelFamilyError(f"this learned solver was fitted for {MODEL_KINDS[self.convention]}, but the "
                                   f"model is {MODEL_KINDS.get(convention, convention)}; distill one for this model")
        if sigma_range is not None and not (0 < float(sigma_range[0]) < float(sigma_range[1])
                                            and (self.convention != "flow" or float(sigma_range[1]) <= 1)):
            raise ValueError(f"sigma range {tuple(sigma_range)} is not a {self.convention} model's: it needs "
                             f"0 < sigma_min < sigma_max" + (" <= 1 (flow time)" if self.convention == "flow" else ""))
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a whole number >= 1; got {steps!r}")
        if not 0 < denoise <= 1:
            raise ValueError(f"denoise must be in (0, 1]; got {denoise}")
        total = steps if denoise >= 1 else int(steps / denoise)
        notes = []
        if total in self.fits:
            sigmas = self.fits[total].sigmas.clone()
        else:
            nearest = min(self.nfes, key=lambda n: (abs(n - total), -n))
            source = self.fits[nearest].sigmas
            final_zero = bool(source[-1] == 0)
            positive = source[:-1] if final_zero else source
            points = total if final_zero else total + 1
            if len(positive) < 2 or points < 2:
                raise ValueError(f"cannot interpolate the NFE {nearest} grid to {total} steps; fit {total} steps")
            sigmas = loglinear_interp(positive, points - 1)
            if final_zero:
                sigmas = append_zero(sigmas)
            notes.append(f"NFE {total} was not fitted (fitted: {self.nfes}); its grid is log-linearly "
                         f"interpolated from NFE {nearest}, without the learned coefficients")
        if sigma_range is not None and not _same_range(sigma_range, self.sigma_range):
            coordinate = grid_coordinate(sigmas, self.sigma_range, self.convention)
            sigmas = sigmas_from_coordinate(coordinate, sigma_range, self.convention)
            sigmas[coordinate > 1 + 1e-9] = 0.0  # a final 0 stays 0
            positive = sigmas[sigmas > 0]
            gaps = half_log_snr(positive, self.convention).diff()
            if len(gaps) and gaps.min() < MIN_LAMBDA_GAP:
                raise ValueError(f"remapped to the sigma range {sigma_range[0]:.4g}..{sigma_range[1]:.4g}, this "
                                 f"grid puts steps on top of each other; distill a solver for this model")
            notes.append(f"this solver was fitted for sigmas {self.sigma_range[0]:.4g}..{self.sigma_range[1]:.4g}; "
                         f"the grid is remapped to this model's {sigma_range[0]:.4g}..{sigma_range[1]:.4g} "
                         f"through its grid coordinate, which is an approximation: distill for this model")
        return sigmas[-(steps + 1):], notes

    def options_for(self, sigmas) -> tuple:
        """``sample_learned`` options for a given grid, and a list of warnings.

        A grid with a fitted step count gets that fit's coefficients; a grid that is the tail
        of a longer fitted grid (denoise < 1) gets the matching tail of its coefficients; any
        other grid runs the plain base solver, with a warning.
        """
        sigmas = torch.as_tensor(sigmas, dtype=torch.float64).cpu()
        steps = len(sigmas) - 1
        if steps in self.fits:
            return self.sampler_options(steps), []
        for nfe in sorted(self.fits):
            tail = self.fits[nfe].sigmas[-(steps + 1):]
            if nfe > steps and torch.allclose(tail, sigmas, rtol=1e-4, atol=1e-7):
                options = self.sampler_options(nfe)
                return {**options, "corrections": options["corrections"].tail(steps)}, []
        shared = {"base": self.base, "convention": self.convention, "corrector": self.corrector}
        return shared, [f"no fit for {steps} steps on this grid (fitted: {self.nfes}); sampling with the "
                        f"plain {self.base} solver"]

    def k_sampler(self, warn=warnings.warn):
        """A k-diffusion sampler function that picks this solver's options from the sigmas it
        is given (see ``options_for``); ``warn`` receives each warning text."""

        def sample_learned_solver(model, x, sigmas, extra_args=None, callback=None, disable=None):
            options, notes = self.options_for(sigmas)
            for note in notes:
                warn(note)
            return sample_learned(model, x, sigmas, extra_args, callback, disable, **options)

        return sample_learned_solver

    def sample(self, model, x, nfe=None, extra_args=None, callback=None, disable=True):
        """Sample with the fitted grid and coefficients: x [B, ...] at sigmas[0] -> result."""
        return sample_learned(model, x, self.sigmas(nfe).to(x.device), extra_args, callback, disable,
                              **self.sampler_options(nfe))

    def _prompts_line(self, held: dict, floor: dict) -> str:
        """The validation error on the prompts fitted on and on the prompts held out of the fit."""
        trained, unseen = _prompt_counts(self.provenance)
        nan = float("nan")
        return (f"     on the {trained} it was fitted on: mean {held.get('training_prompts', nan):.4f} (pair "
                f"{floor.get('training_prompts', nan):.4f}); on the {unseen} it never saw: mean "
                f"{held.get('held_out_prompts', nan):.4f} (pair {floor.get('held_out_prompts', nan):.4f})")

    def summary(self) -> str:
        """Per NFE, on the validation seeds: what was returned, its per-sample error to the teacher
        (mean, median, p95) against the best built-in pair's, and the ratio of the means; then
        the teacher's own residual."""
        lines = [f"{'NFE':>4} {'returned':<30} {'mean':>7} {'median':>7} {'p95':>7}   "
                 f"{'best built-in pair':<26} {'mean':>7} {'p95':>7} {'ratio':>6}"]
        for nfe in self.nfes:
            fit = self.fits[nfe]
            held, floor = fit.held_out or {}, fit.floor or {}
            pair = f"{floor.get('base', fit.base or self.base)} + {floor.get('schedule', '?')}"
            returned = pair if fit.method == "builtin" else f"learned ({fit.method})"
            mean = held.get("mean", fit.held_out_rmse)
            floor_mean = floor.get("mean", fit.base_held_out_rmse)
            ratio = mean / floor_mean if floor_mean and floor_mean > 0 else float("nan")
            lines.append(f"{nfe:>4} {returned:<30} {mean:>7.4f} {held.get('median', float('nan')):>7.4f} "
                         f"{held.get('p95', float('nan')):>7.4f}   {pair:<26} {floor_mean:>7.4f} "
                         f"{floor.get('p95', float('nan')):>7.4f} {ratio:>6.2f}")
            if fit.method != "builtin" and "closer" in held:
                lines.append(f"     closer than the pair on {held['closer']:.0%} of the validation seeds; ratio "
                             f"90% interval {held.get('ratio_low', float('nan')):.2f}..{held.get('ratio_high', float('nan')):.2f}")
            if fit.method == "builtin":
                lines.append(f"     no learned solver beat {pair} here, so this NFE is that pair as it is")
            if "held_out_prompts" in held:
                lines.append(self._prompts_line(held, floor))
            start = fit.start or {}
            if start and (start.get("base"), start.get("schedule")) != (floor.get("base"), floor.get("schedule")):
                where = " (the grid read off the teacher's trajectories)" if start.get("schedule") == "trajectory" else ""
                lines.append(f"     started from {start.get('base')} + {start.get('schedule')}{where}")
            if start.get("also_fitted"):
                lines.append(f"     also fitted from {start['also_fitted']}; the fit from {start.get('base')} + "
                             f"{start.get('schedule')} kept typical seeds closer")
            if start.get("diverged"):
                lines.append(f"     the fit was not taken: it diverged on {start['diverged']} of the fresh "
                             f"seeds it was screened on")
            if fit.model_calls:
                lines.append(f"     fit: {calls_text(fit.model_calls)}, {fit.fit_seconds:.0f} s")
        teacher = self.provenance.get("teacher") if isinstance(self.provenance.get("teacher"), dict) else {}
        if teacher.get("residual") is not None:
            note = f"teacher: {teacher.get('base', '?')}, {teacher.get('steps', '?')} steps"
            if teacher.get("refined"):
                note += f" ({teacher['refined']} samples refined up to {teacher.get('max_steps')})"
            note += f", residual {float(teacher['residual']):.4f}"
            if teacher.get("estimated_error") is not None and teacher.get("tolerance") is not None:
                note += (f", estimated error at most {float(teacher['estimated_error']):.2%} of the results' RMS "
                         f"(tolerance {float(teacher['tolerance']):.2%}, set by what this NFE can reach)")
            if teacher.get("excluded"):
                note += f"; {teacher['excluded']} samples left out (the teacher did not settle on them)"
            lines.append(note)
        cost = self.provenance.get("cost") if isinstance(self.provenance.get("cost"), dict) else {}
        if isinstance(cost.get("calls"), dict):
            lines.append(f"in all: {calls_text(cost['calls'])}, {float(self.provenance.get('seconds', 0)):.0f} s")
        return "\n".join(lines)


def _prompt_counts(provenance: dict) -> tuple:
    """("2 prompts", "1 prompt"): how many prompts a fit trained on and held out."""
    prompts = provenance.get("prompts") if isinstance(provenance.get("prompts"), dict) else {}

    def text(count):
        return "prompts" if not isinstance(count, int) else f"{count} prompt{'' if count == 1 else 's'}"

    return text(prompts.get("training")), text(prompts.get("held_out"))


def calls_text(calls: dict) -> str:
    """"5,120 model calls without gradients, 1,600 with (800 backward)" from {kind: sample-calls}."""
    inference, gradient, backward = (int(calls.get(k, 0) or 0) for k in ("inference", "gradient", "backward"))
    text = f"{inference:,} model calls without gradients"
    if gradient:
        text += f", {gradient:,} with ({backward:,} backward)"
    return text


def _same_range(a, b, rtol=1e-4) -> bool:
    return all(abs(float(x) - float(y)) <= rtol * max(abs(float(y)), 1e-12) for x, y in zip(a, b))
