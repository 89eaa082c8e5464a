"""Static baselines: the best single expert and the uniform mixture (fixed evaluation counts)."""

from __future__ import annotations

import numpy as np

from .base import GeneratorSearcher, MethodInfo, SearchContext, Steps, register_method


def best_single_steps(ctx: SearchContext) -> Steps:
    """All N one-hot experts in one ask; the driver keeps the best ("Best Single")."""
    yield np.eye(ctx.n_experts)


def uniform_steps(ctx: SearchContext) -> Steps:
    """The uniform mixture 1/N, one evaluation ("Uniform Soup" in mixing space)."""
    yield ctx.space.center(ctx.n_experts)[None, :]


register_method(MethodInfo(
    name="best_single", label="best single expert", family="static", kind="search",
    make=lambda ctx: GeneratorSearcher(best_single_steps(ctx), ctx.n_experts),
    mapping="Best Single: the expert with the best dev utility, as a one-hot mixture."))
register_method(MethodInfo(
    name="uniform", label="uniform mixture", family="static", kind="search",
    make=lambda ctx: GeneratorSearcher(uniform_steps(ctx), ctx.n_experts),
    mapping="Uniform Soup: averaging the experts' weights becomes averaging their distributions (1/N each)."))
