"""The space every search method moves in: what a coordinate vector means as a mixture.

One home for the rule, so that every method (PSO, random search, DE, Nelder-Mead, CMA-ES, NGOpt)
evaluates the same kind of point and the history records the mixture each row was scored with.

mode ``"probs"`` -- the probability simplex
    A mixture is ``w >= 0, sum(w) = 1``. Coordinates ``x`` in R^N map to the mixture
    ``project_simplex(x)``, the Euclidean projection onto the simplex (Duchi et al. 2008,
    "Efficient projections onto the l1-ball"): the nearest mixture to ``x``. Why this and not the
    mixing rule's own ``max(x, 0) / sum(max(x, 0))``: the projection is the identity on the
    simplex (so a point that already is a mixture is evaluated as itself, and one-hot experts stay
    themselves), it is continuous, and it keeps a method's notion of distance: two coordinate
    vectors close to each other give close mixtures. Clip-and-renormalise is not a projection
    (``(2, -1, 0.5)`` -> ``(0.8, 0, 0.2)``, far from the nearest mixture ``(1, 0, 0)``...) and let
    the unbounded swarm drift to |w| ~ 100 where most particles were one or two experts.
    Softmax coordinates were not chosen because one-hot experts (the paper's starting swarm)
    are at infinity there. The swarm keeps its positions *on* the simplex (projected after every
    move); box-based optimisers (DE, Nelder-Mead, CMA-ES, NGOpt) search ``[0, 1]^N`` and are
    evaluated at the projection of their point.

mode ``"logits"`` -- the box ``[-1, 1]^N``
    Log-linear weights may be negative (anti-experts) and need not sum to 1; coordinates are
    clipped to ``[LOGIT_LOW, LOGIT_HIGH] = [-1, 1]`` per expert. One-hot experts and every
    sum-to-one combination of two of them with coefficients in [0, 2] (the paper's crossover)
    fit after clipping; larger magnitudes only sharpen or flatten the product of experts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from logit_swarm.mixing import check_mode

__all__ = ["MixingSpace", "project_simplex", "space_for_mode", "LOGIT_LOW", "LOGIT_HIGH"]

#: The box of mode "logits".
LOGIT_LOW, LOGIT_HIGH = -1.0, 1.0


def project_simplex(x: np.ndarray) -> np.ndarray:
    """Euclidean projection of each row of ``x`` onto the probability simplex.

    The sort-based algorithm: with ``u`` the row sorted in decreasing order and
    ``rho = max{j : u_j - (sum_{i<=j} u_i - 1) / j > 0}``, the projection is
    ``max(x - theta, 0)`` with ``theta = (sum_{i<=rho} u_i - 1) / rho``.

    Args:
        x: (N,) or (k, N) finite coordinates.

    Returns:
        Same shape, every row >= 0 and summing to 1 (exactly up to one float rounding, then
        renormalised).
    """
    a = np.asarray(x, dtype=np.float64)
    rows = np.atleast_2d(a)
    if not np.isfinite(rows).all():
        raise ValueError("cannot project non-finite coordinates onto the simplex")
    n = rows.shape[1]
    u = -np.sort(-rows, axis=1)
    css = np.cumsum(u, axis=1) - 1.0
    j = np.arange(1, n + 1)
    cond = u - css / j > 0
    rho = n - np.argmax(cond[:, ::-1], axis=1)  # last index where cond holds (1-based)
    theta = css[np.arange(len(rows)), rho - 1] / rho
    w = np.maximum(rows - theta[:, None], 0.0)
    w = w / w.sum(axis=1, keepdims=True)
    return w.reshape(a.shape)


@dataclass(frozen=True)
class MixingSpace:
    """Coordinates -> mixtures for one mixing mode (see the module docstring).

    Attributes:
        mode: "probs" (simplex) or "logits" (box).
        low, high: the coordinate box of box-based optimisers.
    """

    mode: str
    low: float
    high: float

    @property
    def name(self) -> str:
        """"simplex" or "box"."""
        return "simplex" if self.mode == "probs" else "box"

    def weights(self, x: np.ndarray) -> np.ndarray:
        """The mixture(s) that coordinates ``x`` ((N,) or (k, N)) stand for."""
        x = np.asarray(x, dtype=np.float64)
        if self.mode == "probs":
            return project_simplex(x)
        return np.clip(x, self.low, self.high)

    def sample(self, rng: np.random.Generator, k: int, n: int, alpha: float = 1.0) -> np.ndarray:
        """``k`` random mixtures: Dirichlet(alpha) on the simplex, uniform in the box."""
        if self.mode == "probs":
            return rng.dirichlet(np.full(n, float(alpha)), size=k)
        return rng.uniform(self.low, self.high, size=(k, n))

    def center(self, n: int) -> np.ndarray:
        """The uniform mixture 1/N (inside both spaces); where local optimisers start."""
        return np.full(n, 1.0 / n)


def space_for_mode(mode: str) -> MixingSpace:
    """The space of mixing mode ``mode``: simplex for "probs", ``[-1, 1]^N`` for "logits"."""
    check_mode(mode)
    if mode == "probs":
        return MixingSpace("probs", 0.0, 1.0)
    return MixingSpace("logits", LOGIT_LOW, LOGIT_HIGH)
