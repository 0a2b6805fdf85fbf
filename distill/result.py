"""The learned solver: fitted parameters per NFE, with provenance, ready to sample."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch

from ..learned_samplers import sample_learned

TENSOR_OPTIONS = ("eval_offsets", "d_corrections", "step_scales", "corrector_corrections")


@dataclass
class FittedSteps:
    """One fitted NFE. Tensors are float64 on the CPU, N = len(sigmas) - 1 model calls.

    sigmas [N+1]: host sigmas (a final 0 is a denoising step); coordinate [N+1]: the same grid
    as fractions of the model's sigma range (see ``distill.grid``), for other models' ranges;
    eval_offsets [N], d_corrections [N, K], step_scales [N], corrector_corrections [N]: the
    solver options that differ from the base (None where not learned).
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

    @property
    def nfe(self) -> int:
        return len(self.sigmas) - 1

    def options(self) -> dict:
        """The tensor options of ``sample_learned`` this fit sets."""
        return {name: getattr(self, name) for name in TENSOR_OPTIONS if getattr(self, name) is not None}


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
        return {"base": self.base, "convention": self.convention, "corrector": self.corrector, **fit.options()}

    def sampler(self, nfe=None):
        """A k-diffusion sampler function with this fit's coefficients bound; pass it ``sigmas(nfe)``."""
        return functools.partial(sample_learned, **self.sampler_options(nfe))

    def sample(self, model, x, nfe=None, extra_args=None, callback=None, disable=True):
        """Sample with the fitted grid and coefficients: x [B, ...] at sigmas[0] -> result."""
        return sample_learned(model, x, self.sigmas(nfe).to(x.device), extra_args, callback, disable,
                              **self.sampler_options(nfe))

    def summary(self) -> str:
        """One line per NFE: held-out RMSE to the teacher against the base solver's."""
        lines = [f"{'NFE':>4} {'method':<8} {'base RMSE':>10} {'learned':>10} {'ratio':>7} {'fit s':>7}"]
        for nfe in self.nfes:
            fit = self.fits[nfe]
            ratio = fit.held_out_rmse / fit.base_held_out_rmse if fit.base_held_out_rmse > 0 else float("nan")
            lines.append(f"{nfe:>4} {fit.method:<8} {fit.base_held_out_rmse:>10.4f} {fit.held_out_rmse:>10.4f} "
                         f"{ratio:>7.2f} {fit.fit_seconds:>7.1f}")
        return "\n".join(lines)
