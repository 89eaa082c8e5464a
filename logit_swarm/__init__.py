"""logit_swarm: mix the next-token distributions of heterogeneous LLM experts, and search the
mixing weights with a particle swarm (the token-probability variant of Model Swarms).

Public names (DESIGN.md §4)::

    e = ls.load_expert(path, device="cpu", dtype=None)
    ens = ls.Ensemble([e1, e2], weights=[0.5, 0.5], mode="probs")   # or "logits"
    ens.generate(prompts, max_new_tokens=32, temperature=0.0, seed=None, stop=None)
    ens.logprob(contexts, continuations)
    ens.save("recipe.json"); ls.Ensemble.load("recipe.json")
"""

from .ensemble import Ensemble, choose_unit, load_expert
from .score import ScoreTable, build_table

__all__ = ["Ensemble", "ScoreTable", "build_table", "choose_unit", "load_expert"]
__version__ = "0.1.0"

# Optional parts are exported when present (they are added by later work).
try:  # pragma: no cover - depends on which parts exist
    from .tasks import load_task  # noqa: F401

    __all__.append("load_task")
except ImportError:
    pass
try:  # pragma: no cover
    from .search import swarm_search  # noqa: F401

    __all__.append("swarm_search")
except ImportError:
    pass
