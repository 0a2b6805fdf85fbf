"""Property-based: mutated and hostile learned-solver files either load as a valid solver that
samples to finite values, or raise the package's own error, quickly; nothing else escapes and
nothing hangs."""

import json
import math
import pickle
import struct
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from learned_solvers.distill import NoiseLevels, distill
from learned_solvers.learned_samplers import GaussianMixtureDenoiser
from learned_solvers.schedules import LearnedSolverFileError, solver_from_bytes
from learned_solvers.schedules.files import FORMAT_VERSION, solver_metadata, solver_tensors

SHAPE = (2, 8, 8)
MODEL = GaussianMixtureDenoiser.power_law(shape=SHAPE, components=4, seed=0)


def _valid_blob():
    from safetensors.torch import save

    solver = distill(MODEL, SHAPE, levels=NoiseLevels(0.0291675, 14.6146412, convention="ve"),
                     nfe=[3, 5], method="auto", samples=8, validation=4, iterations=3, teacher_steps=12)
    return save(solver_tensors(solver), metadata=solver_metadata(solver, {"author": "fuzz", "cfg": 7.0}))


VALID = _valid_blob()
LENGTH = struct.unpack("<Q", VALID[:8])[0]
HEADER = json.loads(VALID[8:8 + LENGTH])
TENSOR_KEYS = sorted(k for k in HEADER if k != "__metadata__")
METADATA_KEYS = sorted(HEADER["__metadata__"])


def assemble(header, data):
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + bytes(data)


def header_and_data():
    return json.loads(json.dumps(HEADER)), bytearray(VALID[8 + LENGTH:])


# every strategy returns (bytes, must_fail): must_fail marks files no valid solver can be
@st.composite
def truncated(draw):
    cut = draw(st.integers(0, len(VALID) - 1))
    return VALID[:cut], True


@st.composite
def bit_flipped(draw):
    blob = bytearray(VALID)
    for position in draw(st.lists(st.integers(0, 8 * len(VALID) - 1), min_size=1, max_size=8)):
        blob[position // 8] ^= 1 << (position % 8)
    return bytes(blob), False  # a flip in a mantissa can leave a valid file


@st.composite
def huge_header(draw):
    length = draw(st.integers(len(VALID), 1 << 63))
    return struct.pack("<Q", length) + VALID[8:], True


@st.composite
def random_bytes(draw):
    return draw(st.binary(min_size=0, max_size=4096)), False


@st.composite
def pickle_renamed(draw):
    payload = draw(st.recursive(st.floats(allow_nan=True) | st.text(max_size=8) | st.integers(),
                                lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                            max_size=4),
                                max_leaves=12))
    return pickle.dumps(payload, protocol=draw(st.integers(0, pickle.HIGHEST_PROTOCOL))), True


def with_values(key, change):
    """The valid file with tensor ``key``'s values replaced by ``change(values)`` [float64]."""
    header, data = header_and_data()
    start, end = header[key]["data_offsets"]
    values = change(torch.frombuffer(bytes(data[start:end]), dtype=torch.float64).clone())
    data[start:end] = values.numpy().tobytes()
    return assemble(header, data)


def replaced(values, index, value):
    values[index] = value
    return values


@st.composite
def poisoned_values(draw):
    key = draw(st.sampled_from(TENSOR_KEYS))
    index = draw(st.integers(0, math.prod(HEADER[key]["shape"]) - 1))
    value = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    return with_values(key, lambda v: replaced(v, index, value)), True


@st.composite
def absurd_values(draw):
    """Finite values of any magnitude in one tensor (a scaled copy, or one value replaced)."""
    key = draw(st.sampled_from(TENSOR_KEYS))
    magnitude = 10.0 ** draw(st.integers(-3, 300)) * draw(st.sampled_from([1, -1]))
    if draw(st.booleans()):
        return with_values(key, lambda v: v * magnitude), False
    index = draw(st.integers(0, math.prod(HEADER[key]["shape"]) - 1))
    return with_values(key, lambda v: replaced(v, index, magnitude)), False


@st.composite
def non_monotone(draw):
    key = draw(st.sampled_from([k for k in TENSOR_KEYS if k.endswith(".sigmas")]))
    i = draw(st.integers(0, HEADER[key]["shape"][0] - 2))

    def swap(values):
        values[i], values[i + 1] = values[i + 1].clone(), values[i].clone()
        return values
    return with_values(key, swap), True


@st.composite
def wrong_shape(draw):
    header, data = header_and_data()
    key = draw(st.sampled_from(TENSOR_KEYS))
    shape = draw(st.lists(st.integers(0, 2000), min_size=0, max_size=3).filter(lambda s: s != header[key]["shape"]))
    header[key]["shape"] = shape
    return assemble(header, data), True


@st.composite
def bad_offsets(draw):
    header, data = header_and_data()
    key = draw(st.sampled_from(TENSOR_KEYS))
    offsets = draw(st.lists(st.integers(-(1 << 40), 1 << 40), min_size=0, max_size=3)
                   .filter(lambda o: o != header[key]["data_offsets"]))
    header[key]["data_offsets"] = offsets
    return assemble(header, data), False  # pointing at another tensor's bytes of the right length can load


@st.composite
def future_version(draw):
    header, data = header_and_data()
    header["__metadata__"]["format_version"] = str(draw(st.integers(FORMAT_VERSION + 1, 10 ** 30)))
    return assemble(header, data), True


@st.composite
def metadata_garbage(draw):
    header, data = header_and_data()
    key = draw(st.sampled_from(METADATA_KEYS + ["format_version"]))
    header["__metadata__"][key] = draw(st.text(max_size=64) | st.sampled_from(
        ["NaN", "Infinity", "-1", "1e999", "", "²", "{\"3\": {\"rejected_steps\": Infinity}}", "[]", "null", "0,0",
         "[" * 100_000 + "]" * 100_000, "{\"3\": " * 5000 + "{}" + "}" * 5000]))
    return assemble(header, data), False


@st.composite
def header_garbage(draw):
    header, data = header_and_data()
    json_values = st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
                               lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                           max_size=3),
                               max_leaves=8)
    key = draw(st.sampled_from(TENSOR_KEYS + ["__metadata__", "extra"]))
    header[key] = draw(json_values)
    return assemble(header, data), False


HOSTILE = st.one_of(truncated(), bit_flipped(), huge_header(), random_bytes(), pickle_renamed(), poisoned_values(), absurd_values(),
                    non_monotone(), wrong_shape(), bad_offsets(), future_version(), metadata_garbage(),
                    header_garbage())


def test_the_unmutated_file_loads():
    assert solver_from_bytes(VALID).nfes == [3, 5]


@settings(max_examples=1200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(HOSTILE)
def test_hostile_files_load_validly_or_raise_the_package_error_fast(case):
    blob, must_fail = case
    began = time.perf_counter()
    try:
        solver = solver_from_bytes(blob, "fuzzed.safetensors")
    except LearnedSolverFileError as err:
        assert str(err).startswith("fuzzed.safetensors: ")
    else:
        assert not must_fail, "a file that cannot be valid was accepted"
        for nfe in solver.nfes:  # what loads is usable: finite, strictly decreasing, in range
            sigmas = solver.sigmas(nfe)
            assert torch.isfinite(sigmas).all() and (sigmas[1:] < sigmas[:-1]).all()
            assert sigmas[0] <= solver.sigma_range[1] * (1 + 1e-9)
            start = torch.randn((2,) + SHAPE, generator=torch.Generator().manual_seed(0)) * float(sigmas[0])
            assert torch.isfinite(solver.sample(MODEL, start, nfe)).all(), f"NFE {nfe} samples to NaN/inf"
    assert time.perf_counter() - began < 1.0


@pytest.mark.parametrize("version", ["²", "١", "0x2", " 1", "1.0"])
def test_odd_version_strings_are_refused_clearly(version):
    header, data = header_and_data()
    header["__metadata__"]["format_version"] = version
    with pytest.raises(LearnedSolverFileError, match="format_version"):
        solver_from_bytes(assemble(header, data))
