"""Greedy ensemble: the mixing-space analogue of Greedy Soup (Wortsman et al. 2022)."""

from __future__ import annotations

import numpy as np

from .._common import rank_scores
from .base import GeneratorSearcher, MethodInfo, SearchContext, Steps, option, register_method


def greedy_steps(ctx: SearchContext) -> Steps:
    """Rank experts by their own dev utility (one ask of N one-hots); from the best, try each other
    expert in rank order, keeping it if the uniform mixture of the chosen set plus it does not
    lower the utility (``accept_ties``, default True as Greedy Soup) -- 2N - 1 evaluations.
    The driver reports the best row evaluated (the first among equal utilities)."""
    n = ctx.n_experts
    accept_ties = bool(option(ctx, "accept_ties", True))
    singles = rank_scores((yield np.eye(n)))
    order = [int(i) for i in np.argsort(-singles, kind="stable")]
    chosen, current = [order[0]], singles[order[0]]
    for cand in order[1:]:
        w = np.zeros(n)
        w[chosen + [cand]] = 1.0 / (len(chosen) + 1)
        score = float(rank_scores((yield w[None, :]))[0])
        if score > current or (accept_ties and score == current and np.isfinite(score)):
            chosen.append(cand)
            current = score


register_method(MethodInfo(
    name="greedy", label="greedy ensemble", family="greedy", kind="search",
    make=lambda ctx: GeneratorSearcher(greedy_steps(ctx), ctx.n_experts),
    mapping="Greedy Soup: experts are added in order of their own utility while the uniform mixture "
            "of the chosen ones does not get worse."))
