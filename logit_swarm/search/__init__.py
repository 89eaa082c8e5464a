"""Searching mixing weights: Model Swarms and every method it is compared with, one interface.

The search never touches a model. It sees weight vectors (rows of W, one entry per expert) and a
utility ``evaluate(W (k, N)) -> (k,)``, higher is better, NaN for a failed particle.

- :mod:`.space`: what a coordinate vector means as a mixture (simplex for mode "probs", a box
  for "logits"); the one home of that rule.
- :mod:`.methods`: every method behind one interface and one registry (:data:`METHODS`), one
  file per family: the swarm (``pso.py``), static baselines, greedy, EM, DE, Nelder-Mead, random
  search, CMA-ES, NGOpt, PackLLM, prediction merge.
- :mod:`.driver`: :func:`run_method`, the one loop every search method runs through (budget,
  history with the mixture of every evaluated row, atomic checkpoints with the task's state,
  exact resume by replay).
- :mod:`.api`: :func:`swarm_search` (experts + task -> :class:`SwarmResult` with a recipe-ready
  ensemble), search settings (:func:`load_search_config`), the task utility.
- :mod:`.compare`: :func:`compare`, a loop over the registry at equal budget, dev and test,
  per-question results.
- :mod:`.memo`: experts' next-token distributions remembered across iterations.
- :mod:`.plots`: PNG plots of a search's history (optional, needs matplotlib).
"""

from .api import SearchPlan, SwarmResult, TaskUtility, load_search_config, swarm_search
from .compare import CompareResult, MethodRow, compare, default_methods
from .driver import MethodResult, run_method
from .methods import METHODS, MethodInfo, MethodUnavailable, SearchContext, Searcher
from .methods.pso import PSO, Best, SwarmConfig, SwarmState, expand_grid, sample_configs
from .space import MixingSpace, project_simplex, space_for_mode

__all__ = [
    "swarm_search",
    "SwarmResult",
    "SearchPlan",
    "TaskUtility",
    "load_search_config",
    "compare",
    "CompareResult",
    "MethodRow",
    "default_methods",
    "run_method",
    "MethodResult",
    "METHODS",
    "MethodInfo",
    "MethodUnavailable",
    "SearchContext",
    "Searcher",
    "PSO",
    "Best",
    "SwarmConfig",
    "SwarmState",
    "expand_grid",
    "sample_configs",
    "MixingSpace",
    "project_simplex",
    "space_for_mode",
]
