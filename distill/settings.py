"""What a fit is told: ``FitSettings`` (how ``distill`` fits, chosen by the user), on a base
``RunSettings`` it shares with ``sfd.SfdSettings`` (seeds, teacher, steps, batches, memory),
and ``SolverSetup`` (what every run of the student shares, fixed by the model and the base
solver)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..learned_samplers import BASE_SOLVERS, HISTORY

METHODS = ("auto", "dode", "ld3", "s4s", "s4s_alt")
LOSSES = ("capped", "l2", "l1", "mse")


def replaced(settings, kind: str, changes: dict):
    """A copy of the dataclass ``settings`` with ``changes``; an unknown name is refused with the
    valid ones (``kind`` names the settings in the message: "fit", "SFD")."""
    names = [f.name for f in dataclasses.fields(settings)]
    unknown = set(changes) - set(names)
    if unknown:
        raise TypeError(f"unknown {kind} setting(s) {', '.join(sorted(unknown))}; the settings are {', '.join(names)}")
    return dataclasses.replace(settings, **changes)


@dataclass(frozen=True)
class RunSettings:
    """What every fit of this package shares, each kind with its own defaults: samples and
    validation (training and validation start noises), seed (the noises and the fit's draws),
    iterations (gradient steps), batch_size (training samples per step, put through the model
    micro_batch at a time: the gradient accumulated, the memory of a micro_batch step),
    validate_every (iterations between validation runs), inference_batch_size (samples per
    model run without gradients: the bound on memory outside the gradient steps), teacher_base
    and teacher_steps (the teacher's solver and step count), use_checkpoint (recompute each
    model call in backward; "auto": decided by the fit) and dtype (autocast dtype for the model
    calls). ``replace(**changes)`` makes a variant, refusing an unknown name."""

    KIND: ClassVar[str] = "fit"  # how an error message names these settings

    samples: int = 64
    validation: int = 64
    seed: int = 0
    iterations: int = 40
    batch_size: int = 3
    micro_batch: int = 2
    validate_every: int = 10
    inference_batch_size: int = 16
    teacher_base: str = "unipc_bh2"
    teacher_steps: int = 32
    use_checkpoint: Any = "auto"
    dtype: Any = None

    def replace(self, **changes):
        """A copy with ``changes``; an unknown name is refused with the valid ones."""
        return replaced(self, self.KIND, changes)


@dataclass(frozen=True)
class FitSettings(RunSettings):
    """How ``distill`` fits; every field has a default, ``replace(**changes)`` makes a variant.

    method: one of METHODS. base: the base solver the corrections sit on ("auto": the best of
    BASE_SOLVERS on the training samples, per NFE); teacher_base, teacher_steps: the teacher's
    solver and step count (checked against half as many, refined where the error this gives,
    ``teacher.refine_teacher``, is above teacher_tolerance, relative; "auto": a share of the
    error the best built-in pair makes at the largest NFE, ``pipeline.teacher_tolerance``). init_sigmas: the
    starting grid ("auto": the best built-in schedule, per NFE; "karras", "exponential",
    "time-uniform", "ays", "beta", "uniform", a dict nfe -> sigmas or a callable). samples,
    validation: training and validation start noises. seed: seeds the noises and the fit.
    iterations: gradient steps per NFE. batch_size: training samples per gradient step, put
    through the model micro_batch at a time (the gradient accumulated: the memory of a
    micro_batch step). validate_every: iterations between validation runs (snapshots are
    chosen among those).
    inference_batch_size: samples per model run without gradients (teacher, validation), the
    bound on memory outside the gradient steps. lr: peak Adam rates per parameter group
    (``fit.DEFAULT_LR`` keys). loss: one of LOSSES. slack: LD3's soft-slack radius factor (0:
    off). decoupled: learn decoupled evaluation times. history: denoiser outputs the coefficient
    corrections weigh. rounds: S4S-Alt's alternations. use_checkpoint: recompute each model call
    in backward ("auto": when the model has parameters or runs on a GPU). dtype: autocast dtype
    for model calls. dode_samples: training samples a closed-form least squares (D-ODE's, and
    the first coefficient corrections, of at most 16) puts through the model at once (None: all).
    """

    method: str = "auto"
    base: str = "auto"
    teacher_tolerance: Any = "auto"
    init_sigmas: Any = "auto"
    lr: dict | None = field(default=None, hash=False)
    loss: str = "capped"
    slack: float = 0.001
    decoupled: bool = True
    history: int = 3
    rounds: int = 3
    dode_samples: int | None = None

    def check(self) -> FitSettings:
        """Raise ValueError naming the fix for a value no fit can use; returns self."""
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if (self.base != "auto" and self.base not in BASE_SOLVERS) or self.teacher_base not in BASE_SOLVERS:
            raise ValueError(f"base must be 'auto' or one of {', '.join(BASE_SOLVERS)}, and teacher_base one of "
                             f"{', '.join(BASE_SOLVERS)}")
        tolerance_ok = self.teacher_tolerance == "auto" or (
            isinstance(self.teacher_tolerance, (int, float)) and 0 < self.teacher_tolerance < 1)
        if self.teacher_steps < 4 or not tolerance_ok:
            raise ValueError("teacher_steps must be at least 4 and teacher_tolerance 'auto' or between 0 and 1")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 1:
            raise ValueError(f"iterations must be a whole number of at least 1; got {self.iterations!r}")
        if self.samples < 1 or self.validation < 1:
            raise ValueError("need at least one training and one validation sample")
        if not 1 <= self.history <= HISTORY:
            raise ValueError(f"history must be between 1 and {HISTORY}")
        if min(self.batch_size, self.micro_batch, self.inference_batch_size, self.validate_every) < 1:
            raise ValueError("batch_size, micro_batch, inference_batch_size and validate_every must be at least 1")
        return self


@dataclass(frozen=True)
class SolverSetup:
    """What every run of the student shares: base solver, convention ("ve" or "flow"),
    corrector on or off, the model's sigma_range (sigma_min, sigma_max; the range the grid
    coordinate refers to), the model's extra_args, and the device the model runs on."""

    base: str
    convention: str
    corrector: bool
    sigma_range: tuple
    extra_args: dict | None = field(default=None, hash=False)
    device: Any = None

    def solver_options(self) -> dict:
        """The ``sample_learned`` options this setup fixes."""
        return {"base": self.base, "convention": self.convention, "corrector": self.corrector}


__all__ = ["FitSettings", "LOSSES", "METHODS", "RunSettings", "SolverSetup", "replaced"]
