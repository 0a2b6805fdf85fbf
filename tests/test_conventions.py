"""One code path for eps, v-prediction and flow-matching models."""

import pytest
import torch

from helpers import SingleGaussian
from learned_solvers.learned_samplers import (
    PredictionDenoiser,
    detect_convention,
    sample_dpmpp_3m,
    sample_euler,
    single_gaussian_ode_solution,
)
from learned_solvers.schedules import exponential, karras


def flow_denoiser(ve_denoiser):
    """The exact denoiser in flow units: x_t = (1-t) x0 + t eps, D(x_t, t) = D_ve(x_t/(1-t), t/(1-t))."""
    def denoise(x, t):
        t = t.clamp(max=1 - 1e-9).reshape(-1, *([1] * (x.ndim - 1)))  # the t -> 1 limit
        return ve_denoiser(x / (1 - t), (t / (1 - t)).reshape(-1))
    return denoise


def raw_network(ve_denoiser, prediction):
    """What a network trained with ``prediction`` outputs, computed from the exact denoiser."""
    def net(x_in, sigma):
        s = sigma.reshape(-1, *([1] * (x_in.ndim - 1)))
        if prediction == "flow":
            return (x_in - flow_denoiser(ve_denoiser)(x_in, sigma)) / s
        x = x_in * torch.sqrt(1 + s * s)
        denoised = ve_denoiser(x, sigma)
        if prediction == "eps":
            return (x - denoised) / s
        if prediction == "v":
            return (x / (1 + s * s) - denoised) * torch.sqrt(1 + s * s) / s
        return denoised
    return net


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_prediction_wrappers_recover_the_exact_denoiser(gaussian, prediction):
    model = PredictionDenoiser(raw_network(gaussian.denoiser, prediction), prediction)
    x, sigma = gaussian.start(3.0), torch.full((8,), 3.0, dtype=torch.float64)
    torch.testing.assert_close(model(x, sigma), gaussian.denoiser(x, sigma))
    assert detect_convention(model) == "ve"


def test_flow_wrapper_recovers_the_exact_flow_denoiser(gaussian):
    model = PredictionDenoiser(raw_network(gaussian.denoiser, "flow"), "flow")
    x, t = torch.randn(8, 16, dtype=torch.float64), torch.full((8,), 0.7, dtype=torch.float64)
    torch.testing.assert_close(model(x, t), flow_denoiser(gaussian.denoiser)(x, t))
    assert detect_convention(model) == "flow"


def test_euler_on_an_eps_model_is_the_eps_euler_step(gaussian):
    net = raw_network(gaussian.denoiser, "eps")
    model = PredictionDenoiser(net, "eps")
    sigmas = karras(6, 0.03, 14.6, final_zero=True)
    x = gaussian.start(14.6)
    expected = x.clone()
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        eps = net(expected / torch.sqrt(1 + s * s), s.expand(8))
        expected = expected + (s_next - s) * eps
    torch.testing.assert_close(sample_euler(model, x, sigmas, disable=True), expected)


def test_euler_on_a_v_model_is_ddim_with_v(gaussian):
    net = raw_network(gaussian.denoiser, "v")
    model = PredictionDenoiser(net, "v")
    sigmas = karras(6, 0.03, 14.6)
    x = gaussian.start(14.6)
    z = x / torch.sqrt(1 + sigmas[0] ** 2)  # variance-preserving coordinates
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        alpha, sigma_vp = 1 / torch.sqrt(1 + s * s), s / torch.sqrt(1 + s * s)
        v = net(z, s.expand(8))
        x0, eps = alpha * z - sigma_vp * v, sigma_vp * z + alpha * v
        z = x0 / torch.sqrt(1 + s_next ** 2) + eps * s_next / torch.sqrt(1 + s_next ** 2)
    expected = z * torch.sqrt(1 + sigmas[-1] ** 2)
    torch.testing.assert_close(sample_euler(model, x, sigmas, disable=True), expected)


def test_euler_on_a_flow_model_is_the_flow_matching_euler_step(gaussian):
    net = raw_network(gaussian.denoiser, "flow")
    model = PredictionDenoiser(net, "flow")
    ts = torch.tensor([1.0, 0.9, 0.7, 0.45, 0.2, 0.05, 0.0], dtype=torch.float64)
    x = torch.randn(8, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    expected = x.clone()
    for t, t_next in zip(ts[:-1], ts[1:]):
        expected = expected + (t_next - t) * net(expected, t.expand(8))
    out = sample_euler(model, x, ts, disable=True)
    torch.testing.assert_close(out, expected)
    # the 've' reading of t gives the same Euler step: the conventions differ from order 2 on
    torch.testing.assert_close(sample_euler(model, x, ts, disable=True, convention="ve"), expected)


@pytest.mark.parametrize("prediction", ["eps", "v", "flow"])
def test_third_order_solver_reaches_the_exact_ode_solution(prediction):
    gaussian = SingleGaussian()
    model = PredictionDenoiser(raw_network(gaussian.denoiser, prediction), prediction)
    noise = torch.randn(8, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    mean, var = gaussian.mean, gaussian.variance
    if prediction == "flow":
        # from pure noise at t = 1 to t = 0.02: in VE units x~(s) = mean + eps * sqrt(var + s^2)
        lam = torch.linspace(-7.0, float(torch.logit(torch.tensor(0.98))), 200, dtype=torch.float64)
        ts = torch.cat([torch.ones(1, dtype=torch.float64), torch.sigmoid(-lam)])
        t_end = ts[-1]
        s_end = t_end / (1 - t_end)
        exact = (1 - t_end) * (mean + noise * torch.sqrt(var + s_end ** 2))
        out = sample_dpmpp_3m(model, noise, ts, disable=True)
    else:
        sigmas = exponential(200, 0.02, 80.0)
        x = mean + 80.0 * noise
        exact = single_gaussian_ode_solution(x, 80.0, 0.02, mean, var)
        out = sample_dpmpp_3m(model, x, sigmas, disable=True)
    assert (out - exact).abs().max() < 1e-5


class _Sampling:
    pass


class CONST(_Sampling):
    pass


class EPS(_Sampling):
    pass


class FlowSampling(CONST):
    pass


class _Patcher:
    def __init__(self, sampling):
        self.sampling = sampling

    def get_model_object(self, name):
        assert name == "model_sampling"
        return self.sampling


class _Inner:
    def __init__(self, sampling):
        self.model_patcher = _Patcher(sampling)


class HostModel:
    """Shaped like ComfyUI's sampler-side model: model.inner_model.model_patcher."""

    def __init__(self, sampling):
        self.inner_model = _Inner(sampling)


def test_flow_is_detected_from_a_host_model_sampling_class():
    assert detect_convention(HostModel(FlowSampling())) == "flow"
    assert detect_convention(HostModel(EPS())) == "ve"
    assert detect_convention(lambda x, sigma: x) == "ve"
