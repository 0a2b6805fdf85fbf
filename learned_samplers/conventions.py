"""Sigma conventions: how a host's sigma maps to signal scale and half-log-SNR.

A k-diffusion-form model is called as ``model(x, sigma)`` and returns the denoised estimate
``D`` (an x0 prediction). Hosts use two conventions for ``sigma``:

* ``"ve"`` (eps and v-prediction models in ComfyUI, k-diffusion, EDM): ``x = x0 + sigma * eps``.
  The signal scale is ``alpha = 1`` and the noise std is ``sigma``.
* ``"flow"`` (rectified flow: SD3, Flux, Wan, ComfyUI's ``CONST`` model sampling):
  ``x = (1 - t) * x0 + t * eps`` with ``sigma = t`` in ``[0, 1]``. The signal scale is
  ``alpha = 1 - t`` and the noise std is ``t``.

In both, ``sigma`` is the noise std and the half-log-SNR is ``lambda = log(alpha / sigma)``
(``-log sigma`` for ve, ``log((1 - t) / t)`` for flow). The solver works on these two
functions only, so every base solver is exact for both families.

Running a flow model with ``"ve"`` treats ``t`` as if it were a VE sigma; that is what
ComfyUI's ``sample_dpmpp_2m`` and ``sample_ipndm`` do, so ``"ve"`` reproduces them on flow
models (Euler is the same in both conventions).
"""

from __future__ import annotations

import math

import torch

CONVENTIONS = ("ve", "flow")

# Half-log-SNR is clamped to this magnitude where it is infinite (flow t = 1), which keeps the
# step-ratio arithmetic and its gradients finite; a t of 1 - 1e-12 is indistinguishable in float32.
LAMBDA_LIMIT = 27.0
# neighbouring grid points closer than this in half-log-SNR are one step: a solver divides by
# the step h, and a learned grid or a remapped one must not bring h near 0
MIN_LAMBDA_GAP = 1e-4


def check_convention(convention: str) -> str:
    if convention not in CONVENTIONS:
        raise ValueError(
            f"unknown sigma convention {convention!r}: use 've' for eps/v-prediction models "
            f"(x = x0 + sigma*eps) or 'flow' for rectified-flow models (x = (1-t)*x0 + t*eps)"
        )
    return convention


def signal_scale(sigma: torch.Tensor, convention: str) -> torch.Tensor:
    """alpha(sigma): the factor on x0 in x at noise level ``sigma`` (host units)."""
    if convention == "flow":
        return 1.0 - sigma
    return torch.ones_like(sigma)


def half_log_snr(sigma: torch.Tensor, convention: str) -> torch.Tensor:
    """lambda(sigma) = log(alpha / sigma), clamped to +-LAMBDA_LIMIT; sigma > 0 in host units."""
    if convention == "flow":
        lam = torch.log1p(-sigma) - torch.log(sigma)
    else:
        lam = -torch.log(sigma)
    return lam.clamp(-LAMBDA_LIMIT, LAMBDA_LIMIT)


def sigma_from_half_log_snr(lam: torch.Tensor, convention: str) -> torch.Tensor:
    """Inverse of :func:`half_log_snr`: host sigma for a half-log-SNR ``lam``."""
    if convention == "flow":
        return torch.sigmoid(-lam)
    return torch.exp(-lam)


def _model_sampling_of(model):
    """The ComfyUI ``model_sampling`` object behind a k-diffusion-form model, or None."""
    inner = getattr(model, "inner_model", None)
    patcher = getattr(inner, "model_patcher", None)
    if patcher is not None and hasattr(patcher, "get_model_object"):
        try:
            return patcher.get_model_object("model_sampling")
        except Exception:  # a host object without that patch slot: fall through to attributes
            pass
    for owner in (getattr(inner, "inner_model", None), inner, model):
        sampling = getattr(owner, "model_sampling", None)
        if sampling is not None:
            return sampling
    return None


def detect_convention(model) -> str:
    """'flow' when ``model`` is backed by a ComfyUI ``CONST`` (flow) model sampling, else 've'.

    Works on ComfyUI's sampler-side model wrapper and on anything exposing ``model_sampling``
    or a ``sigma_convention`` attribute; a plain callable is taken to be 've'. This is the one
    place that knows about model families.
    """
    explicit = getattr(model, "sigma_convention", None)
    if explicit is not None:
        return check_convention(explicit)
    sampling = _model_sampling_of(model)
    if sampling is None:
        return "ve"
    names = {cls.__name__ for cls in type(sampling).__mro__}
    return "flow" if "CONST" in names else "ve"


def resolve_convention(model, convention: str) -> str:
    if convention == "auto":
        return detect_convention(model)
    return check_convention(convention)


# ---------------------------------------------------------------------------------------------
# Raw network parameterisations -> k-diffusion denoiser. These mirror what a host's model
# sampling does around a network, so a network trained with any target can be sampled here.

PREDICTIONS = ("eps", "v", "flow", "x0")


class PredictionDenoiser:
    """Wrap a raw network ``net(x_in, timestep)`` as a k-diffusion denoiser ``D(x, sigma)``.

    ``prediction``:
      * ``"eps"``: input ``x / sqrt(1 + sigma^2)``, network predicts eps, ``D = x - sigma*eps``.
      * ``"v"``: input ``x / sqrt(1 + sigma^2)``, network predicts v (sigma_data = 1),
        ``D = x / (1 + sigma^2) - v * sigma / sqrt(1 + sigma^2)``.
      * ``"flow"``: sigma is flow time t, input x unchanged, network predicts the velocity
        ``eps - x0``, ``D = x - t * v``. ``sigma_convention`` is then ``"flow"``.
      * ``"x0"``: input ``x / sqrt(1 + sigma^2)``, network predicts x0 directly.

    The network is called with ``timestep = sigma`` (shape [B]); ``x`` is [B, ...].
    """

    def __init__(self, net, prediction: str):
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; choose one of {PREDICTIONS}")
        self.net = net
        self.prediction = prediction
        self.sigma_convention = "flow" if prediction == "flow" else "ve"

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs) -> torch.Tensor:
        s = sigma.reshape(sigma.shape[:1] + (1,) * (x.ndim - 1)).to(x.dtype)
        if self.prediction == "flow":
            return x - s * self.net(x, sigma, **kwargs)
        c_in = torch.rsqrt(1.0 + s * s)
        out = self.net(x * c_in, sigma, **kwargs)
        if self.prediction == "eps":
            return x - s * out
        if self.prediction == "v":
            return x * c_in * c_in - out * s * c_in
        return out


__all__ = [
    "CONVENTIONS",
    "LAMBDA_LIMIT",
    "PREDICTIONS",
    "PredictionDenoiser",
    "check_convention",
    "detect_convention",
    "half_log_snr",
    "resolve_convention",
    "sigma_from_half_log_snr",
    "signal_scale",
]


def start_noise_scale(sigma_max: float, convention: str) -> float:
    """Host units of one unit of start noise, as ComfyUI scales full-denoise noise:
    sqrt(1 + sigma_max^2) for VE models, 1 for flow models (t = 1)."""
    return 1.0 if convention == "flow" else math.sqrt(1.0 + sigma_max ** 2)
