"""Prediction merge: a plurality vote of the experts' own answers (the paper's "Prediction Merge").

Needs discrete answers: exact match (generated text, compared after ``normalise_answer``) and
multiple choice (the parsed label, or the best option by likelihood). Ties go to the answer backed
by the expert ranked best on dev; experts without an answer (empty output, unparsed, tied options)
abstain.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from logit_swarm.tasks import check_split
from logit_swarm.tasks.metrics import TIE_ATOL
from logit_swarm.tasks.multiple_choice import option_logprobs
from logit_swarm.tasks.parsing import normalise_answer, parse_choice_paper

from .base import MethodInfo, MethodUnavailable, OutputResult, register_method, task_pool

__all__ = ["expert_answers", "prediction_merge", "run_prediction_merge"]


def expert_answers(task: Any, experts: Sequence[Any], split: str = "dev",
                   allow_test: bool = False) -> tuple[list[list[Any]], np.ndarray]:
    """Each expert's own discrete answer to every example, and its per-example score.

    Returns:
        (answers [N][n], scores [N, n]): an answer is a normalised string (exact match), a label
        (multiple choice), or None (no answer: empty output, unparsed, tied best options).

    Raises:
        MethodUnavailable: the task kind has no discrete answers.
    """
    check_split(split, allow_test)
    n_exp = len(experts)
    eye = np.eye(n_exp)
    kind = getattr(task, "kind", "")
    if kind == "exact_match":
        r = task.evaluate_detailed(experts, eye, split=split, allow_test=allow_test)
        answers = [[normalise_answer(o) or None for o in row] for row in r.outputs]
        return answers, np.asarray(r.per_example)
    if kind == "multiple_choice":
        exs = task.examples(split)
        if task.scoring_name == "generate":
            r = task.evaluate_detailed(experts, eye, split=split, allow_test=allow_test)
            answers = [[parse_choice_paper(o, ex["labels"], ex["choices"]) for ex, o in zip(exs, row)]
                       for row in r.outputs]
            return answers, np.asarray(r.per_example)
        r = task.evaluate_detailed(experts, eye, split=split, allow_test=allow_test)  # builds the table
        scores, nbytes, valid = option_logprobs(task, task_pool(experts, eye, "probs"), split, exs)
        if task.scoring_name == "loglik_per_byte":
            scores = scores / nbytes[None]
        scores = np.where(valid[None], scores, -np.inf)
        answers = []
        for p in range(n_exp):
            row = []
            for i, ex in enumerate(exs):
                s = scores[p, i]
                best = s.max()
                top = np.flatnonzero(s >= best - TIE_ATOL)
                row.append(ex["labels"][int(top[0])] if np.isfinite(best) and len(top) == 1 else None)
            answers.append(row)
        return answers, np.asarray(r.per_example)
    raise MethodUnavailable(f"prediction merge needs discrete answers (exact_match or multiple_choice "
                              f"tasks); task {task.name!r} is of kind {kind!r}")


def _vote(answers: Sequence[Any], order: Sequence[int]) -> tuple[Any, int]:
    """Plurality answer among experts (None abstains); ties go to the best-ranked supporter."""
    counts: dict[Any, int] = {}
    for a in answers:
        if a is not None:
            counts[a] = counts.get(a, 0) + 1
    if not counts:
        return None, -1
    top = max(counts.values())
    for i in order:  # the best-ranked expert backing a top answer decides the tie
        if answers[i] is not None and counts[answers[i]] == top:
            return answers[i], i
    raise AssertionError("unreachable: some expert backs the top answer")


def prediction_merge(task: Any, experts: Sequence[Any], split: str = "dev", allow_test: bool = False,
                     order: Sequence[int] | None = None) -> OutputResult:
    """Plurality vote of the experts' answers (see the module docstring).

    Args:
        task, experts: the task and the pool.
        split: where to measure.
        allow_test: needed for a test split.
        order: expert indices best first, for tie-breaks; default: ranked by this split's
            scores — pass the dev ranking when measuring test, so test never decides anything.

    Raises:
        MethodUnavailable: the task kind has no discrete answers.
    """
    answers, scores = expert_answers(task, experts, split, allow_test)
    if order is None:
        order = [int(i) for i in np.argsort(-scores.mean(1), kind="stable")]
    exs = task.examples(split)
    merged, deciders, unanimous = [], [], 0
    for i in range(len(exs)):
        col = [answers[p][i] for p in range(len(experts))]
        a, who = _vote(col, order)
        merged.append(a)
        deciders.append(who)
        unanimous += int(a is not None and all(c == a for c in col))
    if task.kind == "exact_match":
        # The winning answer is graded by the task's own matcher, as any output would be.
        # (Answers were normalised for the vote; matchers normalise again, so this is safe.)
        correct = task.grade(exs, [[a or "" for a in merged]], split)[0]
    else:
        correct = np.array([float(a is not None and a == ex["labels"][ex["answer"]])
                            for a, ex in zip(merged, exs)])
    no_vote = sum(a is None for a in merged)
    return OutputResult(float(correct.mean()), correct,
                        {"tie_order": [int(i) for i in order], "no_answer": int(no_vote),
                                "unanimous": int(unanimous),
                                "expert_utilities": [float(x) for x in scores.mean(1)]})


def run_prediction_merge(task: Any, experts: Any, split: str, mode: str, allow_test: bool,
                         tuned: Mapping[str, Any] | None) -> OutputResult:
    """The :class:`~.base.OutputMethod`: on dev the tie order is the dev ranking, reused on test."""
    order = None if tuned is None else tuned["order"]
    res = prediction_merge(task, experts, split, allow_test=allow_test, order=order)
    res.details["tuned"] = {"order": res.details["tie_order"]}
    res.summary = f"vote of {len(experts)} experts"
    return res


register_method(MethodInfo(
    name="prediction_merge", label="prediction merge (vote)", family="vote", kind="output",
    run=run_prediction_merge,
    mapping="Prediction Merge: every expert answers and the most common answer wins."))
