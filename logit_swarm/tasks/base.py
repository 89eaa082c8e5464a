"""The ``Task`` base class, evaluation results, the test-split guard and the kind registry.

A task turns (experts, weight matrix W) into one utility per row of W. Subclasses implement
``_evaluate(pool, split, allow_test) -> EvalResult`` for one *kind* (multiple choice, exact
match, likelihood, reward, judge, abstain, multi) and are registered in :data:`KINDS`; a spec's
``kind:`` picks the class. Every option a kind accepts is declared in its ``OPTIONS`` so that a
typo in a spec is an error with a suggestion rather than a silently ignored line.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..windows import check_policy, truncation_run
from . import backend
from .records import DataSource, Record
from .registry import Registry

#: Options every kind accepts.
COMMON_OPTIONS = frozenset({"name", "kind", "description", "data", "fields", "limit", "version",
                            "data_dir", "truncation"})
#: Decoding options of generation-based kinds.
GENERATION_OPTIONS = frozenset({"max_new_tokens", "temperature", "seed", "stop", "strip",
                                "max_rows", "chat", "truncation", "budget_unit", "budget_tokenizer"})


class TestSplitError(ValueError):
    """Raised when a test split is evaluated without ``allow_test=True``."""

    __test__ = False  # not a pytest test class, despite the name


def is_test_split(split: str) -> bool:
    """Whether ``split`` names held-out test data ("test", "test_hard", ...)."""
    return str(split).lower().startswith("test")


def check_split(split: str, allow_test: bool) -> None:
    """The guard: refuse a test split unless the caller explicitly allows it."""
    if is_test_split(split) and not allow_test:
        raise TestSplitError(
            f"refusing to evaluate on the {split!r} split: test data must never steer a search. "
            "Pass allow_test=True (command line: --allow-test) to report final held-out numbers."
        )


@dataclass
class EvalResult:
    """The outcome of evaluating P particles on one split.

    ``utility``: [P], the number the search maximises. ``parts``: named [P] arrays (accuracy,
    parse failures, per-sub-task utilities...). ``per_example``: [P, n] scores where the utility
    is a mean over examples. ``outputs``: [P][n] generated texts for generation-based kinds.
    """

    utility: np.ndarray
    parts: dict[str, np.ndarray] = field(default_factory=dict)
    split: str = "dev"
    n: int = 0
    per_example: np.ndarray | None = None
    outputs: list[list[str]] | None = None

    def row(self, p: int = 0) -> dict[str, float]:
        """Particle ``p``'s utility and parts as plain floats (for printing and JSON)."""
        out = {"utility": float(self.utility[p])}
        out.update({k: float(v[p]) for k, v in self.parts.items()})
        return out


@dataclass
class QuestionResults:
    """Per-question results of P weight rows on one split.

    ``ids``: [n] question ids (the record's ``id`` field, else ``"<split>-<index>"``);
    ``scores``: [P, n] per-question scores (the utility is their mean for most kinds);
    ``solved``: [P, n] booleans, or ``None`` when the kind has no notion of solving a question.
    """

    ids: list[str]
    scores: np.ndarray
    solved: np.ndarray | None = None

    def records(self, p: int = 0) -> list[dict[str, Any]]:
        """Row ``p`` as one JSON-able dict per question: ``id``, ``score`` and ``correct``
        (``None`` when the kind does not define it)."""
        out = []
        for i, qid in enumerate(self.ids):
            ok = None if self.solved is None else bool(self.solved[p, i])
            out.append({"id": qid, "score": float(self.scores[p, i]), "correct": ok})
        return out


def example_ids(examples: Sequence[Record], split: str) -> list[str]:
    """Stable ids of a split's examples: the raw record's ``id`` where it has one (made unique),
    else ``"<split>-<index>"``."""
    ids, seen = [], set()
    for i, ex in enumerate(examples):
        raw = ex.get("raw") if isinstance(ex, Mapping) else None
        qid = raw.get("id") if isinstance(raw, Mapping) else None
        qid = f"{split}-{i}" if qid is None or str(qid) in seen else str(qid)
        seen.add(qid)
        ids.append(qid)
    return ids


class Task:
    """Base class of all task kinds. Build one with :func:`logit_swarm.tasks.load_task`.

    ``spec`` is a mapping with at least ``kind`` and ``data`` (see the package docstring);
    ``base_dir`` resolves relative data paths; ``data_dir`` is handed to sub-tasks.
    """

    kind: ClassVar[str] = ""
    OPTIONS: ClassVar[frozenset[str]] = COMMON_OPTIONS

    def __init__(self, spec: Mapping[str, Any], base_dir: str | os.PathLike | None = None,
                 data_dir: str | os.PathLike | None = None):
        self.spec = dict(spec)
        check_options(self.spec, self.OPTIONS, self.kind)
        self.name = str(self.spec.get("name") or self.kind)
        self.description = str(self.spec.get("description", ""))
        self.base_dir = Path(base_dir) if base_dir is not None else None
        self.data_dir = data_dir
        self.fields = dict(self.spec.get("fields") or {})
        self.limit = self.spec.get("limit")
        if self.limit is not None and not isinstance(self.limit, (int, Mapping)):
            raise ValueError(f"limit must be an integer or {{split: integer}}, got {self.limit!r}")
        self.data = self._data_source(self.spec.get("data"))
        # What an expert with a short context window sees: "left" / "error" / None (the run's;
        # default "left"). Applies to every table and decode of this task (logit_swarm/windows.py).
        self.truncation = check_policy(self.spec.get("truncation"))
        self.cache = backend.EngineCache()
        self._examples: dict[str, list[Record]] = {}

    def _data_source(self, data: Any) -> DataSource | None:
        if data is None:
            raise ValueError(f"task {self.name!r}: the spec needs data: (a file, "
                             "{dev: ..., test: ...} or a generator)")
        if isinstance(data, DataSource):
            return data
        return DataSource.from_spec(data, self.base_dir)

    # -- data ------------------------------------------------------------------------------

    @property
    def splits(self) -> list[str]:
        """Split names available to this task."""
        return self.data.splits if self.data is not None else []

    def split_limit(self, split: str) -> int | None:
        """How many examples of ``split`` are used (the first ones); ``None`` means all."""
        if self.limit is None:
            return None
        if isinstance(self.limit, Mapping):
            v = self.limit.get(split)
            return None if v is None else int(v)
        return int(self.limit)

    def normalise(self, raw: Record) -> Record:
        """Turn one raw record into this kind's example (overridden per kind)."""
        return dict(raw)

    def examples(self, split: str = "dev") -> list[Record]:
        """The normalised examples of ``split`` after the limit (cached; no guard here)."""
        if split not in self._examples:
            raw = self.data.records(split)
            k = self.split_limit(split)
            if k is not None:
                if k < 1:
                    raise ValueError(f"limit for split {split!r} must be >= 1, got {k}")
                raw = raw[:k]
            out = []
            for i, r in enumerate(raw):
                try:
                    out.append(self.normalise(r))
                except ValueError as exc:
                    raise ValueError(f"task {self.name!r}, split {split!r}, record {i}: {exc}") from None
            if not out:
                raise ValueError(f"task {self.name!r}: split {split!r} has no examples")
            self._examples[split] = out
        return self._examples[split]

    # -- evaluation ------------------------------------------------------------------------

    def evaluate(self, experts: Any, W: Any = None, split: str = "dev", mode: str | None = None,
                 allow_test: bool = False) -> np.ndarray:
        """One utility per row of ``W`` (shape [P]); higher is better.

        ``experts``: a list of experts (then ``W`` is [P, N] or [N]) or an ``Ensemble`` (``W``
        and ``mode`` default to its own). ``mode``: "probs" or "logits" (default "probs").
        A ``test`` split is refused unless ``allow_test=True``.
        """
        return self.evaluate_detailed(experts, W, split=split, mode=mode, allow_test=allow_test).utility

    def evaluate_detailed(self, experts: Any, W: Any = None, split: str = "dev",
                          mode: str | None = None, allow_test: bool = False) -> EvalResult:
        """Like :meth:`evaluate`, returning the full :class:`EvalResult` (parts, per example)."""
        check_split(split, allow_test)
        pool = backend.resolve_pool(experts, W, mode)
        with truncation_run(self.truncation):
            result = self._evaluate(pool, split, allow_test)
        result.split = split
        return result

    def _evaluate(self, pool: backend.Pool, split: str, allow_test: bool) -> EvalResult:
        """Evaluate every particle of ``pool`` on ``split`` (the guard has already run)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _evaluate")

    def question_results(self, experts: Any, W: Any = None, split: str = "dev", mode: str | None = None,
                         allow_test: bool = False) -> QuestionResults:
        """Per-question results of every row of ``W`` on ``split``: ids, scores and (where the
        kind defines it) whether each question was solved. Same arguments as :meth:`evaluate`.

        This is what ``compare`` writes to ``per_question.jsonl`` and what the C-emerge analysis
        reads. Kinds without per-question scores (a likelihood task scores documents, which are
        its "questions") still return one score per example.
        """
        r = self.evaluate_detailed(experts, W, split=split, mode=mode, allow_test=allow_test)
        return self._question_results(r, split)

    def _question_results(self, result: EvalResult, split: str) -> QuestionResults:
        if result.per_example is None:
            raise ValueError(f"task {self.name!r} ({self.kind}) has no per-question results")
        scores = np.asarray(result.per_example, dtype=np.float64)
        return QuestionResults(self.question_ids(split), scores, self.solved(scores))

    def question_ids(self, split: str = "dev") -> list[str]:
        """A stable id per example of ``split``: the record's ``id`` where it has one (made
        unique), else ``"<split>-<index>"`` (for per-question result files)."""
        return example_ids(self.examples(split), split)

    def solved(self, scores: np.ndarray) -> np.ndarray | None:
        """Whether each per-question score counts as solved; ``None`` where the kind has no such
        notion (rewards, ratings, likelihoods). Accuracy kinds: full credit (a tie between the
        best options splits the credit and is not solved)."""
        return None

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything this task's utility depends on beyond its spec and data, as JSON-able data
        (reward normalisation, the judge's call cache, ...). A search stores it in every
        checkpoint and hands it to :meth:`restore_state` on resume before the first evaluation,
        so a resumed search evaluates exactly as an uninterrupted one. Stateless kinds: ``{}``."""
        return {}

    def restore_state(self, state: Mapping[str, Any]) -> None:
        """Take back what :meth:`checkpoint_state` returned (stateless kinds: nothing to do)."""

    def clear_cache(self) -> None:
        """Drop cached likelihood tables and ensembles (e.g. to free memory)."""
        self.cache.clear()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, kind={self.kind!r})"


def check_options(spec: Mapping[str, Any], allowed: frozenset[str], kind: str) -> None:
    """Raise ``ValueError`` for spec keys a kind does not understand, with a suggestion."""
    unknown = [k for k in spec if k not in allowed]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(k, sorted(allowed), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"task kind {kind!r} has no option {k!r}.{hint} "
                         f"Options: {', '.join(sorted(allowed))}")


#: Task kinds by name; the spec's ``kind:`` looks a class up here.
KINDS: Registry[type[Task]] = Registry("task kind")


def register_kind(name: str, aliases: Sequence[str] = ()):
    """Class decorator: register a ``Task`` subclass as kind ``name``."""

    def deco(cls: type[Task]) -> type[Task]:
        cls.kind = name
        KINDS.add(name, cls, aliases=tuple(aliases))
        return cls

    return deco
