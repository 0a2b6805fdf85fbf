"""Learned-solver files: round trip, atomic writes, and refusal of broken or hostile files."""

import copy
import math
import json
import os
import pickle
import struct

import pytest
import torch

from learned_solvers.distill import NoiseLevels, distill
from learned_solvers.learned_samplers import GaussianMixtureDenoiser
from learned_solvers.schedules import (
    LearnedSolverFileError,
    load_learned_solver,
    read_metadata,
    save_learned_solver,
    solver_from_bytes,
)
from learned_solvers.schedules.files import FORMAT_VERSION

SHAPE = (2, 8, 8)
MODEL = GaussianMixtureDenoiser.power_law(shape=SHAPE, components=4, seed=0)


@pytest.fixture(scope="module")
def solver():
    return distill(MODEL, SHAPE, levels=NoiseLevels(0.0291675, 14.6146412, convention="ve"),
                   nfe=[3, 4], method="auto", samples=16, validation=8, iterations=6, teacher_steps=16)


@pytest.fixture()
def blob(solver, tmp_path):
    """The solver's file, every fit holding every learned tensor (the ones it did not learn as 0)."""
    full = copy.deepcopy(solver)
    for nfe, fit in full.fits.items():
        for name, shape in (("eval_offsets", (nfe,)), ("d_corrections", (nfe, 3)), ("step_scales", (nfe,))):
            if getattr(fit, name) is None:
                setattr(fit, name, torch.zeros(shape, dtype=torch.float64))
    path = save_learned_solver(full, tmp_path / "fit", metadata={"author": "someone", "cfg": 7.5})
    return open(path, "rb").read()


def rewrite(blob, edit_header=None, edit_data=None):
    """``blob`` with its JSON header and/or tensor bytes changed."""
    (length,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + length])
    data = bytearray(blob[8 + length:])
    if edit_header:
        edit_header(header)
    if edit_data:
        edit_data(header, data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + bytes(data)


def test_round_trip_is_bit_exact_and_keeps_metadata(solver, tmp_path):
    path = save_learned_solver(solver, tmp_path / "fit.safetensors", metadata={"author": "A. Artist",
                                                                               "license": "CC0-1.0"})
    loaded = load_learned_solver(path)
    assert loaded.nfes == solver.nfes and loaded.base == solver.base
    assert loaded.convention == solver.convention and loaded.corrector == solver.corrector
    assert loaded.sigma_range == solver.sigma_range
    for nfe in solver.nfes:
        assert torch.equal(loaded.sigmas(nfe), solver.sigmas(nfe))
        mine, theirs = solver.fits[nfe].options(), loaded.fits[nfe].options()
        assert mine.keys() == theirs.keys()
        for name in mine:
            assert torch.equal(mine[name], theirs[name])
        assert loaded.fits[nfe].held_out_rmse == pytest.approx(solver.fits[nfe].held_out_rmse)
    metadata = read_metadata(path)
    assert metadata["author"] == "A. Artist" and metadata["license"] == "CC0-1.0"
    assert json.loads(metadata["provenance"])["teacher"] == solver.provenance["teacher"]
    start = torch.randn((2,) + SHAPE) * 14.65
    torch.testing.assert_close(loaded.sample(MODEL, start, 4), solver.sample(MODEL, start, 4), rtol=0, atol=0)


def test_write_is_atomic(solver, tmp_path, monkeypatch):
    target = tmp_path / "fit.safetensors"
    save_learned_solver(solver, target)
    before = target.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        save_learned_solver(solver, target, metadata={"author": "new"})
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.safetensors"]  # no partial file left


def hostile_files(blob):
    def set_meta(key, value):
        return rewrite(blob, lambda h: h["__metadata__"].__setitem__(key, value))

    def poke(key, values):
        def edit(header, data):
            start, end = header[key]["data_offsets"]
            data[start:end] = torch.tensor(values, dtype=torch.float64).numpy().tobytes()
        return rewrite(blob, edit_data=edit)

    def fill(suffix, value):
        """Every tensor named nfe3.<suffix> set to ``value`` everywhere."""
        def edit(header, data):
            start, end = header[f"nfe3.{suffix}"]["data_offsets"]
            data[start:end] = torch.full(((end - start) // 8,), value, dtype=torch.float64).numpy().tobytes()
        return rewrite(blob, edit_data=edit)

    def reshape(key, shape):
        return rewrite(blob, lambda h: h[key].__setitem__("shape", shape))

    huge = struct.pack("<Q", 1 << 40) + blob[8:]
    return {
        "empty": b"",
        "truncated": blob[: len(blob) // 2],
        "huge header length": huge,
        "pickle renamed": pickle.dumps({"sigmas": [14.6, 1.0, 0.0]}),
        "not json": blob[:8] + b"\xff" * 16 + blob[24:],
        "future version": set_meta("format_version", str(FORMAT_VERSION + 1)),
        "not a solver": rewrite(blob, lambda h: h["__metadata__"].pop("format")),
        "no step counts": rewrite(blob, lambda h: h["__metadata__"].pop("nfes")),
        "unknown base": set_meta("base", "magic_solver"),
        "nan sigma": poke("nfe3.sigmas", [14.6, float("nan"), 0.5, 0.0]),
        "non-monotone": poke("nfe3.sigmas", [14.6, 0.5, 2.0, 0.0]),
        "out of range": poke("nfe3.sigmas", [40.0, 2.0, 0.5, 0.0]),
        "wrong shape": reshape("nfe3.sigmas", [2, 2]),
        "bad range": set_meta("sigma_min", "inf"),
        "float32": rewrite(blob, lambda h: h["nfe3.sigmas"].__setitem__("dtype", "F32")),
        "too big": blob + b"\0" * (1 << 20),
        "nested fits": set_meta("fits", "[" * 100_000 + "]" * 100_000),
        "nested provenance": set_meta("provenance", '{"a": ' * 20_000 + "{}" + "}" * 20_000),
        "corrections 1e300": fill("d_corrections", 1e300),
        "corrections 1e150": fill("d_corrections", 1e150),
        "corrections 1e6": fill("d_corrections", -1e6),
        "step scales 1e6": fill("step_scales", 1e6),
        "offsets 1e150": fill("eval_offsets", 1e150),
        "offsets past the range": fill("eval_offsets", -50.0),
        "coordinate edited": fill("coordinate", 0.5),
        "sigma range 1e300": rewrite(blob, lambda h: h["__metadata__"].__setitem__("sigma_max", "1e300")),
    }


def test_broken_and_hostile_files_raise_the_package_error(blob, tmp_path):
    for name, data in hostile_files(blob).items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(data)
        with pytest.raises(LearnedSolverFileError) as caught:
            load_learned_solver(path)
        assert path.name in str(caught.value), name


def with_coefficients(solver, correction, offset_share):
    """``solver`` with every correction at +-``correction`` (alternating by step) and each
    evaluation offset ``offset_share`` of the way to the neighbouring grid point."""
    from learned_solvers.learned_samplers import half_log_snr

    changed = copy.deepcopy(solver)
    for nfe, fit in changed.fits.items():
        signs = torch.tensor([(-1.0) ** i for i in range(nfe)], dtype=torch.float64)
        fit.d_corrections = correction * signs[:, None].expand(nfe, 3).clone()
        fit.step_scales = -correction * signs
        lam = half_log_snr(fit.sigmas[:-1], "ve")
        gaps = torch.cat([lam[1:] - lam[:-1], (lam[-1:] - lam[-2:-1])])
        fit.eval_offsets = torch.cat([gaps[:-1], -gaps[-1:]]) * offset_share  # toward sigma_min, back from the last
    return changed


def test_a_file_inside_the_bounds_loads_only_if_it_samples_sensibly(solver, tmp_path):
    """Corrections of a fit's size load and sample finite on a sane model; corrections at the
    bound that compound into nonsense are refused by the reader's probe run."""
    from learned_solvers.learned_samplers import CORRECTION_LIMIT

    fit_sized = load_learned_solver(save_learned_solver(with_coefficients(solver, 0.5, 0.5), tmp_path / "fit_sized"))
    start = torch.randn((4,) + SHAPE, generator=torch.Generator().manual_seed(0)) * 14.6146
    for nfe in fit_sized.nfes:
        assert torch.isfinite(fit_sized.sample(MODEL, start, nfe)).all()
    with pytest.raises(LearnedSolverFileError, match="does not sample sensibly"):
        save_learned_solver(with_coefficients(solver, CORRECTION_LIMIT, 0.999), tmp_path / "extreme")


def test_messages_name_the_fix(blob):
    future = rewrite(blob, lambda h: h["__metadata__"].__setitem__("format_version", "99"))
    with pytest.raises(LearnedSolverFileError, match="upgrade the package"):
        solver_from_bytes(future)
    with pytest.raises(LearnedSolverFileError, match="pickle is refused"):
        solver_from_bytes(pickle.dumps([1.0]) + b"\0" * 64)


def test_missing_file_is_the_package_error(tmp_path):
    with pytest.raises(LearnedSolverFileError, match="cannot be read"):
        load_learned_solver(tmp_path / "absent.safetensors")


def raw_file(sigmas, sigma_range, convention="ve", base="dpmpp_2m", **options):
    """The bytes of a one-fit file, written without the package's own check on save."""
    from safetensors.torch import save

    from learned_solvers.schedules import FittedSteps, LearnedSolver, grid_coordinate
    from learned_solvers.schedules.files import solver_metadata, solver_tensors

    sigmas = torch.tensor(sigmas, dtype=torch.float64)
    fit = FittedSteps(sigmas=sigmas, coordinate=grid_coordinate(sigmas, sigma_range, convention), **options)
    solver = LearnedSolver(base=base, convention=convention, corrector=False, method="auto",
                           sigma_range=sigma_range, fits={len(sigmas) - 1: fit})
    return save(solver_tensors(solver), metadata=solver_metadata(solver))


def hundred_step_grid():
    grid = torch.logspace(math.log10(80), -3, 100, dtype=torch.float64)
    grid[0], grid[-1] = 80.0, 1e-3
    return torch.cat([grid, grid.new_zeros(1)]).tolist()


@pytest.mark.parametrize("name, data, message", [
    ("neighbouring floats", lambda: raw_file([14.6146412, math.nextafter(14.6146412, 0), 1.0, 0.0291675, 0.0],
                                             (0.0291675, 14.6146412)), "same noise level"),
    ("sigma_min 1e-15", lambda: raw_file([14.6, 1.0, 1e-13, 1e-14, 1e-15, 0.0], (1e-15, 14.6)), "impossible"),
    ("corrections compounding over 100 steps",
     lambda: raw_file(hundred_step_grid(), (1e-3, 80.0), d_corrections=torch.full((100, 4), 4.0)),
     "does not sample sensibly"),
    ("flow sigma above 1", lambda: raw_file([1.0 + 5e-10, 0.7, 0.3, 0.001, 0.0], (0.001, 1.0), "flow"),
     "leave the declared range"),
    ("one step", lambda: raw_file([14.6, 0.0], (0.03, 14.6)), "between 2 and"),
])
def test_files_that_would_not_sample_are_refused(name, data, message):
    with pytest.raises(LearnedSolverFileError, match=message):
        solver_from_bytes(data(), f"{name}.safetensors")


def test_a_remap_that_puts_steps_on_top_of_each_other_is_refused(solver):
    """A grid whose steps are far apart in its own range can land on top of each other in
    another (here: a tiny sigma_min squeezed into SD1.5's range)."""
    tiny = solver_from_bytes(raw_file([14.6, 1.0, 2e-6, 1.5e-6, 1e-6, 0.0], (1e-6, 14.6)))
    with pytest.raises(ValueError, match="on top of each other"):
        tiny.schedule(5, sigma_range=(0.03, 14.6))
    with pytest.raises(ValueError, match="not a ve model's"):
        tiny.schedule(5, sigma_range=(14.6, 0.03))
