"""Tasks: utilities that turn a pool of experts and a weight matrix into one score per particle.

::

    import logit_swarm as ls
    task = ls.load_task("mmlu", data_dir="../shared/data", limit=50)   # or a spec .yaml/.json
    u = task.evaluate(experts, W)                 # W: [particles, experts] -> u: [particles]
    r = task.evaluate_detailed(experts, W)        # r.utility, r.parts, r.per_example, r.outputs

Kinds (``kind:`` in a spec): ``multiple_choice`` (generate + the paper's parser, or
log-likelihood per byte / raw), ``exact_match`` (registered matchers: paper GSM8K, last number,
yes/no, substring...), ``likelihood`` (−bits per byte), ``reward`` and ``toxicity`` (a local
classifier or a callable), ``judge`` (a model of the pool rates 1-10), ``abstain`` (AbstainQA's
effective reliability) and ``multi`` (harmonic or weighted mean of tasks).

Named tasks: the Model Swarms paper's tasks (:mod:`.paper`) when their files are in the data
directory, and synthetic tasks over the zoo's corpora (:mod:`.zoo`). ``list_tasks()`` names
them all. Test splits are refused unless ``allow_test=True``.
"""

from __future__ import annotations

# Importing these modules registers the task kinds, the paper's tasks and the zoo's tasks.
from . import abstain, exact_match, judge, likelihood, multi, multiple_choice, paper, reward, zoo  # noqa: F401
from .base import KINDS, EvalResult, Task, TestSplitError, check_split, is_test_split, register_kind
from .metrics import bits_per_byte, choice_credit, effective_reliability, harmonic_mean, weighted_mean
from .multiple_choice import MC_SCORINGS
from .parsing import MATCHERS
from .records import ENV_DATA, GENERATORS, DataSource, read_records
from .registry import Registry, UnknownNameError
from .spec import TASKS, build_task, list_tasks, load_task, read_spec_file, register_task

__all__ = [
    "ENV_DATA", "GENERATORS", "KINDS", "MATCHERS", "MC_SCORINGS", "TASKS",
    "DataSource", "EvalResult", "Registry", "Task", "TestSplitError", "UnknownNameError",
    "bits_per_byte", "build_task", "check_split", "choice_credit", "effective_reliability",
    "harmonic_mean", "is_test_split", "list_tasks", "load_task", "read_records", "read_spec_file",
    "register_kind", "register_task", "weighted_mean",
]
