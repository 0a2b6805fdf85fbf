"""Several prompts in one fit: training seeds only on the training prompts, validation seeds on
every prompt, each sample run with its own prompt, and the errors reported per half."""

import math

import pytest
import torch

from learned_solvers.distill import NoiseLevels, distill
from learned_solvers.distill.prompts import (PerSample, assign_prompts, plain_args, route_prompts, rows_of,
                                             split_prompts)
from learned_solvers.learned_samplers import GaussianMixtureDenoiser

SHAPE = (2, 8, 8)
MIXTURE = GaussianMixtureDenoiser.close_modes(shape=SHAPE, prompts=True)
LEVELS = NoiseLevels(0.0291675, 14.6146412, convention="ve")
SMALL = dict(levels=LEVELS, samples=16, validation=16, iterations=4, batch_size=4,
             micro_batch=2, validate_every=2, teacher_steps=16, inference_batch_size=8)


class PromptRecorder:
    """The guided mixture, remembering which prompts it ran with and without gradients."""

    sigma_convention = "ve"

    def __init__(self, cfg=3.0):
        self.model = MIXTURE.guided(0, cfg)
        self.seen = {"inference": set(), "gradient": set()}

    def __call__(self, x, sigma, prompt=None, **kwargs):
        assert prompt is not None and torch.is_tensor(prompt) and prompt.shape == (x.shape[0],)
        self.seen["gradient" if torch.is_grad_enabled() else "inference"].update(prompt.tolist())
        return self.model(x, sigma, prompt=prompt)


def test_half_the_prompts_are_held_out_and_the_seeds_go_round_them():
    assert split_prompts(1).training == (0,) and split_prompts(1).held_out == ()
    split = split_prompts(5)
    assert split.training == (0, 2, 4) and split.held_out == (1, 3)
    assignment = assign_prompts(split, samples=7, validation=10)
    assert assignment[:7].tolist() == [0, 2, 4, 0, 2, 4, 0]
    assert assignment[7:].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="at least one prompt"):
        split_prompts(0)


def test_per_sample_keywords_follow_their_rows_and_must_match_the_batch():
    args = {"prompt": PerSample(torch.tensor([5, 6, 7, 8])), "scale": 2.0}
    picked = rows_of(args, torch.tensor([3, 1]))
    assert picked["prompt"].values.tolist() == [8, 6] and picked["scale"] == 2.0
    assert rows_of(rows_of(args, slice(1, 4)), slice(0, 1))["prompt"].values.tolist() == [6]
    assert plain_args(picked, 2)["prompt"].tolist() == [8, 6]
    with pytest.raises(RuntimeError, match="without rows_of"):
        plain_args(args, 3)
    assert rows_of(None, slice(0, 2)) is None


def test_the_router_runs_each_sample_with_its_prompts_denoiser_and_passes_gradients():
    denoisers = [MIXTURE.guided(p, 5.0) for p in range(3)]
    routed = route_prompts(denoisers)
    x = (4.0 * torch.randn(6, *SHAPE, generator=torch.Generator().manual_seed(0))).requires_grad_()
    sigma = torch.full((6,), 4.0)
    prompt = torch.tensor([2, 0, 1, 2, 0, 1])
    out = routed(x, sigma, prompt=prompt)
    assert torch.allclose(out, MIXTURE.guided(0, 5.0)(x, sigma, prompt=prompt), atol=1e-5)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="not one of the 3 prompts"):
        routed(x.detach(), sigma, prompt=torch.tensor([3, 0, 0, 0, 0, 0]))


def test_a_fit_on_several_prompts_trains_on_half_and_reports_both_halves():
    model = PromptRecorder()
    solver = distill(model, SHAPE, nfe=4, prompts=4, **SMALL)
    # the gradient steps saw only the training prompts; validation and the screen every prompt
    assert model.seen["gradient"] == {0, 2}
    assert model.seen["inference"] == {0, 1, 2, 3}
    assert solver.provenance["prompts"] == {"count": 4, "training": 2, "held_out": 2}
    fit = solver.fits[4]
    for summary in (fit.held_out, fit.floor):
        assert summary["training_prompts"] > 0 and summary["held_out_prompts"] > 0
    assert "on the 2 prompts it never saw" in solver.summary()


def test_a_list_of_extra_args_is_the_same_fit_as_a_model_that_takes_the_prompt():
    model = MIXTURE.guided(0, 3.0)
    by_index = distill(model, SHAPE, nfe=4, prompts=2, **SMALL)
    by_args = distill(model, SHAPE, nfe=4, prompts=[{"prompt": 0}, {"prompt": 1}], **SMALL)
    assert by_args.fits[4].held_out["held_out_prompts"] == pytest.approx(by_index.fits[4].held_out["held_out_prompts"],
                                                                         rel=1e-4)
    with pytest.raises(ValueError, match="positive count or a list"):
        distill(model, SHAPE, nfe=4, prompts=0, **SMALL)


def test_each_prompts_own_arguments_win_over_the_shared_ones_and_the_teacher_is_routed_too():
    seen = {"student": [], "teacher": []}

    def recording(role):
        def model(x, sigma, tag=None, **_):
            seen[role].append(tag)
            return MIXTURE.guided(0, 3.0)(x, sigma)
        return model

    distill(recording("student"), SHAPE, nfe=4, prompts=[{"tag": "a"}, {"tag": "b"}], extra_args={"tag": "shared"},
            teacher_model=recording("teacher"), **{**SMALL, "iterations": 1})
    assert set(seen["student"]) == {"a", "b"} and set(seen["teacher"]) == {"a", "b"}


def test_a_half_without_validation_seeds_is_reported_as_nan_not_infinite():
    from learned_solvers.distill.pipeline import _by_prompt_half

    halves = _by_prompt_half(torch.tensor([0.5, 0.25]), torch.tensor([0, 0]), split_prompts(2))
    assert halves["training_prompts"] == pytest.approx(0.375)
    assert math.isnan(halves["held_out_prompts"])
