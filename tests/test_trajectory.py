"""The grid read off the teacher's trajectories: the cheapest path through the teacher's points,
costs measured on the training samples only, and a start the fit may take but never its floor."""

import itertools
import math

import torch

from learned_solvers.distill import NoiseLevels, distill, refine_teacher, start_states
from learned_solvers.distill.trajectory import StepCosts, cheapest_path
from learned_solvers.learned_samplers import GaussianMixtureDenoiser, StepCorrections

SHAPE = (2, 8, 8)
SIGMA_MIN, SIGMA_MAX = 0.0291675, 14.6146412
MODEL = GaussianMixtureDenoiser.power_law(shape=SHAPE, components=4, seed=0)


def test_the_cheapest_path_is_the_best_of_every_path():
    gen = torch.Generator().manual_seed(3)
    costs = torch.rand(9, 9, generator=gen, dtype=torch.float64)
    costs[2, 5] = math.inf  # a step that is not allowed
    for steps in (1, 3, 5, 8):
        path = cheapest_path(costs, steps)
        assert path[0] == 0 and path[-1] == 8 and len(path) == steps + 1
        assert all(a < b for a, b in zip(path, path[1:]))
        total = lambda p: sum(float(costs[a, b]) for a, b in zip(p, p[1:]))  # noqa: E731
        brute = min(total((0, *inner, 8)) for inner in itertools.combinations(range(1, 8), steps - 1))
        assert total(path) == brute


def test_the_costs_are_one_ddim_step_between_teacher_states_of_training_samples_only():
    start = start_states(SHAPE, 12, SIGMA_MAX, "ve", seed=0)
    rows = torch.arange(12) < 8
    costs = StepCosts(rows)
    teacher = refine_teacher(MODEL, start, 8, levels=NoiseLevels(SIGMA_MIN, SIGMA_MAX),
                             batch_size=5, trace=costs, tolerance=0.5)
    assert teacher.report()["refined"] == 0 and int(teacher.sample_steps[0]) == 8  # its result is the traced level's
    matrix = costs.costs()
    points = len(costs.sigmas)
    assert matrix.shape == (points, points) and costs.sigmas[0] == SIGMA_MAX and costs.sigmas[-1] == 0
    assert torch.isinf(matrix[1, 0]) and torch.isfinite(matrix[0, 1:]).all()
    # a step to 0 lands on the denoised value: its cost from the first point is the distance of
    # the first denoised value from the teacher's result, over the 8 training samples
    first = MODEL(start[:8], torch.full((8,), SIGMA_MAX))
    expected = (first.double() - teacher.final[:8].double()).flatten(1).pow(2).mean(1).sqrt().mean()
    assert math.isclose(float(matrix[0, -1]), float(expected), rel_tol=1e-4)
    # the validation samples changed nothing
    other = start.clone()
    other[8:] = start_states(SHAPE, 4, SIGMA_MAX, "ve", seed=5)
    again = StepCosts(rows)
    refine_teacher(MODEL, other, 8, levels=NoiseLevels(SIGMA_MIN, SIGMA_MAX), batch_size=5,
                   trace=again, tolerance=0.5)
    assert torch.allclose(again.costs(), matrix, equal_nan=True)
    grid = costs.grid(4)
    assert len(grid) == 5 and grid[0] == SIGMA_MAX and grid[-1] == 0 and bool((grid[1:] < grid[:-1]).all())
    assert len(costs.grid(points)) == 0  # more steps than the teacher has points: no candidate


def test_the_trajectory_grid_is_a_start_and_never_the_floor():
    solver = distill(MODEL, SHAPE, nfe=[3, 5],
                     levels=NoiseLevels(SIGMA_MIN, SIGMA_MAX, convention="ve"), samples=32,
                     validation=32, iterations=20, batch_size=8, micro_batch=8)
    for fit in solver.fits.values():
        assert fit.floor["schedule"] != "trajectory"
        assert fit.start["schedule"] in {fit.floor["schedule"], "trajectory"}
        assert fit.held_out["mean"] <= fit.floor["mean"] + 1e-12
    # with a given initial grid nothing else is tried
    fixed = distill(MODEL, SHAPE, nfe=[3],
                    levels=NoiseLevels(SIGMA_MIN, SIGMA_MAX, convention="ve"), samples=32,
                    validation=32, iterations=4, batch_size=8, micro_batch=8, init_sigmas="karras")
    assert fixed.fits[3].start["schedule"] == "karras"


def test_kept_trajectories_give_the_teachers_states_at_any_sigma():
    start = start_states(SHAPE, 10, SIGMA_MAX, "ve", seed=1)
    rows = torch.arange(10) < 6
    kept = StepCosts(rows, keep=4)
    teacher = refine_teacher(MODEL, start, 32, levels=NoiseLevels(SIGMA_MIN, SIGMA_MAX),
                             batch_size=3, trace=kept, tolerance=0.5)
    assert kept.kept_rows.tolist() == [0, 1, 2, 3]
    assert torch.equal(kept.states_at(SIGMA_MAX, [0, 2]), start[[0, 2]])  # exact at a point
    assert torch.allclose(kept.states_at(0.0, [1, 3]), teacher.final[[1, 3]])
    # between points: close to a 256-step run's state there, far closer than the distance the
    # state moves from the neighbouring point
    from learned_solvers.distill import record_teacher
    from learned_solvers.distill.teacher import teacher_grid

    sigmas = torch.tensor(kept.sigmas, dtype=torch.float64)
    between = float((sigmas[6] * sigmas[7]).sqrt())
    fine = record_teacher(MODEL, start[:4], teacher_grid([torch.tensor([SIGMA_MAX, between, 0.0])], 256, "ve",
                                                          SIGMA_MIN), [between])
    exact = fine.state_at(between).double()
    error = (kept.states_at(between, [0, 1, 2, 3]).double() - exact).flatten(1).norm(dim=1)
    moved = (kept.states_at(float(sigmas[6]), [0, 1, 2, 3]).double() - exact).flatten(1).norm(dim=1)
    assert bool((error < 0.05 * moved).all())


def test_the_closed_form_corrections_bring_the_student_closer_to_the_teacher():
    from learned_solvers.distill.fit import fit_corrections
    from learned_solvers.learned_samplers import sample_learned
    from learned_solvers.schedules import karras

    start = start_states(SHAPE, 48, SIGMA_MAX, "ve", seed=2)
    rows = torch.arange(48) < 16
    kept = StepCosts(rows, keep=16)
    teacher = refine_teacher(MODEL, start, 32, levels=NoiseLevels(SIGMA_MIN, SIGMA_MAX),
                             trace=kept, tolerance=0.5)
    grid = karras(4, SIGMA_MIN, SIGMA_MAX, final_zero=True)
    train = list(range(16))
    targets = [kept.states_at(float(s), train) for s in grid[1:]]
    calls = []

    def counted(x, sigma, **kwargs):
        calls.append(len(x))
        return MODEL(x, sigma, **kwargs)

    corrections = fit_corrections(counted, start[:16], targets, grid, base="euler", convention="ve", history=3)
    assert sum(calls) == 16 * 4 and corrections.shape == (4, 3) and bool(corrections.abs().gt(0).any())

    def errors(options, which):
        out = sample_learned(MODEL, start[which], grid.float(), base="euler", disable=True,
                             corrections=StepCorrections(**options))
        return (out.double() - teacher.final[which].double()).flatten(1).pow(2).mean(1).sqrt().mean()

    held = list(range(16, 48))
    assert errors({"d_corrections": corrections}, train) < 0.8 * errors({}, train)
    assert errors({"d_corrections": corrections}, held) < 0.8 * errors({}, held)  # not fitted to the 16 alone
