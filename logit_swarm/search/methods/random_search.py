"""Random search: points drawn from the mixing space (Dirichlet on the simplex, uniform in the box)."""

from __future__ import annotations

import numpy as np

from .base import GeneratorSearcher, MethodInfo, SearchContext, Steps, option, register_method, require_budget


def random_steps(ctx: SearchContext) -> Steps:
    """``budget`` points, ``batch`` per ask (one swarm iteration), from the method's own Generator.
    Option ``alpha``: the Dirichlet concentration (1 = uniform on the simplex)."""
    budget = require_budget(ctx, "random search")
    alpha = float(option(ctx, "alpha", 1.0))
    if not alpha > 0:
        raise ValueError(f"random search: alpha must be > 0, got {alpha}")
    rng = np.random.default_rng(ctx.seed)
    done = 0
    while done < budget:
        k = min(ctx.batch, budget - done)
        yield ctx.space.sample(rng, k, ctx.n_experts, alpha)
        done += k


register_method(MethodInfo(
    name="random", label="random search", family="random_search", kind="search", budgeted=True,
    make=lambda ctx: GeneratorSearcher(random_steps(ctx), ctx.n_experts),
    mapping="Not a paper baseline: the reference point any optimiser must beat at equal budget."))
