"""CMA-ES (Hansen's ``cma`` package) as ask/tell, in the coordinate box.

Starts at the uniform mixture with step size ``sigma0`` (default 0.3 of the box width) and the
package's default population ``4 + 3 ln N``, capped at ``batch`` so that the budget is met within
one swarm iteration. When the package's own stopping rules fire (a flat utility makes them fire
early) it restarts with a fresh seed from the best point seen, so every method spends the same
budget. Points are evaluated at ``space.weights`` of their coordinates. ``cma`` draws from numpy's
global random state, so that state is kept private (:class:`~.base.GlobalNumpyRandom`).
The optional dependency is imported lazily: ``pip install logit_swarm[search]``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from .base import (
    GeneratorSearcher,
    GlobalNumpyRandom,
    MethodInfo,
    MethodUnavailable,
    SearchContext,
    Steps,
    losses,
    option,
    register_method,
    require_budget,
)


def import_cma():
    """The ``cma`` module, or :class:`MethodUnavailable` saying how to install it."""
    try:
        import cma  # optional dependency (extra "search")
    except ImportError:
        raise MethodUnavailable("CMA-ES needs the 'cma' package: pip install 'logit_swarm[search]'") from None
    return cma


def cma_steps(ctx: SearchContext) -> Steps:
    """CMA-ES generations (with restarts) until the next would exceed the budget."""
    cma = import_cma()
    budget = require_budget(ctx, "CMA-ES", 2)
    n, lo, hi = ctx.n_experts, ctx.space.low, ctx.space.high
    pop = int(option(ctx, "popsize", min(4 + int(3 * math.log(n)), ctx.batch, budget)))
    sigma0 = float(option(ctx, "sigma0", 0.3)) * (hi - lo)
    rng = GlobalNumpyRandom(ctx.seed)
    x0, best_x, best_f, used, restart = ctx.space.center(n), None, math.inf, 0, 0
    while used + pop <= budget:
        opts = {"seed": ctx.seed * 1000 + restart + 1, "bounds": [lo, hi], "popsize": pop, "verbose": -9}
        with rng, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            es = cma.CMAEvolutionStrategy(x0, sigma0, opts)
        while used + pop <= budget:
            with rng:
                X = np.array(es.ask(), dtype=np.float64)
            f = losses((yield X.copy()))
            used += pop
            i = int(np.argmin(f))
            if f[i] < best_f:
                best_f, best_x = float(f[i]), X[i].copy()
            with rng, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                es.tell(list(X), [float(v) for v in f])
                stop = es.stop()
            if stop:
                break
        restart += 1
        x0 = best_x if best_x is not None else x0


register_method(MethodInfo(
    name="cma_es", label="CMA-ES", family="cma_es", kind="search", budgeted=True,
    make=lambda ctx: GeneratorSearcher(cma_steps(ctx), ctx.n_experts),
    mapping="Not one of the paper's baselines: the standard evolution strategy for a few continuous "
            "coefficients (EvolMerge-style merging uses CMA-ES)."))
