"""Learned-solver files: safetensors tensors + string metadata, validated before use.

Layout (format version 1; ``FORMAT.md`` is the written spec):

* tensors, float64, per fitted NFE ``N``: ``nfe{N}.sigmas`` [N+1] (host units, strictly
  decreasing, may end in 0), ``nfe{N}.coordinate`` [N+1] (the grid as fractions of the sigma
  range, see ``grids.grid_coordinate``), and where learned ``nfe{N}.eval_offsets`` [N],
  ``nfe{N}.d_corrections`` [N, K], ``nfe{N}.step_scales`` [N], ``nfe{N}.corrector_corrections`` [N];
* ``__metadata__`` (all strings): ``format`` = ``learned-solver``, ``format_version``, ``method``,
  ``base``, ``convention``, ``corrector``, ``nfes``, ``sigma_min``, ``sigma_max``, ``fits``
  (JSON per NFE: method, held-out RMSE, base RMSE, fit seconds), ``provenance`` (JSON), and the
  optional ``model_family``, ``prediction``, ``shift``, ``fingerprint``, ``cfg``, ``resolution``,
  ``author``, ``description``, ``license``, ``package_version``.

Nothing is unpickled; the header is parsed and checked by this module before safetensors reads
a byte of tensor data, and every failure raises ``LearnedSolverFileError`` with a message a
user can act on.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import tempfile

import torch

from ..learned_samplers import (
    BASE_SOLVERS,
    CONVENTIONS,
    CORRECTION_LIMIT,
    HISTORY,
    LEARNED_OPTIONS,
    MIN_LAMBDA_GAP,
    half_log_snr,
    sample_learned,
    start_noise_scale,
)
from .grids import grid_coordinate
from .solver import MAX_NFE, FittedSteps, LearnedSolver

FORMAT_NAME = "learned-solver"
FORMAT_VERSION = 1
MAX_FILE_BYTES = 1 << 20  # a learned solver is kilobytes; anything near a megabyte is not one
MAX_HEADER_BYTES = 256 << 10
# the largest sigma_max of any VE model (SD1.x/SDXL 14.6, EDM 80, zero-terminal-SNR schedules
# about 4.5e3) is far below this; a larger one is no model's, and its start noise overflows
MAX_VE_SIGMA = 1e5
# no model's sigma_min is near this (SD 0.029, EDM 0.002, flow 1e-3..3e-4); far below it the
# half-log-SNR saturates and neighbouring sigmas become the same step
MIN_SIGMA = 1e-6
# the probe: unit-Gaussian data, whose ODE ends at values of about 1; a sane solver lands there
PROBE_LIMIT = 1e3
COORDINATE_TOLERANCE = 1e-6  # |u - grid_coordinate(sigmas)|: u is derived, so it must agree
OPTIONAL_METADATA = ("model_family", "prediction", "shift", "fingerprint", "cfg", "resolution", "teacher_residual",
                     "model_calls", "author", "description", "license", "package_version")
# what describes a solver, in reading order (inspect, the Hub card): required, then optional keys
DESCRIPTION_KEYS = ("method", "base", "convention", "corrector", "nfes", "sigma_min", "sigma_max") + OPTIONAL_METADATA
EXTENSION = ".safetensors"
# where learned solvers live in a host's models folder (models/learned_solvers), and the presets
# the package ships
FOLDER = "learned_solvers"
PRESETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "presets")


class LearnedSolverFileError(ValueError):
    """A learned-solver file is missing, malformed, hostile or for a newer package version."""


def _fail(path, message):
    raise LearnedSolverFileError(f"{os.path.basename(str(path))}: {message}")


# ---------------------------------------------------------------------------------------------
# Writing

def solver_tensors(solver) -> dict:
    """The tensors of a ``LearnedSolver`` under their file keys (float64, contiguous, CPU)."""
    tensors = {}
    for nfe in solver.nfes:
        fit = solver.fits[nfe]
        tensors[f"nfe{nfe}.sigmas"] = fit.sigmas
        tensors[f"nfe{nfe}.coordinate"] = fit.coordinate
        for name, value in fit.options().items():
            tensors[f"nfe{nfe}.{name}"] = value
    return {k: v.detach().to("cpu", torch.float64).contiguous() for k, v in tensors.items()}


def solver_metadata(solver, extra: dict | None = None) -> dict:
    """String metadata of a ``LearnedSolver``; ``extra`` adds or overrides optional keys."""
    fits = {}
    for n, f in solver.fits.items():
        info = {"method": f.method, "held_out_rmse": _finite_or_none(f.held_out_rmse),
                "base_held_out_rmse": _finite_or_none(f.base_held_out_rmse),
                "fit_seconds": round(float(f.fit_seconds), 3), "rejected_steps": int(f.rejected_steps)}
        if f.base is not None:
            info["base"] = f.base
        if f.corrector is not None:
            info["corrector"] = bool(f.corrector)
        if f.held_out:
            info["held_out"] = {k: _finite_or_none(v) for k, v in f.held_out.items()}
        if f.start:
            info["start"] = {k: str(v) for k, v in f.start.items()}
        if f.model_calls:
            info["model_calls"] = {k: int(v) for k, v in f.model_calls.items()}
        if f.floor:
            info["floor"] = {k: (_finite_or_none(v) if isinstance(v, (int, float)) else str(v))
                             for k, v in f.floor.items()}
        fits[str(n)] = info
    provenance = dict(solver.provenance)
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "method": solver.method,
        "base": solver.base,
        "convention": solver.convention,
        "corrector": "true" if solver.corrector else "false",
        "nfes": ",".join(str(n) for n in solver.nfes),
        "sigma_min": repr(float(solver.sigma_range[0])),
        "sigma_max": repr(float(solver.sigma_range[1])),
        "fits": json.dumps(fits, sort_keys=True),
        "provenance": json.dumps(provenance, sort_keys=True, default=str),
    }
    model = provenance.get("model", {}) if isinstance(provenance.get("model"), dict) else {}
    teacher = provenance.get("teacher", {}) if isinstance(provenance.get("teacher"), dict) else {}
    cost = provenance.get("cost", {}) if isinstance(provenance.get("cost"), dict) else {}
    model = {**model, "teacher_residual": teacher.get("residual"), "model_calls": cost.get("calls")}
    for key in OPTIONAL_METADATA:
        value = (extra or {}).get(key, model.get(key, provenance.get(key)))
        if value is not None and value != "":
            metadata[key] = value if isinstance(value, str) else json.dumps(value)
    for key, value in (extra or {}).items():
        if key not in OPTIONAL_METADATA:
            raise ValueError(f"unknown metadata key {key!r}; optional keys are {', '.join(OPTIONAL_METADATA)}")
    return metadata


def _numbers(value, keep_text: bool = False) -> dict:
    """A metadata summary dict with its finite numbers (and short texts where kept); anything
    else in it is dropped (it is information, not an instruction)."""
    if not isinstance(value, dict):
        return {}
    out = {}
    for key, item in list(value.items())[:16]:
        if isinstance(item, (int, float)) and not isinstance(item, bool) and math.isfinite(item):
            out[str(key)[:32]] = float(item)
        elif keep_text and isinstance(item, str):
            out[str(key)[:32]] = item[:64]
    return out


def _finite_or_none(value):
    value = float(value)
    return value if math.isfinite(value) else None


def save_learned_solver(solver, path, metadata: dict | None = None) -> str:
    """Write ``solver`` to ``path`` atomically (a temporary file in the same folder, then a
    rename), so a crash or cancel never leaves half a file. Returns the path written."""
    from safetensors.torch import save

    path = os.fspath(path)
    if not path.endswith(EXTENSION):
        path += EXTENSION
    blob = save(solver_tensors(solver), metadata=solver_metadata(solver, metadata))
    solver_from_bytes(blob, path)  # never write a file that this package would refuse to read
    return write_atomically(path, blob)


def new_file_path(folder: str, name: str) -> str:
    """A free path for ``name`` (subfolders allowed, no escaping ``folder``): name.safetensors,
    or name_00001.safetensors, ... when it is taken."""
    name = name.strip().replace("\\", "/")
    if name.endswith(EXTENSION):
        name = name[: -len(EXTENSION)]
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts) or not all(re.fullmatch(r"[\w\-. ]+", p) for p in parts):
        raise ValueError(f"file name {name!r} must be letters, digits, '-', '_', '.', spaces and '/' for subfolders")
    stem = os.path.join(folder, *parts)
    candidate, counter = stem + EXTENSION, 0
    while os.path.exists(candidate):
        counter += 1
        candidate = f"{stem}_{counter:05d}{EXTENSION}"
    return candidate


def write_atomically(path, blob: bytes) -> str:
    """Write ``blob`` to ``path`` through a temporary file in the same folder and a rename, so
    a crash or cancel never leaves half a file. Returns the path."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".partial-", suffix=EXTENSION, dir=folder)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(blob)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    return path


def check_writable(folder) -> str:
    """``folder`` (created if missing) when a file can be written there, else OSError naming it:
    checked before a long fit, not after."""
    folder = os.fspath(folder)
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as error:
        raise OSError(f"cannot write to {folder} ({error.strerror or error}); choose a folder you can write "
                      f"or fix its permissions before the fit") from error
    return folder


# ---------------------------------------------------------------------------------------------
# Reading

def read_header(blob: bytes, path="file") -> dict:
    """The safetensors JSON header of ``blob``, checked for size, shape and offsets."""
    if len(blob) > MAX_FILE_BYTES:
        _fail(path, f"is {len(blob):,} bytes; a learned-solver file is a few kilobytes (limit "
                    f"{MAX_FILE_BYTES:,}), so this is some other kind of file")
    if len(blob) < 8:
        _fail(path, "is too short to be a safetensors file (truncated download?)")
    (length,) = struct.unpack("<Q", blob[:8])
    if length > MAX_HEADER_BYTES or 8 + length > len(blob):
        _fail(path, "has a broken safetensors header (truncated or not a safetensors file; a renamed "
                    ".pt/.ckpt pickle is refused on purpose)")
    try:
        header = json.loads(blob[8:8 + length].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        _fail(path, "has a safetensors header that is not valid JSON (corrupted file)")
    if not isinstance(header, dict):
        _fail(path, "has a safetensors header that is not a JSON object (corrupted file)")
    data_length = len(blob) - 8 - length
    for key, entry in header.items():
        if key == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                      for k, v in entry.items()):
                _fail(path, "has metadata that is not a string-to-string map (corrupted file)")
            continue
        if not isinstance(entry, dict) or entry.get("dtype") != "F64":
            _fail(path, f"tensor {key!r} is not float64; learned-solver tensors are stored as F64")
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if (not isinstance(shape, list) or len(shape) > 2 or not all(isinstance(s, int) and 0 <= s <= MAX_NFE + 1
                                                                    for s in shape)):
            _fail(path, f"tensor {key!r} has an impossible shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= data_length
                or offsets[1] - offsets[0] != 8 * math.prod(shape)):
            _fail(path, f"tensor {key!r} points outside the file (truncated or corrupted)")
    return header


def _metadata_value(metadata, key, path):
    if key not in metadata:
        _fail(path, f"lacks the metadata entry {key!r}; it was not written by this package's format")
    return metadata[key]


def _parse_float(metadata, key, path):
    text = _metadata_value(metadata, key, path)
    try:
        value = float(text)
    except ValueError:
        _fail(path, f"metadata {key!r} = {text[:40]!r} is not a number")
    if not math.isfinite(value):
        _fail(path, f"metadata {key!r} is {value}; it must be finite")
    return value


def _parse_json(metadata, key, path):
    try:
        return json.loads(metadata.get(key, "{}"))
    except (json.JSONDecodeError, RecursionError):  # RecursionError: nested thousands deep
        _fail(path, f"metadata {key!r} is not valid JSON (or nested too deep to be this format's)")


def solver_from_bytes(blob: bytes, path="file"):
    """A validated ``LearnedSolver`` from a file's bytes (see ``load_learned_solver``).

    Every problem raises ``LearnedSolverFileError``; an error the checks below did not foresee
    is reported as one too (a hostile file must never end in a traceback)."""
    try:
        return _solver_from_bytes(blob, path)
    except LearnedSolverFileError:
        raise
    except (ArithmeticError, LookupError, RecursionError, TypeError, ValueError, RuntimeError) as err:
        _fail(path, f"is malformed and could not be read ({type(err).__name__}: {str(err)[:120]})")


def _solver_from_bytes(blob: bytes, path):
    from safetensors import SafetensorError
    from safetensors.torch import load

    header = read_header(blob, path)
    metadata = header.get("__metadata__", {})
    base, convention, corrector, sigma_range, nfes = _checked_header(metadata, path)
    fits_info = _parse_json(metadata, "fits", path)
    provenance = _parse_json(metadata, "provenance", path)
    if not isinstance(fits_info, dict) or not isinstance(provenance, dict):
        _fail(path, "has 'fits' or 'provenance' metadata that is not a JSON object")
    try:
        tensors = load(blob)
    except (SafetensorError, RuntimeError, ValueError) as err:
        _fail(path, f"could not be read as safetensors ({err})")
    expected = set()
    fits = {}
    for n in nfes:
        present = _checked_tensors(tensors, n, sigma_range, convention, path)
        expected |= {f"nfe{n}.{name}" for name in present}
        info = fits_info.get(str(n), {}) if isinstance(fits_info.get(str(n), {}), dict) else {}
        fits[n] = _fit_from_file(present, info, metadata, n, path)
    unknown = set(tensors) - expected
    if unknown:
        _fail(path, f"holds tensors this format does not define: {', '.join(sorted(unknown)[:5])}")
    for key in OPTIONAL_METADATA:
        if key in metadata:
            provenance.setdefault("file", {})[key] = metadata[key]
    solver = LearnedSolver(base=base, convention=convention, corrector=corrector, method=metadata.get("method", "learned"),
                           sigma_range=sigma_range, fits=fits, provenance=provenance)
    _probe(solver, path)
    return solver


def _checked_header(metadata: dict, path) -> tuple:
    """(base, convention, corrector, (sigma_min, sigma_max), nfes) from a file's metadata, each
    checked; a clear error naming the file and the field otherwise."""
    if metadata.get("format") != FORMAT_NAME:
        _fail(path, "is a safetensors file but not a learned solver (its metadata has no "
                    f"format = {FORMAT_NAME!r}); is it a model or a LoRA?")
    version = _metadata_value(metadata, "format_version", path)
    if not (version.isascii() and version.isdigit()):
        _fail(path, f"has format_version {version!r}, which is not a whole number")
    if int(version) > FORMAT_VERSION:
        _fail(path, f"uses learned-solver format version {version}, newer than this package reads "
                    f"({FORMAT_VERSION}); upgrade the package")
    base = _metadata_value(metadata, "base", path)
    if base not in BASE_SOLVERS:
        _fail(path, f"names base solver {base!r}, which this package does not know "
                    f"({', '.join(BASE_SOLVERS)}); upgrade the package")
    convention = _metadata_value(metadata, "convention", path)
    if convention not in CONVENTIONS:
        _fail(path, f"has convention {convention!r}; it must be one of {', '.join(CONVENTIONS)}")
    corrector = _metadata_value(metadata, "corrector", path)
    if corrector not in ("true", "false"):
        _fail(path, f"has corrector {corrector!r}; it must be 'true' or 'false'")
    sigma_min, sigma_max = _parse_float(metadata, "sigma_min", path), _parse_float(metadata, "sigma_max", path)
    if not MIN_SIGMA <= sigma_min < sigma_max or sigma_max > (1 if convention == "flow" else MAX_VE_SIGMA):
        _fail(path, f"declares the sigma range ({sigma_min:g}, {sigma_max:g}), which is impossible for "
                    f"a {convention} model")
    listed = _metadata_value(metadata, "nfes", path)  # outside the try: the package error is a ValueError too
    try:
        nfes = sorted({int(n) for n in listed.split(",")})
    except ValueError:
        _fail(path, f"has nfes {listed!r}; it must be a comma-separated list of step counts")
    if not nfes or nfes[0] < 2 or nfes[-1] > MAX_NFE:
        _fail(path, f"lists step counts {nfes}; each must be between 2 and {MAX_NFE}")
    return base, convention, corrector == "true", (sigma_min, sigma_max), nfes


def _checked_tensors(tensors: dict, n: int, sigma_range: tuple, convention: str, path) -> dict:
    """NFE ``n``'s tensors of the file, name -> tensor, each checked (finite, its shape, the
    sigmas decreasing inside the declared range, the learned values within their bounds)."""
    sigma_min, sigma_max = sigma_range
    keys = {name: f"nfe{n}.{name}" for name in ("sigmas", "coordinate") + LEARNED_OPTIONS}
    for required in ("sigmas", "coordinate"):
        if keys[required] not in tensors:
            _fail(path, f"lists NFE {n} but has no tensor {keys[required]!r}")
    present = {name: tensors[key] for name, key in keys.items() if key in tensors}
    for name, value in present.items():
        if not torch.isfinite(value).all():
            _fail(path, f"tensor {keys[name]!r} holds NaN or inf")
        want = {"sigmas": (n + 1,), "coordinate": (n + 1,), "d_corrections": (n, "K")}.get(name, (n,))
        if value.ndim != len(want) or value.shape[0] != want[0] or (
                name == "d_corrections" and not 1 <= value.shape[1] <= HISTORY):
            shape = "[N, K] with 1 <= K <= %d" % HISTORY if name == "d_corrections" else f"{list(want)}"
            _fail(path, f"tensor {keys[name]!r} has shape {list(value.shape)}; for NFE {n} it must be {shape}")
    sigmas = present["sigmas"]
    positive = sigmas[:-1] if sigmas[-1] == 0 else sigmas
    if len(positive) < 1 or not bool((sigmas[1:] < sigmas[:-1]).all()):
        _fail(path, f"the NFE {n} sigmas are not strictly decreasing")
    if (positive[-1] < sigma_min * (1 - 1e-9) or positive[0] > sigma_max * (1 + 1e-9)
            or (convention == "flow" and positive[0] > 1)):
        _fail(path, f"the NFE {n} sigmas leave the declared range [{sigma_min:g}, {sigma_max:g}]")
    _check_learned_values(present, n, sigma_range, convention, path)
    return present


def _fit_from_file(present: dict, info: dict, metadata: dict, n: int, path) -> FittedSteps:
    """NFE ``n``'s FittedSteps from its checked tensors and its entry of the "fits" metadata."""
    own_base = info.get("base")
    if own_base is not None and own_base not in BASE_SOLVERS:
        _fail(path, f"names base solver {own_base!r} for NFE {n}, which this package does not know "
                    f"({', '.join(BASE_SOLVERS)}); upgrade the package")
    own_corrector = info.get("corrector")
    if own_corrector is not None and not isinstance(own_corrector, bool):
        _fail(path, f"has corrector {own_corrector!r} for NFE {n}; it must be true or false")
    return FittedSteps(
        **present, method=str(info.get("method", metadata.get("method", "learned"))),
        base=own_base, corrector=own_corrector, held_out=_numbers(info.get("held_out")),
        floor=_numbers(info.get("floor"), keep_text=True),
        model_calls={k: int(v) for k, v in _numbers(info.get("model_calls")).items()},
        start=_numbers(info.get("start"), keep_text=True),
        held_out_rmse=_number(info.get("held_out_rmse")), base_held_out_rmse=_number(info.get("base_held_out_rmse")),
        fit_seconds=_number(info.get("fit_seconds"), 0.0), rejected_steps=int(_number(info.get("rejected_steps"), 0)))


def _probe(solver, path):
    """Sample each fit on unit-Gaussian data (its posterior mean is exact: x / (1 + sigma^2) for
    VE, (1 - t) x / ((1 - t)^2 + t^2) for flow): within the bounds a fit still compounds its
    corrections over many steps, and a file whose solver leaves that model's answer (values
    about 1) by orders of magnitude would do the same on a real one."""
    flow = solver.convention == "flow"

    def unit_gaussian(x, sigma):
        s = sigma.reshape(-1, *[1] * (x.ndim - 1))
        return (1 - s) * x / ((1 - s) ** 2 + s ** 2) if flow else x / (1 + s ** 2)

    noise = torch.randn(16, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for nfe, fit in solver.fits.items():
        start = noise * start_noise_scale(float(fit.sigmas[0]), solver.convention)
        with torch.no_grad():
            out = sample_learned(unit_gaussian, start, fit.sigmas, None, None, True,
                                 **solver.sampler_options(nfe))
        if not torch.isfinite(out).all() or out.abs().max() > PROBE_LIMIT:
            _fail(path, f"its NFE {nfe} solver does not sample sensibly (on unit-Gaussian data it ends at "
                        f"{float(out.abs().max()):.3g} instead of about 1); its coefficients are not a fit's")


def _check_learned_values(present: dict, n: int, sigma_range, convention: str, path):
    """Refuse values no fit produces, which would sample to NaN or inf (see FORMAT.md, Bounds)."""
    sigmas = present["sigmas"]
    gaps = half_log_snr(sigmas[sigmas > 0], convention).diff()  # n >= 2, so at least one
    if gaps.min() < MIN_LAMBDA_GAP:
        _fail(path, f"the NFE {n} sigmas have neighbours at the same noise level (half-log-SNR closer than "
                    f"{MIN_LAMBDA_GAP:g}); they would divide by a zero step")
    expected = grid_coordinate(sigmas, sigma_range, convention)
    if not torch.allclose(present["coordinate"], expected, rtol=0, atol=COORDINATE_TOLERANCE):
        _fail(path, f"the NFE {n} coordinate does not match its sigmas (it is derived from them; the "
                    f"file was edited or corrupted)")
    for name in ("d_corrections", "step_scales", "corrector_corrections"):
        if name in present and present[name].abs().max() > CORRECTION_LIMIT:
            _fail(path, f"tensor 'nfe{n}.{name}' holds {float(present[name].abs().max()):.3g}; a fit's "
                        f"corrections stay within +-{CORRECTION_LIMIT:g} (whole steps of the base solver), so "
                        f"this file would not sample sensibly")
    if "eval_offsets" in present:
        # a step evaluates the model between its neighbouring grid points, inside the model's range:
        # step i's gaps are gaps[i - 1] (before it) and gaps[i] (after it), where they exist
        before = torch.cat([gaps[:1], gaps])[:n]
        after = torch.cat([gaps, gaps[-1:]])[:n]
        widest = torch.maximum(before, after)
        offsets = present["eval_offsets"]
        low, high = (half_log_snr(torch.tensor(s, dtype=torch.float64), convention) for s in sigma_range[::-1])
        evaluated = half_log_snr(sigmas[:n], convention) + offsets
        if (offsets.abs() > widest + 1e-9).any() or (evaluated < low - 1e-6).any() or (evaluated > high + 1e-6).any():
            _fail(path, f"tensor 'nfe{n}.eval_offsets' moves model calls outside their steps or outside the "
                        f"sigma range; a fit keeps them within the neighbouring grid points")


def _number(value, default=float("nan")):
    """A finite JSON number, else ``default`` (the metadata's figures are informative only)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return default


def _read_bytes(path) -> bytes:
    """The file's bytes, refusing anything larger than a learned solver can be before reading it."""
    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            _fail(path, f"is {size:,} bytes; a learned-solver file is a few kilobytes (limit "
                        f"{MAX_FILE_BYTES:,}), so this is some other kind of file")
        with open(path, "rb") as handle:
            return handle.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        _fail(path, f"cannot be read ({err.strerror or err})")


def load_learned_solver(path):
    """Read and validate a learned-solver file; raises ``LearnedSolverFileError`` on any problem."""
    path = os.fspath(path)
    return solver_from_bytes(_read_bytes(path), path)


def read_metadata(path) -> dict:
    """The string metadata of a learned-solver file (its header checked, tensors not read)."""
    return dict(read_header(_read_bytes(path), path).get("__metadata__", {}))


__all__ = [
    "check_writable",
    "EXTENSION",
    "FORMAT_VERSION",
    "LearnedSolverFileError",
    "load_learned_solver",
    "read_metadata",
    "new_file_path",
    "save_learned_solver",
    "solver_from_bytes",
]
