"""The best built-in pair as the floor of every fit, and the teacher that checks itself against what
the student can reach."""

import torch

from learned_solvers.distill import NoiseLevels, distill, refine_teacher, start_states
from learned_solvers.distill.pipeline import FirstResults, candidate_schedules, teacher_tolerance
from learned_solvers.distill.scoring import (builtin_pairs, error_summary, no_worse_tail, ratio_interval, score_pairs,
                                             tail_error, typical_error)
from learned_solvers.distill.settings import SolverSetup
from learned_solvers.learned_samplers import BASE_SOLVERS, GaussianMixtureDenoiser, sample_learned
from learned_solvers.schedules import beta, builtin_schedules, karras, load_learned_solver, save_learned_solver

SHAPE = (2, 8, 8)
SIGMA_MIN, SIGMA_MAX = 0.0291675, 14.6146412
MODEL = GaussianMixtureDenoiser.power_law(shape=SHAPE, components=4, seed=0)
LEVELS = NoiseLevels(SIGMA_MIN, SIGMA_MAX, convention="ve")
SMALL = dict(levels=LEVELS, samples=32, validation=32, iterations=20, batch_size=8,
             micro_batch=8)


def per_sample(out, target):
    return (out.double() - target.double()).flatten(1).pow(2).mean(1).sqrt()


def test_the_fit_starts_from_the_best_base_when_it_is_not_the_old_default():
    # on this mixture at 6 karras steps iPNDM is more than twice as close to the teacher as DPM++ 2M
    start = start_states(SHAPE, 48, SIGMA_MAX, "ve", seed=0)
    teacher = refine_teacher(MODEL, start, 32, levels=NoiseLevels(SIGMA_MIN, SIGMA_MAX))
    grid = karras(6, SIGMA_MIN, SIGMA_MAX, final_zero=True).float()
    scores = {b: float(per_sample(sample_learned(MODEL, start, grid, base=b, disable=True), teacher.final).mean())
              for b in BASE_SOLVERS}
    assert min(scores, key=scores.get) == "ipndm" and scores["ipndm"] < 0.6 * scores["dpmpp_2m"]
    solver = distill(MODEL, SHAPE, nfe=[6], init_sigmas="karras", **SMALL)
    fit = solver.fits[6]
    assert fit.floor["base"] == "ipndm" and fit.floor["schedule"] == "karras"
    assert fit.base == "ipndm" and solver.sampler_options(6)["base"] == "ipndm"  # the corrections sit on it
    assert fit.held_out["mean"] <= fit.floor["mean"]


def test_where_no_fit_can_improve_the_result_is_the_best_pair_itself(tmp_path):
    # a point mass: D(x, sigma) = c, and every solver's final denoising step lands exactly on c
    centre = torch.linspace(-1, 1, 128).reshape(SHAPE)

    def point_mass(x, sigma, **_):
        return centre.expand_as(x).to(x.dtype)

    solver = distill(point_mass, SHAPE, nfe=[4], **SMALL)
    fit = solver.fits[4]
    assert fit.method == "builtin" and fit.options() == {}
    assert "no learned solver beat" in solver.summary()
    floor_grid = builtin_schedules(SIGMA_MIN, SIGMA_MAX)[fit.floor["schedule"]](4)
    assert torch.allclose(fit.sigmas, floor_grid, rtol=1e-12, atol=0)
    x = start_states(SHAPE, 4, SIGMA_MAX, "ve", seed=7)
    assert torch.allclose(solver.sample(point_mass, x, 4),
                          sample_learned(point_mass, x, floor_grid.float(), base=fit.floor["base"], disable=True))
    path = save_learned_solver(solver, str(tmp_path / "pair.safetensors"))
    again = load_learned_solver(path)
    assert again.fits[4].method == "builtin" and again.fits[4].base == fit.base
    assert again.fits[4].floor["schedule"] == fit.floor["schedule"]


def test_a_learned_fit_never_ends_worse_than_its_floor_on_the_validation_seeds():
    solver = distill(MODEL, SHAPE, nfe=[3, 5], **SMALL)
    for nfe, fit in solver.fits.items():
        assert fit.held_out["mean"] <= fit.floor["mean"] + 1e-12
        assert fit.held_out["tail"] <= fit.floor["tail"] * (1 + 1e-9) + 1e-12
        assert fit.base == (fit.floor if fit.method == "builtin" else fit.start)["base"]


def _judged_teacher(model, steps, nfe=4, seeds=32):
    """(teacher, its first level without refinement, a float64 reference, the student's reach):
    the teacher refined at distill's tolerance for ``nfe`` ("auto"), and the reach, the smallest
    median error of a built-in pair at ``nfe`` on the floor's first probe seeds."""
    start = start_states((4, 32, 32), seeds, SIGMA_MAX, "ve", seed=1)
    pairs = builtin_pairs(candidate_schedules("auto", LEVELS), nfe, BASE_SOLVERS, LEVELS)
    setup = SolverSetup(base="euler", convention="ve", corrector=False, sigma_range=(SIGMA_MIN, SIGMA_MAX))
    first_round = []

    def tolerance(final):
        first_round.extend(score_pairs(model, FirstResults(start, final), torch.arange(3), pairs, setup, 8))
        return teacher_tolerance(first_round, final)

    teacher = refine_teacher(model, start, steps, levels=NoiseLevels(SIGMA_MIN, SIGMA_MAX),
                             tolerance=tolerance)
    plain = refine_teacher(model, start, steps, levels=NoiseLevels(SIGMA_MIN, SIGMA_MAX),
                           max_steps=steps)
    reference = refine_teacher(model.to(dtype=torch.float64), start.double(), 128,
                               levels=NoiseLevels(SIGMA_MIN, SIGMA_MAX), max_steps=128)
    reach = min(float(errors.median()) for *_, errors in first_round)
    return teacher, plain, reference.final, reach


def test_the_teacher_refines_no_seed_already_far_below_what_the_student_reaches():
    mixture = GaussianMixtureDenoiser.power_law()
    teacher, plain, reference, reach = _judged_teacher(mixture, 32)
    # every seed's first result is hundreds of times closer than a 4-step solver gets: none is refined
    assert per_sample(plain.final, reference).max() < 0.01 * reach
    assert teacher.report()["refined"] == 0 and bool(teacher.settled.all())
    assert teacher.tolerance >= 0.005  # the check's own noise is not chased


def test_the_teacher_refines_the_seeds_it_flips_under_guidance():
    # CFG 7 on the hard mixture with prompts: 16 steps put most seeds in another mode
    guided = GaussianMixtureDenoiser.close_modes(prompts=True).guided(0, 7.0)
    teacher, plain, reference, reach = _judged_teacher(guided, 16)
    first = per_sample(plain.final, reference)
    refined = teacher.sample_steps > teacher.sample_steps.min()
    assert int(refined.sum()) >= 16 and not bool(refined.all())
    assert (first[refined] > 0.1).all()  # each one refined was in another mode
    assert (first[~refined] < 0.1 * reach).all()  # each one left was already well within what a fit reaches
    assert per_sample(teacher.final, reference).max() < 0.01 and bool(teacher.settled.all())


def test_a_fit_that_diverges_on_a_screened_seed_is_not_taken(monkeypatch):
    # the screen runs every fitted solver on fresh seeds and checks only the results' size; where
    # it diverges on more of them than the best pair, the result is the pair itself
    from learned_solvers.distill import pipeline

    def diverging_fits(model, start, fit, setup, limit, batch_size):
        return torch.full((len(start),), fit.method != "builtin")  # every fitted solver, never the pair

    monkeypatch.setattr(pipeline, "diverged", diverging_fits)
    solver = distill(MODEL, SHAPE, nfe=[4], **SMALL)
    fit = solver.fits[4]
    assert fit.method == "builtin" and fit.start["diverged"] == "128 of 128 (the pair on 0)"
    assert "diverged on 128 of 128 (the pair on 0) of the fresh seeds" in solver.summary()
    # where the pair diverges as often, the fit is taken
    monkeypatch.setattr(pipeline, "diverged", lambda model, start, *args: torch.ones(len(start), dtype=torch.bool))
    assert distill(MODEL, SHAPE, nfe=[4], **SMALL).fits[4].method != "builtin"


def test_scores_and_their_interval():
    errors = torch.tensor([0.1] * 9 + [1.0], dtype=torch.float64)
    assert tail_error(errors) == 1.0
    summary = error_summary(errors)
    assert abs(summary["mean"] - 0.19) < 1e-12 and summary["median"] == 0.1
    assert no_worse_tail(errors * 0.5, errors) and not no_worse_tail(errors * 2, errors)
    assert not no_worse_tail(torch.full_like(errors, float("nan")), errors)
    low, high = ratio_interval(errors * 0.5, errors)
    assert low <= 0.5 <= high


def test_a_longer_ordinary_tail_is_no_flip_and_a_new_flip_is():
    gen = torch.Generator().manual_seed(0)
    floor = 0.01 + 0.002 * torch.rand(64, generator=gen, dtype=torch.float64)  # no flip
    better = 0.5 * floor
    better[:6] = 0.016  # its worst tenth above the floor's, but within 2x the floor's median
    assert better.mean() < floor.mean() and tail_error(better) > tail_error(floor)
    assert no_worse_tail(better, floor)
    flipped = better.clone()
    flipped[7] = 0.3  # one sample in another mode
    assert not no_worse_tail(flipped, floor)
    # where the floor flips, a fit may flip other samples, but not more in sum
    floor_flips = floor.clone()
    floor_flips[:4] = 0.4
    moved = 0.5 * floor
    moved[10:14] = 0.35
    assert no_worse_tail(moved, floor_flips) and not no_worse_tail(moved + (torch.arange(64) == 20) * 0.3, floor_flips)


def test_the_typical_error_prefers_closer_typical_seeds_to_one_flip_less():
    floor = torch.tensor([0.03] * 14 + [0.5, 0.5], dtype=torch.float64)
    fewer_flips = torch.tensor([0.03] * 15 + [0.5], dtype=torch.float64)  # the typical seeds as the floor's
    closer = torch.tensor([0.015] * 14 + [0.5, 0.5], dtype=torch.float64)  # half the typical error, the same flips
    assert fewer_flips.mean() < closer.mean()  # the mean picks one flip less...
    assert typical_error(closer, floor) < typical_error(fewer_flips, floor)  # ...this, half the typical error
    assert typical_error(fewer_flips, floor) < typical_error(floor, floor)  # a flip less still counts
    assert typical_error(torch.full_like(floor, float("nan")), floor) == float("inf")


def test_beta_schedule_crowds_both_ends():
    grid = beta(10, SIGMA_MIN, SIGMA_MAX)
    assert len(grid) == 11 and grid[0] == SIGMA_MAX and grid[-2] == SIGMA_MIN and grid[-1] == 0
    assert (grid[1:] < grid[:-1]).all()
    u = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    from learned_solvers.schedules.grids import _beta_quantiles

    assert torch.allclose(_beta_quantiles(u), u, atol=1e-6)  # symmetric: the median is 0.5


def test_the_teacher_refines_where_its_estimated_error_is_above_the_tolerance():
    # the finer of two levels is about 3x closer to the exact result than the two are to each
    # other (order 2 or more), so a sample is refined only past 3x the tolerance; Euler (order 1)
    # is taken at its word; a higher-order teacher is checked with DPM++ 2M, Euler with itself
    hard = GaussianMixtureDenoiser.close_modes()
    start = start_states(hard.shape, 24, SIGMA_MAX, "ve", seed=0)
    for base, factor, tolerance in (("dpmpp_3m", 3.0, 0.005), ("unipc_bh2", 3.0, 0.005), ("dpmpp_2m", 3.0, 0.01),
                                    ("euler", 1.0, 0.05)):
        teacher = refine_teacher(hard, start, 32, levels=NoiseLevels(SIGMA_MIN, SIGMA_MAX),
                                 batch_size=24, base=base, max_steps=32, tolerance=tolerance)
        assert teacher.check_base == ("euler" if base == "euler" else "dpmpp_2m")
        scale = float(teacher.final.double().pow(2).mean().sqrt())
        expected = teacher.residuals <= tolerance * factor * scale
        assert torch.equal(teacher.settled, expected) and not bool(expected.all()) and bool(expected.any())
