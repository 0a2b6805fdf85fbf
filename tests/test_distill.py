"""The distillation engine on the exact denoiser, at small sizes."""

import pytest
import torch

from learned_solvers.distill import (
    SolverSetup,
    FitCancelled,
    FitDiverged,
    NoiseLevels,
    RunHooks,
    FittedSteps,
    distill,
    fit_step_scales,
    grid_coordinate,
    record_teacher,
    rmse,
    start_states,
    teacher_grid,
)
from learned_solvers.learned_samplers import GaussianMixtureDenoiser, StepCorrections, sample_learned
from learned_solvers.schedules import karras

SHAPE = (2, 8, 8)
SIGMA_MIN, SIGMA_MAX = 0.0291675, 14.6146412
MODEL = GaussianMixtureDenoiser.power_law(shape=SHAPE, components=4, seed=0)
LEVELS = NoiseLevels(SIGMA_MIN, SIGMA_MAX, convention="ve")
SMALL = dict(levels=LEVELS, samples=48, validation=32, iterations=40,
             batch_size=16, micro_batch=16, teacher_steps=32)


def held_out_rmse(solver, nfe, base_grid=None, base=None):
    """RMSE to a fine reference on seeds no fit saw: (learned, its base solver)."""
    start = start_states(SHAPE, 64, SIGMA_MAX, "ve", seed=999)
    reference = sample_learned(MODEL, start, karras(96, SIGMA_MIN, SIGMA_MAX, final_zero=True), base="dpmpp_3m",
                               disable=True)
    learned = solver.sample(MODEL, start, nfe)
    base_grid = karras(nfe, SIGMA_MIN, SIGMA_MAX, final_zero=True) if base_grid is None else base_grid
    plain = sample_learned(MODEL, start, base_grid.float(), base=base or solver.base, disable=True)
    score = lambda out: (out - reference).pow(2).mean().sqrt().item()  # noqa: E731
    return score(learned), score(plain)


# D-ODE extrapolates D_i from D_{i-1}; it pays on bases that do not already (Euler = its
# paper's D-DDIM, iPNDM); on DPM++ 2M here it finds nothing and returns the base.
@pytest.mark.parametrize("method, base", [("dode", "euler"), ("dode", "ipndm"), ("ld3", "dpmpp_2m"),
                                          ("s4s", "dpmpp_2m"), ("s4s_alt", "dpmpp_2m"), ("auto", "dpmpp_2m")])
def test_each_method_lowers_held_out_error_against_its_base(method, base):
    solver = distill(MODEL, SHAPE, nfe=[4], method=method, base=base, **SMALL)
    fit = solver.fits[4]
    assert fit.held_out_rmse < fit.base_held_out_rmse  # on the validation seeds
    learned, plain = held_out_rmse(solver, 4)
    assert learned < plain  # and on seeds no part of the fit saw


def test_one_teacher_serves_several_nfes():
    solver = distill(MODEL, SHAPE, nfe=[3, 5], method="s4s", **SMALL)
    assert solver.nfes == [3, 5]
    for nfe in (3, 5):
        assert len(solver.sigmas(nfe)) == nfe + 1
        assert solver.fits[nfe].held_out_rmse <= solver.fits[nfe].base_held_out_rmse


def test_dode_matches_a_direct_least_squares_solve():
    grid = karras(5, SIGMA_MIN, SIGMA_MAX, final_zero=True)
    start = start_states(SHAPE, 24, SIGMA_MAX, "ve", seed=3)
    teacher = record_teacher(MODEL, start, teacher_grid([grid], 40, "ve"), grid[1:], base="dpmpp_3m")
    indices = torch.arange(24)
    scales = fit_step_scales(MODEL, teacher, grid, indices, base="dpmpp_2m", convention="ve", max_scale=10.0)
    assert scales.abs().sum() > 0
    for i in range(len(grid) - 1):
        captured = {}

        def capture(step, x_next, direction, i=i):
            if step == i:
                captured["x"], captured["g"] = x_next, direction
            return x_next

        fixed = scales.clone()
        fixed[i:] = 0  # steps before i as fitted, step i and later plain
        sample_learned(MODEL, start, grid.float(), base="dpmpp_2m", corrections=StepCorrections(step_scales=fixed),
                       step_hook=capture, disable=True)
        target = teacher.state_at(float(grid[i + 1])) if grid[i + 1] > 0 else teacher.final
        a = captured["g"].double().reshape(-1, 1)
        b = (target - captured["x"]).double().reshape(-1, 1)
        solution = torch.linalg.lstsq(a, b).solution.item()
        assert scales[i].item() == pytest.approx(solution, rel=1e-4, abs=1e-6)


def test_dode_runs_the_model_on_the_fitting_device():
    """The teacher keeps its states on the CPU; D-ODE's model calls must still run where the fit
    runs (on a GPU, a CPU call would pull every weight across the bus)."""
    grid = karras(3, SIGMA_MIN, SIGMA_MAX, final_zero=True)
    start = start_states(SHAPE, 4, SIGMA_MAX, "ve", seed=3)
    teacher = record_teacher(MODEL, start, teacher_grid([grid], 8, "ve"), grid[1:], base="dpmpp_3m")
    seen = []

    class Stop(Exception):
        pass

    def model(x, sigma, **kwargs):
        seen.append(x.device.type)
        raise Stop

    with pytest.raises(Stop):
        fit_step_scales(model, teacher, grid, torch.arange(4), base="dpmpp_2m", convention="ve", device="meta")
    assert seen == ["meta"]


def test_learned_grid_stays_strictly_decreasing_and_inside_the_range():
    solver = distill(MODEL, SHAPE, nfe=[4, 6], method="ld3", **{**SMALL, "iterations": 60})
    for nfe in solver.nfes:
        sigmas = solver.sigmas(nfe)
        positive = sigmas[:-1]
        assert sigmas[-1] == 0
        assert (positive[1:] < positive[:-1]).all()
        assert positive[0] == pytest.approx(SIGMA_MAX)
        assert SIGMA_MIN * (1 - 1e-12) <= positive[-1] < positive[0]  # the last may rise off sigma_min
        fit = solver.fits[nfe]
        coordinate = grid_coordinate(sigmas, solver.sigma_range, "ve")
        torch.testing.assert_close(fit.coordinate, coordinate)
        if fit.eval_offsets is not None:  # evaluation sigmas stay inside the model's range
            from learned_solvers.learned_samplers import half_log_snr, sigma_from_half_log_snr
            evaluated = sigma_from_half_log_snr(half_log_snr(positive, "ve") + fit.eval_offsets, "ve")
            assert (evaluated <= SIGMA_MAX * (1 + 1e-9)).all() and (evaluated >= SIGMA_MIN * (1 - 1e-9)).all()


def test_same_seed_same_result():
    first = distill(MODEL, SHAPE, nfe=[4], method="auto", **SMALL)
    second = distill(MODEL, SHAPE, nfe=[4], method="auto", **SMALL)
    a, b = first.fits[4], second.fits[4]
    torch.testing.assert_close(a.sigmas, b.sigmas, rtol=0, atol=0)
    for name, value in a.options().items():
        torch.testing.assert_close(value, b.options()[name], rtol=0, atol=0)
    assert a.losses == b.losses


def test_a_batch_put_through_in_micro_batches_fits_as_the_whole_batch():
    # the gradient accumulated over parts is the whole batch's: the same fit, less memory
    whole = distill(MODEL, SHAPE, nfe=[4], method="auto", **{**SMALL, "iterations": 12, "validate_every": 4})
    parts = distill(MODEL, SHAPE, nfe=[4], method="auto", **{**SMALL, "iterations": 12, "validate_every": 4,
                                                              "micro_batch": 3})
    a, b = whole.fits[4], parts.fits[4]
    assert a.method == b.method == "auto"
    torch.testing.assert_close(a.sigmas, b.sigmas, rtol=1e-4, atol=0)
    for name, value in a.options().items():
        torch.testing.assert_close(value, b.options()[name], rtol=1e-4, atol=1e-6)
    assert a.losses == pytest.approx(b.losses, rel=1e-4)


def test_cancel_stops_within_one_iteration():
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 5

    progress = []
    with pytest.raises(FitCancelled):
        distill(MODEL, SHAPE, nfe=[4], method="s4s",
                hooks=RunHooks(progress=lambda *args: progress.append(args), cancel=cancel), **SMALL)
    assert len(progress) <= 5  # teacher batch + four iterations at most, then it stopped


class FlakyModel:
    """The exact denoiser, except that chosen calls return NaN."""

    sigma_convention = "ve"

    def __init__(self, bad_calls):
        self.calls, self.bad_calls = 0, set(bad_calls)

    def __call__(self, x, sigma, **kwargs):
        self.calls += 1
        out = MODEL(x, sigma)
        return out * float("nan") if self.calls in self.bad_calls else out


def test_a_nan_step_is_rejected_and_the_learning_rate_backs_off():
    clean = FlakyModel(())
    distill(clean, SHAPE, nfe=[4], method="s4s", **{**SMALL, "iterations": 1})
    calls_before_training = clean.calls - 4 * 2  # the single iteration and its validation
    # poison two calls of the 3rd and 7th training iterations (4 model calls each, after the
    # teacher, the base score and the first validation)
    first_training_call = calls_before_training + 1
    flaky = FlakyModel({first_training_call + 2 * 4 + 1, first_training_call + 6 * 4 + 2})
    solver = distill(flaky, SHAPE, nfe=[4], method="s4s", **SMALL)
    fit = solver.fits[4]
    assert fit.rejected_steps >= 1
    for value in fit.options().values():
        assert torch.isfinite(value).all()
    assert fit.held_out_rmse < fit.base_held_out_rmse


def test_a_model_that_keeps_failing_stops_with_a_clear_error():
    class Broken(FlakyModel):
        def __call__(self, x, sigma, **kwargs):
            out = MODEL(x, sigma)
            return out * float("nan") if torch.is_grad_enabled() else out

    with pytest.raises(FitDiverged, match="non-finite"):
        distill(Broken(()), SHAPE, nfe=[4], method="s4s", **SMALL)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="method"):
        distill(MODEL, SHAPE, nfe=[4], method="magic", **SMALL)
    with pytest.raises(ValueError, match="NFE must be at least 2"):
        distill(MODEL, SHAPE, nfe=[1], **SMALL)
    with pytest.raises(ValueError, match="loss"):
        distill(MODEL, SHAPE, nfe=[4], loss="lpips", **SMALL)


def test_rmse_of_the_base_is_what_sampling_gives():
    grid = karras(4, SIGMA_MIN, SIGMA_MAX, final_zero=True)
    start = start_states(SHAPE, 8, SIGMA_MAX, "ve", seed=5)
    teacher = record_teacher(MODEL, start, teacher_grid([grid], 24, "ve"), [])
    fit = FittedSteps(sigmas=grid, coordinate=grid)
    direct = sample_learned(MODEL, start, grid.float(), base="euler", disable=True)
    expected = (direct.double() - teacher.final.double()).pow(2).mean().sqrt().item()
    setup = SolverSetup(base="euler", convention="ve", corrector=False, sigma_range=(SIGMA_MIN, SIGMA_MAX))
    assert rmse(MODEL, teacher, torch.arange(8), fit, setup) == pytest.approx(expected, rel=1e-6)


def test_teacher_grid_holds_every_student_point_and_reaches_sigma_min():
    from learned_solvers.schedules import align_your_steps

    students = [align_your_steps(4), karras(6, SIGMA_MIN, SIGMA_MAX, final_zero=True)]
    grid = teacher_grid(students, 40, "ve", sigma_min=SIGMA_MIN)
    assert grid[-1] == 0 and grid[-2] == pytest.approx(SIGMA_MIN)
    assert (grid[1:] < grid[:-1]).all()
    assert 38 <= len(grid) - 1 <= 46
    for student in students:
        for value in student[:-1]:
            assert ((grid - value).abs() <= 1e-6 * value).any()  # the teacher keeps a state there
