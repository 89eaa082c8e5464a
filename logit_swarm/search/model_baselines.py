"""Baselines that need the experts' outputs, not just a utility of weight vectors.

:mod:`.baselines` only sees ``evaluate(W)``. The three baselines here look inside the task:

``prediction_merge``  plurality vote of the experts' own answers, one expert per vote (the
                      paper's "Prediction Merge"). Needs discrete answers: exact match
                      (generated text, compared after :func:`normalise_answer`) and multiple
                      choice (the parsed label, or the best option by likelihood). Ties go to the
                      answer backed by the expert ranked best on dev; experts without an answer
                      (empty output, unparsed, tied options) abstain.
``packllm``           PackLLM-sim (Mavromatis et al. 2024): per prompt x, weights
                      λ_i(x) = softmax_i(−CE_i(x)/τ), CE_i(x) = expert i's cross-entropy of the
                      prompt (its own tokens) in nats per UTF-8 byte (per byte, not per token, so
                      experts with different tokenizers compare). τ is picked on dev from
                      :data:`PACKLLM_TAUS`.
``em_task_baseline``  EM weights (:func:`~.baselines.em_weights`) on the likelihood of the dev
                      targets: the gold answer (exact match), the gold option (multiple choice)
                      or the text itself (likelihood, where it is the exact optimum in "probs").

Per-example weights. ``Task.evaluate`` applies each weight row to every example; PackLLM needs
one row per example. Exact match goes straight to the shared decoder with one weight row per
prompt (``backend.generate_flat``), which is exact and costs one decode per example. Other kinds
use the "diagonal": evaluate n particles (particle j = example j's weights) and keep example j
of particle j. That is exact for every kind whose utility is the mean of ``per_example``, and
cheap for likelihood-scored tasks (arithmetic on a cached table), but n times the decoding work
for generated-text kinds other than exact match; the report of issue 5 proposes the task API
change that removes it (``evaluate(..., example_weights=[P, n, N])``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._common import float_to_json
from .baselines import BaselineResult, em_baseline

__all__ = ["ModelBaselineResult", "BaselineUnavailable", "prediction_merge", "expert_answers",
           "prompt_cross_entropy", "packllm_weights", "packllm", "PACKLLM_TAUS", "em_targets",
           "em_task_baseline"]

#: Temperatures tried for PackLLM on dev (nats per byte; smaller = sharper routing).
PACKLLM_TAUS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)

# Diagonal evaluation: particles per call, to bound the [P, units, N] arrays of scored tasks.
_DIAGONAL_BLOCK = 64


class BaselineUnavailable(ValueError):
    """This baseline does not apply to this task (the message says why)."""


@dataclass
class ModelBaselineResult:
    """Outcome of a model-output baseline on one split.

    Attributes:
        name: "prediction_merge", "packllm", ...
        split: the split it was measured on.
        utility: the task's utility on that split (mean over examples).
        per_example: [n] per-example scores.
        details: JSON-able extras (vote statistics, chosen τ, ...).
    """

    name: str
    split: str
    utility: float
    per_example: np.ndarray | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON-able dict (without per-example scores)."""
        return {"name": self.name, "split": self.split, "utility": float_to_json(self.utility),
                "details": self.details}


def _check(task: Any, split: str, allow_test: bool) -> None:
    from logit_swarm.tasks import check_split

    check_split(split, allow_test)


def _pool(experts: Sequence[Any], W: np.ndarray, mode: str):
    from logit_swarm.tasks.backend import Pool, weight_matrix

    return Pool(list(experts), weight_matrix(W, len(experts), mode), mode)


# --------------------------------------------------------------------------------------------
# Prediction merge
# --------------------------------------------------------------------------------------------


def expert_answers(task: Any, experts: Sequence[Any], split: str = "dev",
                   allow_test: bool = False) -> tuple[list[list[Any]], np.ndarray]:
    """Each expert's own discrete answer to every example, and its per-example score.

    Returns:
        (answers [N][n], scores [N, n]): an answer is a normalised string (exact match), a label
        (multiple choice), or None (no answer: empty output, unparsed, tied best options).

    Raises:
        BaselineUnavailable: the task kind has no discrete answers.
    """
    from logit_swarm.tasks.parsing import normalise_answer, parse_choice_paper

    _check(task, split, allow_test)
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
        from logit_swarm.tasks.metrics import TIE_ATOL
        from logit_swarm.tasks.multiple_choice import option_logprobs

        r = task.evaluate_detailed(experts, eye, split=split, allow_test=allow_test)  # builds the table
        scores, nbytes, valid = option_logprobs(task, _pool(experts, eye, "probs"), split, exs)
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
    raise BaselineUnavailable(f"prediction merge needs discrete answers (exact_match or multiple_choice "
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
                     order: Sequence[int] | None = None) -> ModelBaselineResult:
    """Plurality vote of the experts' answers (see the module docstring).

    Args:
        task, experts: the task and the pool.
        split: where to measure.
        allow_test: needed for a test split.
        order: expert indices best first, for tie-breaks; default: ranked by this split's
            scores — pass the dev ranking when measuring test, so test never decides anything.

    Raises:
        BaselineUnavailable: the task kind has no discrete answers.
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
    return ModelBaselineResult("prediction_merge", split, float(correct.mean()), correct,
                               {"tie_order": [int(i) for i in order], "no_answer": int(no_vote),
                                "unanimous": int(unanimous),
                                "expert_utilities": [float(x) for x in scores.mean(1)]})


# --------------------------------------------------------------------------------------------
# PackLLM
# --------------------------------------------------------------------------------------------


def _prompts(task: Any, split: str) -> list[str]:
    if hasattr(task, "build_prompt"):
        return [task.build_prompt(ex) for ex in task.examples(split)]
    if getattr(task, "kind", "") == "likelihood":
        prompts = [ex["context"] for ex in task.examples(split)]
        if not any(prompts):
            raise BaselineUnavailable(f"PackLLM weighs experts by how well they know the prompt; task "
                                      f"{task.name!r} scores text with no prompt")
        return prompts
    raise BaselineUnavailable(f"PackLLM needs prompts; task {task.name!r} (kind {task.kind!r}) has none")


def prompt_cross_entropy(experts: Sequence[Any], prompts: Sequence[str]) -> np.ndarray:
    """[n, N] cross-entropy of each prompt under each expert, nats per UTF-8 byte.

    Each expert scores its own canonical tokenization of the prompt after its start token (one
    teacher-forced pass per expert, as PackLLM measures perplexity), divided by the prompt's
    bytes so that experts with different tokenizers compare.
    """
    from logit_swarm.score import build_table

    out = np.empty((len(prompts), len(experts)))
    for j, e in enumerate(experts):
        table = build_table([e], [""] * len(prompts), list(prompts), unit="token")
        lp = table.logprob(np.ones((1, 1)))[0]  # [n] nats
        out[:, j] = -lp / np.maximum(table.num_bytes, 1)
    return out


def packllm_weights(ce: np.ndarray, tau: float) -> np.ndarray:
    """λ = softmax(−CE/τ) per row of ``ce`` [n, N]; returns [n, N] on the simplex."""
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    z = -np.asarray(ce, dtype=np.float64) / tau
    z -= z.max(axis=1, keepdims=True)
    w = np.exp(z)
    return w / w.sum(axis=1, keepdims=True)


def evaluate_per_example(task: Any, experts: Sequence[Any], weights: np.ndarray, split: str,
                         mode: str = "probs", allow_test: bool = False) -> np.ndarray:
    """Per-example scores [n] when example j is answered with its own weight row ``weights[j]``.

    Exact match decodes every prompt once with its own row. Other kinds evaluate the rows as
    particles and keep the diagonal (exact; see the module docstring for the cost).
    """
    from logit_swarm.tasks import backend

    _check(task, split, allow_test)
    exs = task.examples(split)
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (len(exs), len(experts)):
        raise ValueError(f"need one weight row per example: shape {(len(exs), len(experts))}, "
                         f"got {weights.shape}")
    if getattr(task, "kind", "") == "exact_match":
        pool = _pool(experts, weights, mode)
        outs = backend.generate_flat(task.cache, pool, [task.build_prompt(e) for e in exs], pool.W, task.gen)
        return task.grade(exs, [outs], split)[0]
    diag = np.empty(len(exs))
    for start in range(0, len(exs), _DIAGONAL_BLOCK):
        block = weights[start:start + _DIAGONAL_BLOCK]
        r = task.evaluate_detailed(experts, block, split=split, mode=mode, allow_test=allow_test)
        pe = r.per_example
        if pe is None or not np.allclose(np.asarray(pe).mean(1), r.utility, atol=1e-9):
            raise BaselineUnavailable(f"per-example weights need a utility that is a mean over examples; "
                                      f"task {task.name!r} (kind {task.kind!r}) is not")
        idx = np.arange(len(block))
        diag[start:start + len(block)] = np.asarray(pe)[idx, start + idx]
    return diag


def packllm(task: Any, experts: Sequence[Any], split: str = "dev", allow_test: bool = False,
            tau: float | None = None, taus: Sequence[float] = PACKLLM_TAUS, mode: str = "probs",
            tune_split: str = "dev") -> ModelBaselineResult:
    """PackLLM-sim: per-prompt weights from each expert's perplexity of the prompt.

    Args:
        task, experts: the task and the pool.
        split: where to measure.
        allow_test: needed for a test split.
        tau: fixed temperature; None picks the best of ``taus`` on ``tune_split`` (dev), first
            on ties.
        mode: mixing mode of the per-example mixtures.

    Raises:
        BaselineUnavailable: the task has no prompts, or a utility that is not a per-example mean.
    """
    _check(task, split, allow_test)
    details: dict[str, Any] = {}
    if tau is None:
        dev_ce = prompt_cross_entropy(experts, _prompts(task, tune_split))
        tried = []
        for t in taus:
            u = float(np.mean(evaluate_per_example(task, experts, packllm_weights(dev_ce, t), tune_split, mode)))
            tried.append((t, u))
        tau = max(tried, key=lambda tu: tu[1])[0]  # max keeps the first of equal utilities
        details["tau_search"] = {str(t): u for t, u in tried}
    ce = prompt_cross_entropy(experts, _prompts(task, split))
    lam = packllm_weights(ce, tau)
    per = evaluate_per_example(task, experts, lam, split, mode, allow_test)
    details.update(tau=float(tau), mean_weights=[float(x) for x in lam.mean(0)],
                   mean_cross_entropy=[float(x) for x in ce.mean(0)])
    return ModelBaselineResult("packllm", split, float(per.mean()), per, details)


# --------------------------------------------------------------------------------------------
# EM on the likelihood of the dev targets
# --------------------------------------------------------------------------------------------


def _answer_continuation(prompt: str, ex: dict) -> str:
    """The gold answer as a continuation of ``prompt``: keeps the record's own leading space
    (the zoo writes " Paris"); otherwise a space joins it to a prompt that does not end in one."""
    raw = (ex.get("raw") or {}).get("answer") if isinstance(ex.get("raw"), dict) else None
    if isinstance(raw, str) and raw.strip() == ex["answer"] and raw[:1].isspace():
        return raw
    sep = " " if prompt and not prompt[-1].isspace() else ""
    return sep + ex["answer"]


def em_targets(task: Any, split: str = "dev") -> tuple[list[str], list[str], bool]:
    """(contexts, continuations, length_normalize) whose likelihood EM maximises.

    Raises:
        BaselineUnavailable: the kind has no target text (reward, judge, ...).
    """
    kind = getattr(task, "kind", "")
    if kind == "likelihood":
        ctx, tgt, _ = task.pairs(split)
        return ctx, tgt, False  # exactly the utility's objective: total log-likelihood
    if kind not in ("multiple_choice", "exact_match"):
        raise BaselineUnavailable(f"EM needs target text to score; task {task.name!r} (kind {kind!r}) has none")
    exs = task.examples(split)
    if kind == "multiple_choice":
        ctx = [task.build_prompt(ex) for ex in exs]
        pick = "choices" if getattr(task, "target", "text") == "text" else "labels"
        sep = getattr(task, "separator", " ")
        return ctx, [sep + ex[pick][ex["answer"]] for ex in exs], True
    ctx = [task.build_prompt(ex) for ex in exs]
    return ctx, [_answer_continuation(c, ex) for c, ex in zip(ctx, exs)], True


def em_task_baseline(task: Any, experts: Sequence[Any], evaluate: Any, split: str = "dev",
                     mode: str = "probs") -> BaselineResult:
    """EM weights on the likelihood of ``split``'s targets, then one utility evaluation.

    Examples weigh equally (per-unit mean within an example) for answers; a likelihood task uses
    the unit-level objective, which is its utility's, so EM is its exact optimum.

    Raises:
        BaselineUnavailable: no target text, or mode "logits" (EM optimises a linear mixture).
    """
    from logit_swarm.score import build_table

    if mode != "probs":
        raise BaselineUnavailable("EM finds linear-mixture weights; it applies to mode 'probs' only")
    ctx, cont, length_normalize = em_targets(task, split)
    keep = [i for i, c in enumerate(cont) if c]
    table = build_table(list(experts), [ctx[i] for i in keep], [cont[i] for i in keep])
    try:
        return em_baseline(len(experts), evaluate, L=table.unit_logprobs, groups=table.groups,
                           length_normalize=length_normalize)
    except ValueError as exc:  # e.g. a unit no expert can produce
        raise BaselineUnavailable(f"EM: {exc}") from None
