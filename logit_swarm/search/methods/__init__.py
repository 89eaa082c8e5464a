"""Every search method behind one interface (:mod:`.base`) and one registry (:data:`METHODS`).

One file per family; importing this package registers them all (table order: ``method_names()``):

=========================  ===================  =========================================================
name                       file                 what
=========================  ===================  =========================================================
``swarm``                  ``pso.py``           Model Swarms PSO (one run or a grid of runs)
``swarm_restarts``         ``pso.py``           the swarm with random restarts, run to the budget
``best_single``            ``static.py``        best one-hot expert on dev (N evaluations)
``uniform``                ``static.py``        uniform mixture (1 evaluation)
``prediction_merge``       ``vote.py``          plurality vote of the experts' answers (per question)
``greedy``                 ``greedy.py``        greedy ensemble, the Greedy Soup analogue (2N - 1)
``packllm``                ``packllm.py``       PackLLM, per-prompt weights (per question)
``em``                     ``em.py``            EM on the dev targets' likelihood (1 evaluation)
``differential_evolution`` ``de.py``            DE/rand/1/bin in the box (budget)
``nelder_mead``            ``nelder_mead.py``   Nelder-Mead from the uniform mixture (budget)
``random``                 ``random_search.py`` Dirichlet / uniform random points (budget)
``cma_es``                 ``cma_es.py``        CMA-ES via ``cma`` (budget; optional package)
``ngopt``                  ``ngopt.py``         NGOpt via ``nevergrad`` (budget; optional package)
``slerp``                  ``merge.py``         SLERP of two same-architecture experts' weights (per question)
=========================  ===================  =========================================================
"""

from . import (
    cma_es,  # noqa: F401
    de,  # noqa: F401
    em,  # noqa: F401
    greedy,  # noqa: F401
    merge,  # noqa: F401
    nelder_mead,  # noqa: F401
    ngopt,  # noqa: F401
    packllm,  # noqa: F401
    pso,  # noqa: F401 - table order is base.TABLE_ORDER, not import order
    random_search,  # noqa: F401
    static,  # noqa: F401
    vote,  # noqa: F401
)
from .base import (
    METHODS,
    GeneratorSearcher,
    MethodInfo,
    MethodUnavailable,
    OutputMethod,
    OutputResult,
    SearchContext,
    Searcher,
    method_names,
    register_method,
)

__all__ = ["METHODS", "MethodInfo", "MethodUnavailable", "SearchContext", "Searcher", "OutputMethod",
           "OutputResult", "GeneratorSearcher", "register_method", "method_names"]
