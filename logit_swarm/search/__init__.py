"""Searching mixing weights: Model Swarms PSO (ask/tell), baselines, and the search driver.

The search never touches a model. It sees weight vectors (rows of W, one entry per expert) and a
utility ``evaluate(W (k, N)) -> (k,)``, higher is better, NaN for a failed particle.

- :mod:`.pso`: :class:`SwarmConfig`, :class:`SwarmState`, the pure state transitions and the
  :class:`PSO` ask/tell wrapper.
- :mod:`.baselines`: best single expert, uniform, greedy ensemble, EM on cached likelihoods,
  differential evolution, Nelder-Mead/Powell, Dirichlet random search.
- :mod:`.driver`: :func:`run_search` (progress, history, atomic checkpoints, exact resume) and
  :func:`run_grid` (several seeded settings, best on dev).
- :mod:`.api`: :func:`swarm_search` (experts + task -> :class:`SwarmResult` with a recipe-ready
  ensemble) and :func:`compare` (the search and every baseline, dev and test). These are the only
  parts that touch models and tasks, and they import them lazily.
- :mod:`.model_baselines`: prediction merge, PackLLM and EM on task targets (they need outputs).
- :mod:`.plots`: PNG plots of a search's history (optional, needs matplotlib).
- :mod:`.memo`: experts' next-token distributions remembered across iterations (generated-text
  utilities); ``swarm_search`` turns it on for tasks that decode.
"""

from .api import CompareResult, SwarmResult, compare, load_search_config, swarm_search
from .baselines import (
    BASELINES,
    BaselineResult,
    best_single,
    differential_evolution_search,
    em_baseline,
    em_weights,
    greedy_ensemble,
    local_search,
    mixture_loglik,
    random_search,
    run_baseline,
    uniform_mixture,
)
from .driver import GridResult, GridRun, SearchResult, expand_grid, run_grid, run_search, sample_configs
from .pso import PSO, Best, SwarmConfig, SwarmState

__all__ = [
    "swarm_search",
    "SwarmResult",
    "compare",
    "CompareResult",
    "load_search_config",
    "PSO",
    "Best",
    "SwarmConfig",
    "SwarmState",
    "SearchResult",
    "GridRun",
    "GridResult",
    "run_search",
    "run_grid",
    "expand_grid",
    "sample_configs",
    "BaselineResult",
    "BASELINES",
    "run_baseline",
    "best_single",
    "uniform_mixture",
    "greedy_ensemble",
    "em_weights",
    "mixture_loglik",
    "em_baseline",
    "differential_evolution_search",
    "local_search",
    "random_search",
]
