"""The one solver loop, in k-diffusion sampler form.

``sample_learned(model, x, sigmas, extra_args=None, callback=None, disable=None, **options)``
runs N = len(sigmas) - 1 model calls ``model(x, sigma * s_in, **extra_args)`` and returns x at
``sigmas[-1]``. Every base solver and every learned method is a set of options of this loop:

* ``base``: ``euler`` (= DDIM), ``dpmpp_2m``, ``dpmpp_3m`` (ODE forms), ``ipndm``,
  ``unipc_bh1``, ``unipc_bh2``;
* ``max_order``: cap on the base's order (history length), as ComfyUI's iPNDM ``max_order``;
* ``corrector``: the zero-extra-call UniPC-style corrector (default on for UniPC bases only);
* ``corrections``: what a fit learns per step (``StepCorrections``): ``d_corrections`` [N, K<=4],
  ``step_scales`` [N], ``corrector_corrections`` [N], zero-initialised corrections to the base
  weights (see ``coefficients``), and ``eval_offsets`` [N], decoupled model-evaluation times in
  half-log-SNR units: step i calls the model at the sigma whose lambda is
  lambda(sigma_i) + eval_offsets[i], on the state at sigma_i;
* ``convention``: ``"auto"`` (ComfyUI flow models are detected), ``"ve"`` or ``"flow"``;
* ``step_hook(i, x_next, direction) -> x_next``: called after each predictor step with the
  step's D-ODE direction ``s_i (D_i - D_{i-1})`` (step 0: ``s_0 (D_0 - x_0)``); what it returns is
  carried on. The closed-form D-ODE fit uses it to solve for each step scale in turn.

Nothing here is wrapped in ``no_grad``: the result is differentiable with respect to ``sigmas``,
every coefficient tensor and ``x``. Coefficient arithmetic runs in float64 on the CPU (N scalars);
latent arithmetic runs in ``x``'s dtype and device, so model calls may run under autocast.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from .coefficients import BASE_SOLVERS, HISTORY, apply_corrections, base_tables
from .conventions import half_log_snr, resolve_convention, sigma_from_half_log_snr

try:  # progress bars as in k-diffusion when tqdm is present (it is in ComfyUI)
    from tqdm.auto import trange
except ImportError:  # pragma: no cover - tqdm is optional
    def trange(n, disable=None):
        return range(n)


def append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    """sigmas [N] -> [N + 1] ending in 0, a final denoising step (k-diffusion's helper)."""
    return torch.cat([sigmas, sigmas.new_zeros(1)])


@dataclass(frozen=True)
class StepCorrections:
    """What a fit learns per step on top of a base solver, for a grid of N steps; None: not
    learned. eval_offsets [N]: decoupled evaluation times (half-log-SNR units); d_corrections
    [N, K<=4]: corrections to the weights of the newest K denoiser outputs; step_scales [N]:
    D-ODE's scales of each step's direction; corrector_corrections [N]: corrections to the
    corrector's weight of the new output. Tensors or lists of numbers."""

    eval_offsets: Any = None
    d_corrections: Any = None
    step_scales: Any = None
    corrector_corrections: Any = None

    def present(self) -> dict:
        """name -> value of the corrections that are set, in file order."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # no copies: grads flow
        return {name: value for name, value in values.items() if value is not None}

    def tail(self, steps: int) -> StepCorrections:
        """The corrections of the last ``steps`` steps (a grid's tail, as denoise < 1 runs it)."""
        return StepCorrections(**{name: value[len(value) - steps:] for name, value in self.present().items()})


# the corrections a fit learns (tensors per step), in file order
LEARNED_OPTIONS = tuple(f.name for f in dataclasses.fields(StepCorrections))


def check_sigmas(sigmas, convention: str = "ve") -> torch.Tensor:
    """Validate a sigma grid [N+1] (host units) and return its values as CPU float64.

    Raises ValueError naming the fix for: not 1-D, fewer than 2 entries (NFE < 1), NaN/inf,
    negative values, not strictly decreasing, flow sigmas above 1.
    """
    if not torch.is_tensor(sigmas):
        try:
            sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"sigmas must be a 1-D list or tensor of numbers: {err}") from None
    if sigmas.ndim != 1:
        raise ValueError(f"sigmas must be a 1-D tensor [steps + 1]; got shape {tuple(sigmas.shape)}")
    values = sigmas.detach().to("cpu", torch.float64)
    if values.numel() < 2:
        raise ValueError(
            f"sigmas has {values.numel()} entr{'y' if values.numel() == 1 else 'ies'}, so NFE = "
            f"{max(values.numel() - 1, 0)}: a schedule for N model calls needs N + 1 sigmas (N >= 1)"
        )
    bad = (~torch.isfinite(values)).nonzero()
    if len(bad):
        i = int(bad[0])
        raise ValueError(f"sigmas[{i}] is {values[i].item()}: every sigma must be a finite number")
    if (values < 0).any():
        i = int((values < 0).nonzero()[0])
        raise ValueError(f"sigmas[{i}] = {values[i].item():g} is negative: sigmas are noise levels >= 0")
    steps = values[1:] - values[:-1]
    if (steps >= 0).any():
        i = int((steps >= 0).nonzero()[0])
        raise ValueError(
            f"sigmas must be strictly decreasing (noise to data), but sigmas[{i}] = "
            f"{values[i].item():g} and sigmas[{i + 1}] = {values[i + 1].item():g}; sort the schedule "
            f"descending and drop repeated values"
        )
    if convention == "flow" and values[0] > 1:
        raise ValueError(
            f"sigmas[0] = {values[0].item():g} > 1 under the flow convention, where sigma is the "
            f"flow time t in [0, 1]; use convention='ve' for an eps/v-prediction model"
        )
    return values


def _check_coefficient(name, value, shape, hint):
    if value is None:
        return None
    if not torch.is_tensor(value):
        value = torch.as_tensor(value, dtype=torch.float64)
    if tuple(value.shape) != tuple(shape):
        raise ValueError(
            f"{name} has shape {tuple(value.shape)} but the grid has {shape[0]} steps, so it must be "
            f"{hint}; refit the solver for this number of steps or pass the sigmas it was fitted on"
        )
    if not torch.isfinite(value.detach()).all():
        raise ValueError(f"{name} contains NaN or inf; refit the solver or reload a valid file")
    return value.to("cpu", torch.float64)


def _checked_d_corrections(d_corrections, steps: int):
    """``d_corrections`` as a float64 tensor [steps, K], 1 <= K <= HISTORY (or None); a clear
    error naming the shape to use otherwise."""
    if d_corrections is not None and not torch.is_tensor(d_corrections):
        d_corrections = torch.as_tensor(d_corrections, dtype=torch.float64)
    d_shape = (steps, "K")
    if d_corrections is not None and d_corrections.ndim == 2:
        width = d_corrections.shape[1]
        if not 1 <= width <= HISTORY:
            raise ValueError(
                f"d_corrections has {width} columns; it weighs the newest 1 to {HISTORY} denoiser "
                f"outputs, so use shape [{steps}, K] with 1 <= K <= {HISTORY}"
            )
        d_shape = (steps, width)
    return _check_coefficient("d_corrections", d_corrections, d_shape, f"[{steps}, K]")


def sample_learned(model, x, sigmas, extra_args=None, callback=None, disable=None, *,
                   base: str = "dpmpp_2m", convention: str = "auto", corrector=None, max_order=None,
                   corrections: StepCorrections | None = None, step_hook=None):
    """Solve the probability-flow ODE from ``sigmas[0]`` to ``sigmas[-1]`` with N model calls.

    x: [B, ...] state at ``sigmas[0]`` (already noise-scaled, as ComfyUI passes it).
    sigmas: [N+1] strictly decreasing host sigmas; a final 0 makes the last step a denoise.
    corrections: a fit's ``StepCorrections`` for these N steps (None: the plain base).
    Returns x at ``sigmas[-1]``, same shape and dtype as ``x``.
    """
    if base not in BASE_SOLVERS:
        raise ValueError(f"unknown base solver {base!r}; choose one of {', '.join(BASE_SOLVERS)}")
    if max_order is not None and (not isinstance(max_order, int) or max_order < 1):
        raise ValueError(f"max_order must be a whole number >= 1 (1 = Euler/DDIM); got {max_order!r}")
    extra_args = {} if extra_args is None else extra_args
    convention = resolve_convention(model, convention)
    values = check_sigmas(sigmas, convention)
    if not torch.is_tensor(sigmas):
        sigmas = values.to(x.dtype)
    steps = sigmas.shape[0] - 1
    corrections = corrections or StepCorrections()
    d_corrections = _checked_d_corrections(corrections.d_corrections, steps)
    step_scales = _check_coefficient("step_scales", corrections.step_scales, (steps,), f"[{steps}]")
    corrector_corrections = _check_coefficient(
        "corrector_corrections", corrections.corrector_corrections, (steps,), f"[{steps}]")
    eval_offsets = _check_coefficient("eval_offsets", corrections.eval_offsets, (steps,), f"[{steps}]")
    if corrector is None:
        corrector = base.startswith("unipc") or corrector_corrections is not None

    grid = sigmas.to("cpu", torch.float64)
    tables = apply_corrections(base_tables(grid, base, convention, bool(corrector), max_order),
                               d_corrections, step_scales, corrector_corrections)
    to_x = dict(device=x.device, dtype=x.dtype)
    x_w, d_w = tables.x_weights.to(**to_x), tables.d_weights.to(**to_x)
    c_x, c_d = tables.corrector_x.to(**to_x), tables.corrector_d.to(**to_x)
    d_scale = tables.d_scale.to(**to_x)
    if eval_offsets is None:
        model_sigmas = sigmas.to(x.device)
    else:
        positive = grid[:-1]
        lam = half_log_snr(positive, convention) + eval_offsets
        model_sigmas = sigma_from_half_log_snr(lam, convention).to(**to_x)

    s_in = x.new_ones([x.shape[0]])
    states, outputs = [], []  # newest first, at most HISTORY of each
    for i in trange(steps, disable=disable):
        denoised = model(x, model_sigmas[i] * s_in, **extra_args)
        if denoised.shape != x.shape:
            raise ValueError(
                f"the model returned shape {tuple(denoised.shape)} for an input of shape "
                f"{tuple(x.shape)}; a k-diffusion model must return the denoised x0 of the input's shape"
            )
        denoised = denoised.to(x.dtype)
        if i > 0 and tables.corrector_on[i - 1]:
            x = c_x[i - 1] * states[0] + c_d[i - 1, 0] * denoised
            for k, past in enumerate(outputs):
                x = x + c_d[i - 1, k + 1] * past
        states.insert(0, x)
        outputs.insert(0, denoised)
        del states[HISTORY:], outputs[HISTORY:]
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x_next = x_w[i, 0] * x
        if tables.uses_x_history:
            for k in range(1, len(states)):
                x_next = x_next + x_w[i, k] * states[k]
        for k, past in enumerate(outputs):
            x_next = x_next + d_w[i, k] * past
        if step_hook is not None:
            previous = outputs[1] if len(outputs) > 1 else x
            x_next = step_hook(i, x_next, d_scale[i] * (denoised - previous))
        x = x_next
    return x


def _base_sampler(base: str):
    def sampler(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        return sample_learned(model, x, sigmas, extra_args, callback, disable, base=base, **options)

    sampler.__name__ = sampler.__qualname__ = f"sample_{base}"
    sampler.__doc__ = (
        f"The {base} base solver in k-diffusion form; options as for ``sample_learned`` "
        f"(corrections default to zero, which is exactly {base})."
    )
    return sampler


sample_euler = _base_sampler("euler")
sample_dpmpp_2m = _base_sampler("dpmpp_2m")
sample_dpmpp_3m = _base_sampler("dpmpp_3m")
sample_ipndm = _base_sampler("ipndm")
sample_unipc_bh1 = _base_sampler("unipc_bh1")
sample_unipc_bh2 = _base_sampler("unipc_bh2")

SAMPLERS = {base: globals()[f"sample_{base}"] for base in BASE_SOLVERS}
