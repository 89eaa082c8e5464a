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
from .windows import TruncationWarning, truncation_run

__all__ = ["Ensemble", "ScoreTable", "TruncationWarning", "build_table", "choose_unit", "load_expert",
           "truncation_run"]
__version__ = "0.1.0"

from .search import swarm_search  # noqa: E402
from .tasks import load_task  # noqa: E402

__all__ += ["load_task", "swarm_search"]
