"""Learned-solver files: round trip, atomic writes, and refusal of broken or hostile files."""

import json
import os
import pickle
import struct

import pytest
import torch

from learned_solvers.distill import distill
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
    return distill(MODEL, SHAPE, sigma_min=0.0291675, sigma_max=14.6146412, nfe=[3, 4], method="auto",
                   samples=16, validation=8, iterations=6, teacher_steps=16, convention="ve")


@pytest.fixture()
def blob(solver, tmp_path):
    path = save_learned_solver(solver, tmp_path / "fit", metadata={"author": "someone", "cfg": 7.5})
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
    }


def test_broken_and_hostile_files_raise_the_package_error(blob, tmp_path):
    for name, data in hostile_files(blob).items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(data)
        with pytest.raises(LearnedSolverFileError) as caught:
            load_learned_solver(path)
        assert path.name in str(caught.value), name


def test_messages_name_the_fix(blob):
    future = rewrite(blob, lambda h: h["__metadata__"].__setitem__("format_version", "99"))
    with pytest.raises(LearnedSolverFileError, match="upgrade the package"):
        solver_from_bytes(future)
    with pytest.raises(LearnedSolverFileError, match="pickle is refused"):
        solver_from_bytes(pickle.dumps([1.0]) + b"\0" * 64)


def test_missing_file_is_the_package_error(tmp_path):
    with pytest.raises(LearnedSolverFileError, match="cannot be read"):
        load_learned_solver(tmp_path / "absent.safetensors")
