"""Several tasks as one utility: the harmonic mean (the paper's multi-task domains) or a
weighted mean, with every part reported.

Spec::

    kind: multi
    tasks: [hearsay, citation_prediction_classification]   # names, spec paths or inline specs
    aggregate: harmonic        # harmonic | mean
    weights: [1, 1]            # mean only
    limit: 50                  # forwarded to every part, as are scoring and decoding options

A name is looked up in the task registry (with the multi task's data directory), a path is
read relative to this spec's folder. Options such as ``limit``, ``scoring`` or
``max_new_tokens`` given to the multi task are forwarded to each part that accepts them: they
override a named part's own settings, and fill in what an inline part leaves unset.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .base import GENERATION_OPTIONS, KINDS, EvalResult, QuestionResults, Task, register_kind
from .metrics import harmonic_mean, weighted_mean

#: Options a multi task hands down to its parts (where the part's kind accepts them).
FORWARDED = GENERATION_OPTIONS | {"limit", "scoring", "target", "match"}


@register_kind("multi", aliases=("multitask", "multi_task"))
class MultiTask(Task):
    """Aggregate of several tasks' utilities (see the module docstring)."""

    OPTIONS = (Task.OPTIONS - {"data", "fields"}) | FORWARDED | {"tasks", "aggregate", "weights"}

    def __init__(self, spec, base_dir=None, data_dir=None):
        from .spec import load_task  # the spec module imports this one

        spec = dict(spec)
        spec.setdefault("data", None)
        self._parts_spec = spec.get("tasks")
        if not isinstance(self._parts_spec, (list, tuple)) or len(self._parts_spec) < 1:
            raise ValueError("a multi task needs tasks: [name, spec path or inline spec, ...]")
        self._forward = {k: spec[k] for k in FORWARDED if k in spec}
        super().__init__({k: v for k, v in spec.items() if k != "data"}, base_dir, data_dir)
        self.aggregate = spec.get("aggregate", "harmonic")
        if self.aggregate not in ("harmonic", "mean"):
            raise ValueError(f"aggregate must be harmonic or mean, got {self.aggregate!r}")
        self.weights = spec.get("weights")
        if self.weights is not None and self.aggregate != "mean":
            raise ValueError("weights apply to aggregate: mean only")
        self.parts: list[Task] = []
        for entry in self._parts_spec:
            if isinstance(entry, Task):
                self.parts.append(entry)
                continue
            if isinstance(entry, Mapping):
                # An inline part keeps what it says itself; forwarded options fill the rest.
                cls = KINDS.get(entry["kind"]) if "kind" in entry else None
                fwd = {k: v for k, v in self._forward.items() if cls is None or k in cls.OPTIONS}
                task = load_task({**fwd, **entry}, data_dir=data_dir, base_dir=base_dir)
            else:
                # A named or file part: forwarded options override its spec where it accepts them.
                task = load_task(entry, data_dir=data_dir, base_dir=base_dir, _forward=self._forward)
            self.parts.append(task)
        names = [t.name for t in self.parts]
        if len(set(names)) != len(names):
            raise ValueError(f"multi task parts must have distinct names, got {names}")
        if self.weights is not None:
            weighted_mean(np.zeros((1, len(self.parts))), self.weights)  # validates now

    def _data_source(self, data):
        return None  # the parts own their data

    @property
    def splits(self) -> list[str]:
        """Splits every part has."""
        common = set(self.parts[0].splits) if self.parts else set()
        for t in self.parts[1:]:
            common &= set(t.splits)
        return sorted(common)

    def examples(self, split: str = "dev"):
        """Not defined for a multi task: ask each of ``task.parts``."""
        raise ValueError("a multi task has no examples of its own; see task.parts")

    def checkpoint_state(self):
        """Every part's state, by part name."""
        return {"parts": {t.name: t.checkpoint_state() for t in self.parts}}

    def restore_state(self, state):
        """Hand each part its own state back."""
        saved = state.get("parts", {})
        for t in self.parts:
            if t.name in saved:
                t.restore_state(saved[t.name])

    def question_ids(self, split="dev"):
        """Every part's question ids, one part after the other, as ``"<part>/<id>"``."""
        return [f"{t.name}/{q}" for t in self.parts for q in t.question_ids(split)]

    def question_results(self, experts, W=None, split="dev", mode=None, allow_test=False):
        """Every part's questions, one after the other, with ids ``"<part>/<id>"``; ``solved`` only
        when every part defines it."""
        got = [t.question_results(experts, W, split=split, mode=mode, allow_test=allow_test) for t in self.parts]
        ids = [f"{t.name}/{q}" for t, r in zip(self.parts, got, strict=True) for q in r.ids]
        solved = (np.concatenate([r.solved for r in got], axis=1)
                  if all(r.solved is not None for r in got) else None)
        return QuestionResults(ids, np.concatenate([r.scores for r in got], axis=1), solved)

    def clear_cache(self) -> None:
        """Drop the cached tables and ensembles of every part."""
        for t in self.parts:
            t.clear_cache()

    def _evaluate(self, pool, split, allow_test):
        results = [t.evaluate_detailed(pool.experts, pool.W, split=split, mode=pool.mode,
                                       allow_test=allow_test) for t in self.parts]
        stacked = np.stack([r.utility for r in results], axis=1)  # [P, K]
        if self.aggregate == "harmonic":
            util = harmonic_mean(stacked)
        else:
            util = weighted_mean(stacked, self.weights)
        parts = {}
        for t, r in zip(self.parts, results, strict=True):
            parts[t.name] = r.utility
            for k, v in r.parts.items():
                parts[f"{t.name}.{k}"] = v
        return EvalResult(util, parts, split, sum(r.n for r in results))
