"""Differential evolution (DE/rand/1/bin, Storn & Price 1997) as ask/tell, in the coordinate box.

The EvolMerge analogue (evolutionary search over merge coefficients). A whole generation is one
ask. The population (``batch``, one swarm iteration, so the budget is met within one swarm
iteration) starts with the N one-hot experts and uniform random points of the box; each
generation, trial ``i`` mutates three other members, ``v = x_r1 + F (x_r2 - x_r3)`` with the
dither ``F ~ U(0.5, 1)`` per generation (scipy's default), crosses over binomially with
``CR = 0.7`` (one coordinate always from ``v``), is clipped to the box, and replaces member i
if its utility is at least as high. Points are evaluated at ``space.weights`` of their
coordinates (the simplex projection in mode "probs").
"""

from __future__ import annotations

import numpy as np

from .base import GeneratorSearcher, MethodInfo, SearchContext, Steps, option, register_method, require_budget


def _trials(pop: np.ndarray, rng: np.random.Generator, cr: float, lo: float, hi: float) -> np.ndarray:
    m, n = pop.shape
    f = rng.uniform(0.5, 1.0)
    trials = np.empty_like(pop)
    for i in range(m):
        others = [j for j in range(m) if j != i]
        r1, r2, r3 = rng.choice(others, size=3, replace=False)
        mutant = pop[r1] + f * (pop[r2] - pop[r3])
        cross = rng.random(n) < cr
        cross[rng.integers(n)] = True
        trials[i] = np.clip(np.where(cross, mutant, pop[i]), lo, hi)
    return trials


def de_steps(ctx: SearchContext) -> Steps:
    """Generations until the next one would exceed the budget (options: population, cr)."""
    budget = require_budget(ctx, "differential evolution", 4)
    n, lo, hi = ctx.n_experts, ctx.space.low, ctx.space.high
    m = int(option(ctx, "population", min(ctx.batch, budget)))
    cr = float(option(ctx, "cr", 0.7))
    if m < 4 or m > budget:
        raise ValueError(f"differential evolution: population must be in [4, budget={budget}], got {m}")
    rng = np.random.default_rng(ctx.seed)
    pop = rng.uniform(lo, hi, size=(m, n))
    k = min(n, m)
    pop[:k] = np.clip(np.eye(n)[:k], lo, hi)
    fit = np.nan_to_num(np.asarray((yield pop.copy()), dtype=np.float64), nan=-np.inf, posinf=-np.inf)
    used = m
    while used + m <= budget:
        trials = _trials(pop, rng, cr, lo, hi)
        u = np.nan_to_num(np.asarray((yield trials.copy()), dtype=np.float64), nan=-np.inf, posinf=-np.inf)
        better = u >= fit
        pop = np.where(better[:, None], trials, pop)
        fit = np.where(better, u, fit)
        used += m


register_method(MethodInfo(
    name="differential_evolution", label="differential evolution", family="de", kind="search", budgeted=True,
    make=lambda ctx: GeneratorSearcher(de_steps(ctx), ctx.n_experts),
    mapping="EvolMerge: evolutionary search of merge coefficients becomes DE over mixing weights."))
