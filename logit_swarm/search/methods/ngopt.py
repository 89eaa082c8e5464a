"""NGOpt (``nevergrad``'s algorithm selector, the optimiser LoraHub uses) as ask/tell, in the box.

The parametrisation is an array in the coordinate box starting at the uniform mixture, seeded
through its ``random_state``; NGOpt is told the budget and ``num_workers`` (default 1, LoraHub's
setting: one point per ask). Points are evaluated at ``space.weights`` of their coordinates.
Numpy's global random state, which some of nevergrad's sub-optimisers draw from, is kept private.
The optional dependency is imported lazily: ``pip install logit_swarm[search]``.
"""

from __future__ import annotations

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


def import_nevergrad():
    """The ``nevergrad`` module, or :class:`MethodUnavailable` saying how to install it."""
    try:
        import nevergrad  # optional dependency (extra "search"); slow to import, so only when used
        from nevergrad.optimization import metamodel, optimizerlib
    except ImportError:
        raise MethodUnavailable("NGOpt needs the 'nevergrad' package: pip install 'logit_swarm[search]'") from None
    _patch_metamodel(optimizerlib, metamodel)
    return nevergrad


def _patch_metamodel(optimizerlib, metamodel) -> None:
    """Compatibility with numpy >= 2.4: nevergrad 1.0.12's surrogate step (``learn_on_k_best``)
    calls ``float()`` on a one-element array, which numpy 2.4 refuses with a TypeError. Turn that
    TypeError into nevergrad's own ``MetaModelFailure``, on which its optimisers already fall back
    to their base algorithm (as for an unlearnable objective). Without it NGOpt crashes whenever
    its surrogate model fits the utility well."""
    original = optimizerlib.learn_on_k_best
    if getattr(original, "_logit_swarm_patch", False):
        return

    def learn_on_k_best(*args, **kwargs):
        try:
            return original(*args, **kwargs)
        except TypeError as exc:
            raise metamodel.MetaModelFailure(f"surrogate failed under this numpy: {exc}") from None

    learn_on_k_best._logit_swarm_patch = True
    optimizerlib.learn_on_k_best = learn_on_k_best


def ngopt_steps(ctx: SearchContext) -> Steps:
    """``num_workers`` candidates per ask until the budget is spent."""
    ng = import_nevergrad()
    budget = require_budget(ctx, "NGOpt")
    workers = int(option(ctx, "num_workers", 1))
    rng = GlobalNumpyRandom(ctx.seed)
    with rng, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        param = ng.p.Array(init=ctx.space.center(ctx.n_experts), lower=ctx.space.low, upper=ctx.space.high)
        param.random_state = np.random.RandomState(ctx.seed)
        opt = ng.optimizers.NGOpt(parametrization=param, budget=budget, num_workers=workers)
    used = 0
    while used < budget:
        k = min(workers, budget - used)
        with rng, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cands = [opt.ask() for _ in range(k)]
        f = losses((yield np.array([c.value for c in cands], dtype=np.float64)))
        with rng, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for c, v in zip(cands, f):
                opt.tell(c, float(v))
        used += k


register_method(MethodInfo(
    name="ngopt", label="NGOpt (nevergrad)", family="ngopt", kind="search", budgeted=True,
    make=lambda ctx: GeneratorSearcher(ngopt_steps(ctx), ctx.n_experts),
    mapping="LoraHub: gradient-free search of the LoRA mixing coefficients with nevergrad's NGOpt "
            "becomes the same search over the experts' mixing weights."))
