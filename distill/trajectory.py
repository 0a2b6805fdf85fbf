"""A grid read off the teacher's own trajectories, at no model call of its own.

While the teacher runs, every pair of its grid points (i, j) gets a cost: how far one
first-order (DDIM) step from the teacher's state at sigma_i, with the teacher's denoised
value there, lands from the teacher's state at sigma_j, averaged over the training samples.
The N-step grid whose steps cost least in sum (a shortest path, by dynamic programming over
the teacher's points, as in GITS: Chen et al., "On the Trajectory Regularity of ODE-based
Diffusion Sampling", ICML 2024) puts the steps where this model's trajectories bend. It is a
start for the fit, scored like a built-in schedule; it is never the floor a fit is measured
against.
"""

from __future__ import annotations

import math

import torch

from ..learned_samplers import half_log_snr


class StepCosts:
    """The teacher-forced one-step costs between the teacher's grid points, and the teacher's
    trajectories of a few training samples.

    rows: bool [M], which of the teacher's samples count (the training ones: validation
    samples must not shape a candidate they then judge). ``on_step(chunk, i, x, denoised)`` is
    called by the teacher for each of its points i of a batch ``chunk`` (a slice of its
    samples), with the state x [B, ...] at sigma_i and the denoised value there, and once more
    at the end with the result and denoised None. keep: how many of the ``rows`` (the first
    ones) keep their states and denoised values at every point, on the CPU in float32, for
    ``states_at`` (the coefficient fit's targets); convention: the sigmas' ("ve" or "flow").
    Memory: one batch's states and denoised values at every point, on their device, and the
    kept samples' (keep x points x 2 x the values of a sample x 4 bytes).
    """

    def __init__(self, rows: torch.Tensor, keep: int = 0, convention: str = "ve"):
        self.rows = rows.bool().cpu()
        self.kept_rows = self.rows.nonzero().flatten()[:keep]
        self._kept_set = set(self.kept_rows.tolist())
        self.convention = convention
        self.sigmas = []
        self.sums = None
        self.counts = None
        self._states, self._denoised = [], []
        self._kept = {}  # point -> {row: (x, denoised)}

    def on_step(self, chunk: slice, i: int, sigma: float, x: torch.Tensor, denoised):
        if i == 0:
            self._states, self._denoised = [], []
        if len(self.sigmas) <= i:
            self.sigmas.append(float(sigma))
        if len(self.kept_rows):
            self._keep(chunk, i, x, denoised)
        keep = self.rows[chunk].to(x.device)
        if not bool(keep.any()):
            return
        x = x[keep].detach().float()  # float32: fine for a distance, and every device has it
        if self.sums is not None and len(self._states) == i and i > 0:
            for j, (earlier, d) in enumerate(zip(self._states, self._denoised)):
                ratio = float(sigma) / self.sigmas[j]
                landed = ratio * earlier + (1 - ratio) * d
                error = (landed - x).flatten(1).pow(2).mean(1).sqrt()
                self.sums[j, i] += float(error.sum())
                self.counts[j, i] += len(error)
        if denoised is not None:
            self._states.append(x)
            self._denoised.append(denoised[keep].detach().float())

    def _keep(self, chunk: slice, i: int, x: torch.Tensor, denoised):
        for offset, row in enumerate(range(chunk.start, chunk.stop)):
            if row in self._kept_set:
                d = None if denoised is None else denoised[offset].detach().float().cpu()
                self._kept.setdefault(i, {})[row] = (x[offset].detach().float().cpu(), d)

    def start(self, points: int):
        """Called by the teacher before its level of ``points`` grid points (the last one 0)."""
        self.sigmas = []
        self.sums = torch.zeros(points, points, dtype=torch.float64)
        self.counts = torch.zeros(points, points, dtype=torch.float64)
        self._kept = {}

    def states_at(self, sigma: float, rows) -> torch.Tensor:
        """The teacher's states [len(rows), ...] at host sigma ``sigma`` of the kept samples
        ``rows`` (indices into the teacher's samples): exact at its points and at 0, between
        two points a > sigma > b the blend, linear in half-log-SNR, of one DDIM step from a
        forward and one from b backward (exact at both ends; first order in between, far
        below a few-step solver's errors at the teacher's spacing)."""
        rows = [int(r) for r in rows]
        points = torch.tensor(self.sigmas, dtype=torch.float64)

        def at(point):
            return torch.stack([self._kept[point][row][0] for row in rows])

        def denoised(point):
            return torch.stack([self._kept[point][row][1] for row in rows])

        if sigma <= 0:
            return at(len(points) - 1)
        same = ((points - sigma).abs() <= 1e-6 * sigma).nonzero().flatten()
        if len(same):
            return at(int(same[0]))
        above = int((points > sigma).nonzero().flatten()[-1])
        below = above + 1
        if below >= len(points) or float(points[below]) <= 0:
            raise ValueError(f"sigma {sigma:g} is below the teacher's last positive point")
        a, b = float(points[above]), float(points[below])
        forward = sigma / a * at(above) + (1 - sigma / a) * denoised(above)
        backward = sigma / b * at(below) + (1 - sigma / b) * denoised(below)
        lam = half_log_snr(torch.tensor([a, sigma, b], dtype=torch.float64), self.convention)
        w = float((lam[1] - lam[0]) / (lam[2] - lam[0]))
        return (1 - w) * forward + w * backward

    def costs(self) -> torch.Tensor:
        """[P, P] mean cost of a step from point i to point j > i (inf where not measured)."""
        if self.sums is None:
            return torch.zeros(0, 0, dtype=torch.float64)
        mean = self.sums / self.counts.clamp(min=1)
        return torch.where(self.counts > 0, mean, torch.full_like(mean, math.inf))

    def grid(self, nfe: int) -> torch.Tensor:
        """The ``nfe``-step grid [nfe + 1] (host sigmas, from sigma_max to 0) of least total
        cost among the teacher's points; empty where the teacher has too few points or no
        costs (the schedule is then no candidate)."""
        costs = self.costs()
        points = costs.shape[0]
        if points < 2 or nfe > points - 1 or not torch.isfinite(costs[0, 1:]).any():
            return torch.zeros(0, dtype=torch.float64)
        return torch.tensor([self.sigmas[k] for k in cheapest_path(costs, nfe)], dtype=torch.float64)


def cheapest_path(costs: torch.Tensor, steps: int) -> list:
    """Indices 0 = k_0 < k_1 < ... < k_steps = P - 1 minimising sum costs[k_i, k_{i+1}] (costs
    [P, P], inf where a step is not allowed): dynamic programming, O(steps x P^2)."""
    points = costs.shape[0]
    best = torch.full((steps + 1, points), math.inf, dtype=torch.float64)
    best[0, 0] = 0.0
    came_from = torch.zeros((steps + 1, points), dtype=torch.long)
    allowed = torch.triu(torch.ones(points, points, dtype=torch.bool), diagonal=1)
    step_costs = torch.where(allowed, costs.double(), torch.full_like(costs.double(), math.inf))
    for k in range(1, steps + 1):
        best[k], came_from[k] = (best[k - 1][:, None] + step_costs).min(0)
    path = [points - 1]
    for k in range(steps, 0, -1):
        path.append(int(came_from[k, path[-1]]))
    return path[::-1]


__all__ = ["StepCosts", "cheapest_path"]
