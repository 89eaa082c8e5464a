"""Nelder-Mead simplex search as ask/tell, in the coordinate box (a gradient-free local search).

Standard coefficients (reflection 1, expansion 2, contraction 0.5, shrink 0.5). It starts from the
uniform mixture and the N points half-way from it to each one-hot expert (a small default simplex
cannot see a change in an accuracy-like utility); all N + 1 vertices are one ask, a shrink is one
ask, every other step asks one point. Points are clipped to the box and evaluated at
``space.weights`` of their coordinates. When the simplex has collapsed (all vertices within
1e-9) it restarts around the best vertex, so the budget is used.
"""

from __future__ import annotations

import numpy as np

from .base import GeneratorSearcher, MethodInfo, SearchContext, Steps, losses, register_method, require_budget


def _initial_simplex(center: np.ndarray, lo: float, hi: float, scale: float) -> np.ndarray:
    n = len(center)
    return np.clip(np.vstack([center, center + scale * (np.eye(n) - center)]), lo, hi)


def _one(x: np.ndarray) -> np.ndarray:
    return x[None, :].copy()


def nm_steps(ctx: SearchContext) -> Steps:
    """Nelder-Mead until the budget is spent (the driver stops an ask that would exceed it)."""
    require_budget(ctx, "Nelder-Mead")
    lo, hi = ctx.space.low, ctx.space.high
    clip = lambda x: np.clip(x, lo, hi)
    simplex = _initial_simplex(ctx.space.center(ctx.n_experts), lo, hi, 0.5)
    f = losses((yield simplex.copy()))
    while True:
        order = np.argsort(f, kind="stable")
        simplex, f = simplex[order], f[order]
        if np.max(np.abs(simplex - simplex[0])) < 1e-9:
            simplex = _initial_simplex(simplex[0], lo, hi, 0.25)
            f = losses((yield simplex.copy()))
            continue
        centroid = simplex[:-1].mean(axis=0)
        xr = clip(centroid + (centroid - simplex[-1]))
        fr = losses((yield _one(xr)))[0]
        if fr < f[0]:
            xe = clip(centroid + 2.0 * (centroid - simplex[-1]))
            fe = losses((yield _one(xe)))[0]
            simplex[-1], f[-1] = (xe, fe) if fe < fr else (xr, fr)
            continue
        if fr < f[-2]:
            simplex[-1], f[-1] = xr, fr
            continue
        outside = fr < f[-1]
        xc = clip(centroid + 0.5 * ((xr if outside else simplex[-1]) - centroid))
        fc = losses((yield _one(xc)))[0]
        if fc < (fr if outside else f[-1]):
            simplex[-1], f[-1] = xc, fc
            continue
        simplex[1:] = clip(simplex[0] + 0.5 * (simplex[1:] - simplex[0]))
        f[1:] = losses((yield simplex[1:].copy()))


register_method(MethodInfo(
    name="nelder_mead", label="local search (Nelder-Mead)", family="nelder_mead", kind="search", budgeted=True,
    make=lambda ctx: GeneratorSearcher(nm_steps(ctx), ctx.n_experts),
    mapping="A local gradient-free search from the uniform mixture (what LoraHub did before NGOpt)."))
