"""What a fit is told: ``FitSettings`` (how ``distill`` fits, chosen by the user), on a base
``RunSettings`` it shares with ``sfd.SfdSettings`` (seeds, teacher, steps, batches, memory);
``CompareSettings`` (how ``compare.compare_solvers`` compares); ``NoiseLevels`` (what a run knows
of the model's noise levels); ``RunHooks`` (how a caller follows and stops a run); and
``SolverSetup`` (what every run of the student shares, fixed by the model and the base
solver)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from ..learned_samplers import BASE_SOLVERS, HISTORY, resolve_convention

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

    def check(self):
        """Raise ValueError naming the fix for a shared value no run can use; returns self (each
        kind checks its own fields after these)."""
        whole = {"samples": 1, "validation": 1, "iterations": 1, "batch_size": 1, "micro_batch": 1,
                 "validate_every": 1, "inference_batch_size": 1, "teacher_steps": 4}
        for name, low in whole.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be a whole number of at least {low}; got {value!r}")
        if self.teacher_base not in BASE_SOLVERS:
            raise ValueError(f"teacher_base must be one of {', '.join(BASE_SOLVERS)}; got {self.teacher_base!r}")
        return self


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
        super().check()
        if self.base != "auto" and self.base not in BASE_SOLVERS:
            raise ValueError(f"base must be 'auto' or one of {', '.join(BASE_SOLVERS)}; got {self.base!r}")
        if not (self.teacher_tolerance == "auto" or (
                isinstance(self.teacher_tolerance, (int, float)) and 0 < self.teacher_tolerance < 1)):
            raise ValueError(f"teacher_tolerance must be 'auto' or between 0 and 1; got {self.teacher_tolerance!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if not 1 <= self.history <= HISTORY:
            raise ValueError(f"history must be between 1 and {HISTORY}")
        return self


@dataclass(frozen=True)
class NoiseLevels:
    """What a run knows of the model's noise levels, in host units (sigma for eps / v models,
    the flow time t in [0, 1] for flow models).

    sigma_min, sigma_max: the model's range; grids start at sigma_max and keep their last
    positive sigma at or above sigma_min. convention: "auto" (read off the model, e.g. a
    ComfyUI flow model), "ve" or "flow". sigma_table: a discrete model's ascending sigma table
    [T] (for its time-uniform schedule), or None. schedules: the host's own schedules, name ->
    (nfe -> sigmas [nfe + 1]), scored beside the built-ins.
    """

    sigma_min: float
    sigma_max: float
    convention: str = "auto"
    sigma_table: Any = field(default=None, compare=False)
    schedules: dict | None = field(default=None, compare=False)

    @property
    def sigma_range(self) -> tuple:
        """(sigma_min, sigma_max) as floats: the range a grid coordinate refers to."""
        return float(self.sigma_min), float(self.sigma_max)

    def resolved(self, model) -> NoiseLevels:
        """These levels with the convention read off ``model`` where it is "auto"."""
        return dataclasses.replace(self, convention=resolve_convention(model, self.convention))

    def check(self) -> NoiseLevels:
        """Raise ValueError naming the fix for a range no grid fits in; returns self."""
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max; got {self.sigma_min} and {self.sigma_max}")
        return self


@dataclass(frozen=True)
class RunHooks:
    """How a caller follows and stops a long run. progress(...): called after each unit of work,
    with the arguments the running function documents; cancel() -> bool: checked before each
    unit, True (or an exception it raises) stops the run."""

    progress: Callable | None = None
    cancel: Callable | None = None

    def report(self, *args):
        if self.progress is not None:
            self.progress(*args)

    def cancelled(self) -> bool:
        return self.cancel is not None and bool(self.cancel())

    def with_progress(self, progress) -> RunHooks:
        """The same cancel with another progress (a step of a run counting its own units)."""
        return RunHooks(progress=progress, cancel=self.cancel)


@dataclass(frozen=True)
class CompareSettings:
    """How ``compare.compare_solvers`` compares: samples (seeded noises every sampler runs on),
    show (how many of them the comparison keeps results of), seed, teacher_steps and
    teacher_base (the reference, refined as ``teacher.refine_teacher`` refines), batch_size
    (samples per model run). ``replace(**changes)`` makes a variant, refusing an unknown name."""

    KIND: ClassVar[str] = "compare"

    samples: int = 16
    show: int = 4
    seed: int = 1
    teacher_steps: int = RunSettings.teacher_steps
    teacher_base: str = RunSettings.teacher_base
    batch_size: int = 8

    def replace(self, **changes):
        return replaced(self, self.KIND, changes)


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


__all__ = ["CompareSettings", "FitSettings", "LOSSES", "METHODS", "NoiseLevels", "RunHooks", "RunSettings",
           "SolverSetup", "replaced"]
