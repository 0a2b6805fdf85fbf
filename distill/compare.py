"""Compare samplers on one model: the teacher, a learned solver and every built-in pair, on the
same seeds, by per-sample error to the teacher. What the Compare Samplers node and the
``compare`` command show."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..learned_samplers import BASE_SOLVERS, sample_learned
from .pipeline import candidate_schedules, start_states
from .scoring import builtin_pairs, error_summary, mean_error
from .settings import CompareSettings, NoiseLevels, RunHooks, SolverSetup
from .teacher import RefinedTeacher, refine_teacher


@dataclass
class Entry:
    """One sampler in a comparison: label, its per-sample errors [S] to the teacher, its results
    on the shown seeds [show, ...], and how to run it (``sigmas`` [N+1], ``options`` for
    ``sample_learned``)."""

    label: str
    sigmas: torch.Tensor
    options: dict
    errors: torch.Tensor
    outputs: torch.Tensor
    learned: bool = False
    notes: list = field(default_factory=list)

    @property
    def score(self) -> float:
        return mean_error(self.errors)

    def summary(self) -> dict:
        return error_summary(self.errors)


@dataclass
class Comparison:
    """entries best first (by mean per-sample error); teacher: the reference; shown: the
    teacher's results on the shown seeds."""

    nfe: int
    teacher: RefinedTeacher
    entries: list
    shown: torch.Tensor

    @property
    def winner(self) -> Entry:
        return self.entries[0]

    def rows(self, built_ins: int = 3) -> list:
        """What a picture of the comparison shows, one row each, best first after the teacher:
        [(label, results on the shown seeds [show, ...])] for the teacher, the learned solver and
        the best ``built_ins`` built-in pairs; each label carries the sampler's mean error."""
        picked = [e for e in self.entries if e.learned] + [e for e in self.entries if not e.learned][:built_ins]
        rows = [(f"teacher\n{self.teacher.report()['steps']} steps", self.shown)]
        for entry in sorted(picked, key=lambda e: e.score):
            rows.append((f"{entry.label}\nRMSE {entry.summary()['mean']:.4f}", entry.outputs))
        return rows

    def learned(self) -> Entry | None:
        return next((entry for entry in self.entries if entry.learned), None)

    def table(self, limit: int | None = None) -> str:
        """The comparison as text: one line per sampler, best first."""
        report = self.teacher.report()
        lines = [f"NFE {self.nfe}, {len(self.teacher.final)} seeds, per-sample RMSE to the teacher "
                 f"({report['base']}, {report['steps']} steps, residual {report['residual']:.4f}):",
                 f"  {'sampler':<34} {'mean':>7} {'median':>7} {'p95':>7}"]
        shown = self.entries if limit is None else self.entries[:limit]
        for rank, entry in enumerate(shown):
            stats = entry.summary()
            mark = "  <- winner" if rank == 0 else ""
            lines.append(f"  {entry.label:<34} {stats['mean']:>7.4f} {stats['median']:>7.4f} {stats['p95']:>7.4f}{mark}")
        if limit is not None and len(self.entries) > limit:
            lines.append(f"  ... {len(self.entries) - limit} more")
        learned = self.learned()
        best_builtin = next((entry for entry in self.entries if not entry.learned), None)
        if learned is not None and best_builtin is not None:
            ratio = learned.summary()["mean"] / max(best_builtin.summary()["mean"], 1e-300)
            closer = float((learned.errors < best_builtin.errors).double().mean())
            lines.append(f"  learned / best built-in ({best_builtin.label}): {ratio:.2f} x the mean error, "
                         f"closer on {closer:.0%} of the seeds")
        for entry in self.entries:
            lines += [f"  note ({entry.label}): {note}" for note in entry.notes]
        return "\n".join(lines)


def compare_solvers(model, shape, *, levels: NoiseLevels, nfe: int, solver=None,
                    settings: CompareSettings | None = None, extra_args=None, device="cpu", start=None,
                    hooks: RunHooks | None = None, **changes) -> Comparison:
    """Run the teacher, ``solver`` (a ``LearnedSolver``, optional) and every base solver x
    built-in schedule (plus ``levels.schedules``, the host's) at ``nfe`` model calls on
    ``settings.samples`` seeded noises [samples, *shape]; keep the results of the first
    ``settings.show``. settings: ``CompareSettings``, its fields also as keywords.

    hooks: progress(done, total) after each sampler; cancel() as in ``distill``.
    """
    s = (settings or CompareSettings()).replace(**changes)
    levels, hooks = levels.check().resolved(model), hooks or RunHooks()
    convention, sigma_range = levels.convention, levels.sigma_range
    if start is None:
        start = start_states(shape, s.samples, levels.sigma_max, convention, s.seed, device)
    teacher = refine_teacher(model, start, s.teacher_steps, levels=levels, base=s.teacher_base, extra_args=extra_args,
                             batch_size=s.batch_size, hooks=RunHooks(cancel=hooks.cancel))
    setup = SolverSetup(base=BASE_SOLVERS[0], convention=convention, corrector=False, sigma_range=sigma_range,
                        extra_args=extra_args, device=device)
    runs = []
    for base, name, fit in builtin_pairs(candidate_schedules("auto", levels), nfe, BASE_SOLVERS, levels):
        runs.append((f"{base} + {name}", fit.sigmas, {**setup.solver_options(), **fit.solver_options()}, False, []))
    if solver is not None:
        sigmas, notes = solver.schedule(nfe, sigma_range=sigma_range, convention=convention)
        options, more = solver.options_for(sigmas)
        runs.insert(0, (f"learned ({solver.method})", sigmas, {**options, "convention": convention}, True,
                        notes + more))
    entries = []
    for done, (label, sigmas, options, learned, notes) in enumerate(runs):
        if hooks.cancelled():
            from .fit import FitCancelled

            raise FitCancelled("the comparison was cancelled")
        outputs, errors = _run(model, teacher, sigmas, options, extra_args, device, s.batch_size)
        entries.append(Entry(label, sigmas, options, errors, outputs[:s.show], learned, notes))
        hooks.report(done + 1, len(runs))
    entries.sort(key=lambda entry: entry.score)
    return Comparison(nfe=nfe, teacher=teacher, entries=entries, shown=teacher.final[:s.show])


def _run(model, teacher, sigmas, options, extra_args, device, batch_size):
    outs = []
    with torch.no_grad():
        for first in range(0, len(teacher.start), batch_size):
            start = teacher.start[first:first + batch_size].to(device)
            outs.append(sample_learned(model, start, sigmas.to(start.dtype), extra_args, None, True,
                                       **options).float().cpu())
    out = torch.cat(outs)
    errors = (out.double() - teacher.final.double()).flatten(1).pow(2).mean(1).sqrt()
    return out, errors


__all__ = ["Comparison", "Entry", "compare_solvers"]
