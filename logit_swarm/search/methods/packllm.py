"""PackLLM-sim (Mavromatis et al. 2024): per-prompt weights from each expert's perplexity of it.

Per prompt x, weights ``lambda_i(x) = softmax_i(-CE_i(x) / tau)``, ``CE_i(x)`` = expert i's
cross-entropy of the prompt (its own tokens) in nats per UTF-8 byte (per byte, not per token, so
experts with different tokenizers compare). tau is picked on dev from :data:`PACKLLM_TAUS`.

Per-example weights. ``Task.evaluate`` applies each weight row to every example; PackLLM needs
one row per example. Exact match goes straight to the shared decoder with one weight row per
prompt (``backend.generate_flat``), which is exact and costs one decode per example. Other kinds
use the "diagonal": evaluate n particles (particle j = example j's weights) and keep example j
of particle j. That is exact for every kind whose utility is the mean of ``per_example``, and
cheap for likelihood-scored tasks (arithmetic on a cached table), but n times the decoding work
for generated-text kinds other than exact match.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from logit_swarm.score import build_table
from logit_swarm.tasks import backend, check_split

from .base import MethodInfo, MethodUnavailable, OutputResult, register_method, task_pool

__all__ = ["PACKLLM_TAUS", "prompt_cross_entropy", "packllm_weights", "evaluate_per_example", "packllm",
           "run_packllm"]

#: Temperatures tried for PackLLM on dev (nats per byte; smaller = sharper routing).
PACKLLM_TAUS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)

# Diagonal evaluation: particles per call, to bound the [P, units, N] arrays of scored tasks.
_DIAGONAL_BLOCK = 64


def _prompts(task: Any, split: str) -> list[str]:
    if hasattr(task, "build_prompt"):
        return [task.build_prompt(ex) for ex in task.examples(split)]
    if getattr(task, "kind", "") == "likelihood":
        prompts = [ex["context"] for ex in task.examples(split)]
        if not any(prompts):
            raise MethodUnavailable(f"PackLLM weighs experts by how well they know the prompt; task "
                                      f"{task.name!r} scores text with no prompt")
        return prompts
    raise MethodUnavailable(f"PackLLM needs prompts; task {task.name!r} (kind {task.kind!r}) has none")


def prompt_cross_entropy(experts: Sequence[Any], prompts: Sequence[str]) -> np.ndarray:
    """[n, N] cross-entropy of each prompt under each expert, nats per UTF-8 byte.

    Each expert scores its own canonical tokenization of the prompt after its start token (one
    teacher-forced pass per expert, as PackLLM measures perplexity), divided by the prompt's
    bytes so that experts with different tokenizers compare.
    """
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
    check_split(split, allow_test)
    exs = task.examples(split)
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (len(exs), len(experts)):
        raise ValueError(f"need one weight row per example: shape {(len(exs), len(experts))}, "
                         f"got {weights.shape}")
    if getattr(task, "kind", "") == "exact_match":
        pool = task_pool(experts, weights, mode)
        outs = backend.generate_flat(task.cache, pool, [task.build_prompt(e) for e in exs], pool.W, task.gen)
        return task.grade(exs, [outs], split)[0]
    diag = np.empty(len(exs))
    for start in range(0, len(exs), _DIAGONAL_BLOCK):
        block = weights[start:start + _DIAGONAL_BLOCK]
        r = task.evaluate_detailed(experts, block, split=split, mode=mode, allow_test=allow_test)
        pe = r.per_example
        if pe is None or not np.allclose(np.asarray(pe).mean(1), r.utility, atol=1e-9):
            raise MethodUnavailable(f"per-example weights need a utility that is a mean over examples; "
                                      f"task {task.name!r} (kind {task.kind!r}) is not")
        idx = np.arange(len(block))
        diag[start:start + len(block)] = np.asarray(pe)[idx, start + idx]
    return diag


def packllm(task: Any, experts: Sequence[Any], split: str = "dev", allow_test: bool = False,
            tau: float | None = None, taus: Sequence[float] = PACKLLM_TAUS, mode: str = "probs",
            tune_split: str = "dev") -> OutputResult:
    """PackLLM-sim: per-prompt weights from each expert's perplexity of the prompt.

    Args:
        task, experts: the task and the pool.
        split: where to measure.
        allow_test: needed for a test split.
        tau: fixed temperature; None picks the best of ``taus`` on ``tune_split`` (dev), first
            on ties.
        mode: mixing mode of the per-example mixtures.

    Raises:
        MethodUnavailable: the task has no prompts, or a utility that is not a per-example mean.
    """
    check_split(split, allow_test)
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
    return OutputResult(float(per.mean()), per, details, summary=f"per prompt, tau {tau:g}")


def run_packllm(task: Any, experts: Any, split: str, mode: str, allow_test: bool,
                tuned: Mapping[str, Any] | None) -> OutputResult:
    """The :class:`~.base.OutputMethod`: tau chosen on dev, reused on test."""
    res = packllm(task, experts, split, allow_test=allow_test, tau=None if tuned is None else tuned["tau"],
                  mode=mode)
    res.details["tuned"] = {"tau": res.details["tau"]}
    return res


register_method(MethodInfo(
    name="packllm", label="PackLLM (per prompt)", family="packllm", kind="output", run=run_packllm,
    mapping="Pack of LLMs: per-prompt weights from each expert's perplexity of the prompt (its own "
            "mixing-space method already)."))
