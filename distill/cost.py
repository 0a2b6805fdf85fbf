"""What a fit costs: its model calls by kind and phase, the wall time of each phase, and the
time it still needs.

A *sample-call* is one sample through the model once: a batch of 8 is 8 sample-calls, and
with CFG each is a cond/uncond pair. Three kinds are counted:

* ``inference``: calls without gradients (the teacher, scoring the built-in pairs, validation);
  they run ``inference_batch_size`` samples at a time, several times cheaper per sample on a GPU;
* ``gradient``: calls recorded for backward: the forward of the unrolled student and, with
  checkpointing, its recomputation during backward;
* ``backward``: backward passes through a call's output (about two forwards each).

The phases are ``teacher``, ``floor`` (scoring every base solver x schedule), ``fit`` (the
gradient steps and their validation runs) and ``selection`` (scoring the fitted candidates).
"""

from __future__ import annotations

import contextlib
import math
import time

import torch

from .prompts import plain_args

PHASES = ("teacher", "floor", "fit", "selection")
KINDS = ("inference", "gradient", "backward")
# before the first gradient step is timed: a counted gradient call costs this many inference
# calls (a forward, a backward of about two, and with checkpointing the recomputation, which is
# itself counted: (1 + 2) / 1 without, (1 + 1 + 2) / 2 with)
GRADIENT_CALL_COST = {False: 3.0, True: 2.0}


def _in_backward() -> bool:
    """True inside a backward pass (a checkpointed call being recomputed)."""
    task = getattr(torch._C, "_current_graph_task_id", None)
    return task is not None and task() >= 0


class CallCounter:
    """A denoiser ``model(x, sigma, **kwargs)`` that counts its sample-calls by kind and phase.

    ``with counter.phase("teacher"): ...`` attributes the calls inside to that phase and adds
    its wall time; ``report()`` gives both. Per-sample keywords (``prompts.PerSample``) reach the
    model as plain tensors. Attributes of the wrapped model (for example its
    ``sigma_convention``) read through.
    """

    def __init__(self, model):
        self.model = model
        self.calls = {phase: dict.fromkeys(KINDS, 0) for phase in PHASES}
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.current = None
        self._began = 0.0

    def __getattr__(self, name):
        if name == "model":  # not yet set (copying): no recursion
            raise AttributeError(name)
        return getattr(self.model, name)

    def _add(self, kind: str, samples: int):
        self.calls[self.current or "fit"][kind] += samples

    def __call__(self, x, sigma, **kwargs):
        samples = int(x.shape[0])
        recording = torch.is_grad_enabled()
        self._add("gradient" if recording else "inference", samples)
        out = self.model(x, sigma, **plain_args(kwargs, samples, x.device))
        if recording and out.requires_grad and not _in_backward():
            out.register_hook(lambda grad, phase=self.current: self._count_backward(phase, samples, grad))
        return out

    def _count_backward(self, phase, samples, grad):
        self.calls[phase or "fit"]["backward"] += samples
        return grad

    @contextlib.contextmanager
    def phase(self, name: str):
        """Within: calls and seconds count to phase ``name``; inside another phase, that one
        pauses (its calls and seconds stop) and resumes after."""
        if name not in PHASES:
            raise ValueError(f"unknown phase {name!r}; the phases are {', '.join(PHASES)}")
        outer, now = self.current, time.perf_counter()
        if outer is not None:
            self.seconds[outer] += now - self._began
        self.current, self._began = name, now
        try:
            yield self
        finally:
            now = time.perf_counter()
            self.seconds[name] += now - self._began
            self.current, self._began = outer, now

    @contextlib.contextmanager
    def using(self, model):
        """Within: the calls go to ``model`` instead (a teacher that is not the student), counted
        the same way; ``None`` changes nothing."""
        if model is None:
            yield self
            return
        own, self.model = self.model, model
        try:
            yield self
        finally:
            self.model = own

    def elapsed(self, name: str) -> float:
        """Seconds spent in phase ``name`` so far, the running one included."""
        running = time.perf_counter() - self._began if self.current == name else 0.0
        return self.seconds[name] + running

    def total(self, kind: str) -> int:
        return sum(calls[kind] for calls in self.calls.values())

    def report(self) -> dict:
        """{"calls": {kind: total}, "phases": {phase: {kind: calls, "seconds": s}}} (phases with work)."""
        phases = {phase: {**{k: v for k, v in self.calls[phase].items() if v}, "seconds": round(self.seconds[phase], 3)}
                  for phase in PHASES if any(self.calls[phase].values()) or self.seconds[phase] > 0}
        return {"calls": {kind: self.total(kind) for kind in KINDS}, "phases": phases}

    def since(self, mark: dict) -> dict:
        """The calls by kind since ``mark`` (an earlier ``report()["calls"]``)."""
        return {kind: self.total(kind) - mark.get(kind, 0) for kind in KINDS}


def planned_calls(settings, *, nfe: int, pairs: int, own_pairs: int = 0, probes=(3, 6), shortlist: int = 12,
                  finalists: int = 3, corrections: int = 0, screen: int = 0) -> dict:
    """The sample-calls one NFE's fit is planned to make after the teacher: {kind: calls}.
    settings: the fit's ``FitSettings`` (samples, validation, iterations, batch_size,
    validate_every, teacher_steps, method; use_checkpoint as decided, a bool).

    floor (``pipeline._floor``): the ``pairs`` built-in and ``own_pairs`` trajectory pairs on
    ``probes[0]`` training samples, the best ``shortlist`` (and 2 own) on ``probes[1]`` more,
    the best ``finalists`` (and 1 own) on the validation samples;
    fit: one run of the ``corrections`` samples the closed-form coefficients are fitted on
    (``fit.fit_corrections``), ``iterations`` x ``batch_size`` unrolled runs of ``nfe`` calls (twice with
    checkpointing, once backward), validation every ``validate_every`` iterations and at the
    start and end (the selection reuses the best snapshot's errors); the selection: the fitted
    solver on ``screen`` fresh seeds (``pipeline.SCREEN_SAMPLES``, a divergence check). D-ODE
    (method "dode") instead runs the teacher again on the training samples (about
    ``teacher_steps`` calls, keeping its states on the floor's grid) and the student once.
    """
    samples, validation = settings.samples, settings.validation
    first = min(probes[0], samples)
    second = min(probes[1], samples - first)

    def rounds(candidates, kept, final):
        return candidates * first + min(kept, candidates) * second + min(final, candidates) * validation

    floor = nfe * (rounds(pairs, shortlist, finalists) + (rounds(own_pairs, 2, 1) if own_pairs else 0))
    if settings.method == "dode":  # a teacher run of the training samples on the floor's grid, one solve
        return {"inference": floor + samples * (settings.teacher_steps + nfe) + (validation + screen) * nfe,
                "gradient": 0, "backward": 0}
    one_fit = fit_calls(settings, nfe=nfe, validation=validation, corrections=corrections)
    return {**one_fit, "inference": floor + one_fit["inference"] + screen * nfe}


def fit_calls(settings, *, nfe: int, validation: int, corrections: int = 0) -> dict:
    """The sample-calls of one gradient fit from one start ({kind: calls}) on ``validation``
    validation samples: the closed-form first coefficients, the unrolled runs and the
    validations of ``planned_calls``; a fit from a second start (``pipeline._floor``) makes as
    many again."""
    runs = settings.iterations * settings.batch_size * nfe
    validations = 1 + math.ceil(settings.iterations / settings.validate_every)
    inference = validations * validation * nfe + corrections * nfe
    return {"inference": inference, "gradient": runs * (2 if settings.use_checkpoint else 1), "backward": runs}


class TimeLeft:
    """An estimate of the seconds a fit still needs, from its plan and its own measured pace.

    plan(kind, calls) adds planned sample-calls; the counter says how many were made. The pace
    of an inference call is measured over the teacher and floor phases, that of a gradient call
    over the fit phase (less its validation runs); until a gradient step has been timed it is
    ``GRADIENT_CALL_COST`` inference calls.
    """

    def __init__(self, counter: CallCounter, checkpoint: bool):
        self.counter = counter
        self.planned = dict.fromkeys(KINDS, 0)
        self.checkpoint = checkpoint

    def plan(self, kind: str, calls: int):
        self.planned[kind] += int(calls)

    def pace(self) -> tuple:
        """(seconds per inference call, seconds per gradient call), or None where not measured yet."""
        c = self.counter
        inference_calls = c.calls["teacher"]["inference"] + c.calls["floor"]["inference"]
        inference = (c.elapsed("teacher") + c.elapsed("floor")) / inference_calls if inference_calls else None
        gradient_calls = c.calls["fit"]["gradient"]
        gradient = None
        if gradient_calls and inference is not None:
            own = c.elapsed("fit") - inference * c.calls["fit"]["inference"]
            if own > 0:
                gradient = own / gradient_calls
        if gradient is None and inference is not None:
            gradient = inference * GRADIENT_CALL_COST[self.checkpoint]
        return inference, gradient

    def seconds(self) -> float:
        """Seconds left (NaN until an inference call has been timed)."""
        inference, gradient = self.pace()
        if inference is None:
            return float("nan")
        left = {kind: max(0, self.planned[kind] - self.counter.total(kind)) for kind in KINDS}
        return left["inference"] * inference + left["gradient"] * gradient


def duration(seconds: float) -> str:
    """A rounded human duration: "about 40 s", "about 4 min", "about 1 h 10 min"."""
    if not math.isfinite(seconds):
        return "estimating time left"
    if seconds < 90:
        return f"about {max(5, 5 * round(seconds / 5)):.0f} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"about {minutes} min"
    return f"about {minutes // 60} h {minutes % 60:02d} min"


def progress_text(step: int, total: int, loss: float, held_out: float, seconds_left: float) -> str:
    """One line for a fit's ``progress`` report: "teacher run 3/40, about 4 min left" or
    "fitting 120/240, held-out RMSE 0.0312, about 2 min left" (no estimate at the end)."""
    if loss != loss and held_out != held_out:  # NaN, NaN: a teacher batch
        text = f"teacher run {step}/{total}"
    else:
        text = f"fitting {step}/{total}, held-out RMSE {held_out:.4f}"
    return text + (f", {duration(seconds_left)} left" if step < total else "")


__all__ = ["CallCounter", "KINDS", "PHASES", "TimeLeft", "duration", "fit_calls", "planned_calls", "progress_text"]
