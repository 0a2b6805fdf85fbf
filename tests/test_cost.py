"""What a fit costs: the model calls it reports are the calls the model saw, its plan is the
formula in docs/how-it-works.md, and its estimate of the time left follows its own measured pace."""

import math

import pytest
import torch

from learned_solvers.distill import NoiseLevels, RunHooks, distill
from learned_solvers.distill import cost
from learned_solvers.learned_samplers import GaussianMixtureDenoiser
from learned_solvers.schedules import load_learned_solver, save_learned_solver

SHAPE = (2, 8, 8)
SIGMA_MIN, SIGMA_MAX = 0.0291675, 14.6146412
MIXTURE = GaussianMixtureDenoiser.power_law(shape=SHAPE, components=4, seed=0)
LEVELS = NoiseLevels(SIGMA_MIN, SIGMA_MAX, convention="ve")
SMALL = dict(levels=LEVELS, samples=24, validation=16, iterations=6, batch_size=4,
             micro_batch=2, validate_every=3, teacher_steps=16, inference_batch_size=8)


class CountingModel:
    """An exact denoiser (``model``, the mixture by default), counting every sample it is called
    on, with and without gradients, and every backward pass through its output."""

    sigma_convention = "ve"

    def __init__(self, model=MIXTURE):
        self.model = model
        self.seen = {"inference": 0, "gradient": 0, "backward": 0}

    def __call__(self, x, sigma, **kwargs):
        samples = x.shape[0]
        self.seen["gradient" if torch.is_grad_enabled() else "inference"] += samples
        out = self.model(x, sigma)
        if out.requires_grad:
            out.register_hook(lambda grad: self.seen.__setitem__("backward", self.seen["backward"] + samples))
        return out


@pytest.mark.parametrize("checkpoint", [False, True])
def test_the_calls_reported_are_the_calls_the_model_saw(checkpoint, tmp_path):
    model = CountingModel()
    solver = distill(model, SHAPE, nfe=[3, 4], use_checkpoint=checkpoint, **SMALL)
    reported = solver.provenance["cost"]["calls"]
    assert reported["inference"] == model.seen["inference"] > 0
    assert reported["gradient"] == model.seen["gradient"] > 0
    # recomputation in backward is a call with gradients but gets no backward of its own
    assert reported["backward"] == model.seen["backward"] == reported["gradient"] // (2 if checkpoint else 1)
    phases = solver.provenance["cost"]["phases"]
    assert phases["teacher"]["inference"] == solver.provenance["teacher"]["calls"]
    per_fit = [solver.fits[n].model_calls for n in (3, 4)]
    for kind in cost.KINDS:
        assert phases["teacher"].get(kind, 0) + sum(calls[kind] for calls in per_fit) == reported[kind]
    # the file keeps them, and the summary says them
    path = tmp_path / "counted.safetensors"
    save_learned_solver(solver, path)
    loaded = load_learned_solver(path)
    assert loaded.fits[4].model_calls == solver.fits[4].model_calls
    assert f"{reported['inference']:,} model calls without gradients" in solver.summary()


def test_the_plan_is_the_calls_made_when_the_teacher_needs_no_refinement():
    model = CountingModel()
    solver = distill(model, SHAPE, nfe=[4], teacher_tolerance=0.5, **SMALL)  # a loose check refines nothing
    assert solver.provenance["teacher"]["refined"] == 0
    assert solver.provenance["cost"]["planned"] == solver.provenance["cost"]["calls"]


def test_a_refined_teacher_adds_its_calls_to_the_plan():
    model = CountingModel()
    solver = distill(model, SHAPE, nfe=[4], teacher_tolerance=1e-3, method="dode", **SMALL)
    teacher = solver.provenance["teacher"]
    assert teacher["refined"] > 0
    planned, made = solver.provenance["cost"]["planned"], solver.provenance["cost"]["calls"]
    assert planned["inference"] == pytest.approx(made["inference"], rel=0.02)


def test_the_time_left_comes_from_the_measured_pace(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(cost.time, "perf_counter", lambda: clock[0])
    counter = cost.CallCounter(lambda x, sigma: x)
    left = cost.TimeLeft(counter, checkpoint=True)
    left.plan("inference", 200)
    left.plan("gradient", 50)
    assert math.isnan(left.seconds())  # nothing timed: no guess
    x = torch.zeros(10, 2)
    with counter.phase("teacher"), torch.no_grad():
        for _ in range(10):
            counter(x, torch.ones(10))  # 100 sample-calls in 10 s
            clock[0] += 1.0
        # 100 inference calls left at 0.1 s, 50 gradient calls at the prior 2 x 0.1 s
        assert left.seconds() == pytest.approx(100 * 0.1 + 50 * 0.2)
    with counter.phase("fit"):
        counter(x.requires_grad_(), torch.ones(10))  # 10 gradient calls in 5 s: 0.5 s each
        clock[0] += 5.0
        assert left.seconds() == pytest.approx(100 * 0.1 + 40 * 0.5)


def test_under_guidance_the_calls_reported_are_the_calls_the_guided_model_saw():
    # CFG 7 on a mixture with prompts, as ComfyUI computes it: one cond/uncond pair is one call
    guided = GaussianMixtureDenoiser.close_modes(shape=SHAPE, prompts=True).guided(1, 7.0)
    model = CountingModel(guided)
    solver = distill(model, SHAPE, nfe=[4], **{**SMALL, "teacher_steps": 32})
    reported, teacher = solver.provenance["cost"]["calls"], solver.provenance["teacher"]
    assert {kind: reported[kind] for kind in model.seen} == model.seen and model.seen["inference"] > 0
    assert solver.provenance["cost"]["phases"]["teacher"]["inference"] == teacher["calls"]
    # the teacher's first two levels on every seed, and each refined seed's finer levels on top
    assert teacher["calls"] >= (24 + 16) * (16 + 32)
    assert (teacher["calls"] > (24 + 16) * (16 + 32)) == (teacher["refined"] > 0)


def test_progress_reports_an_estimate_once_calls_are_timed():
    reports = []
    distill(CountingModel(), SHAPE, nfe=[4], hooks=RunHooks(progress=lambda *args: reports.append(args)), **SMALL)
    seconds = [report[4] for report in reports]
    assert all(value >= 0 for value in seconds if not math.isnan(value))
    assert not any(math.isnan(value) for value in seconds[1:])
    text = cost.progress_text(*reports[-2])
    assert text.startswith("fitting") and text.endswith(" left")


def test_a_second_start_is_fitted_too_and_counted_in_the_plan():
    # on this small hard mixture the best pair by mean and the best by typical error differ at
    # NFE 3 and 4: both are fitted, and the plan grows by the second fit when it is known
    hard = GaussianMixtureDenoiser.close_modes(shape=SHAPE, seed=0)
    reports = []
    solver = distill(hard, SHAPE, nfe=[3, 4], teacher_tolerance=0.5,
                     hooks=RunHooks(progress=lambda *args: reports.append(args)), **SMALL)
    twice = [n for n, fit in solver.fits.items() if fit.start.get("also_fitted")]
    assert twice
    # the progress counts the second fit's iterations too: it never runs back, and ends at its total
    fit_steps = [(step, total) for step, total, loss, *_ in reports if not math.isnan(loss)]
    assert [step for step, _ in fit_steps] == sorted(step for step, _ in fit_steps)
    assert fit_steps[-1][0] == fit_steps[-1][1] and len(fit_steps) == SMALL["iterations"] * (2 + len(twice))
    for n in twice:
        assert solver.fits[n].model_calls["gradient"] == 2 * SMALL["iterations"] * SMALL["batch_size"] * n
        assert f"also fitted from {solver.fits[n].start['also_fitted']}" in solver.summary()
    assert solver.provenance["cost"]["planned"] == solver.provenance["cost"]["calls"]
