"""EM on cached likelihoods: the maximum-likelihood mixture of the dev targets (mode "probs").

The objective ``sum_t c_t log sum_i w_i p_i(t)`` over the dev targets' units (the gold answer of
exact match, the gold option of multiple choice, the text of a likelihood task) is concave in w,
so EM from the uniform point converges to its global optimum, certified by the Frank-Wolfe
duality gap. The method builds the experts' score table of the targets once (no search
evaluations), then asks for one utility evaluation of the weights it found.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import logsumexp

from logit_swarm.score import build_table

from .._common import float_to_json
from .base import GeneratorSearcher, MethodInfo, MethodUnavailable, SearchContext, Steps, register_method

__all__ = ["em_weights", "mixture_loglik", "em_targets", "em_steps"]


def _unit_weights(n_units: int, groups: np.ndarray | None, length_normalize: bool) -> np.ndarray:
    """Weight of each unit in the objective, summing to 1."""
    if groups is None:
        if length_normalize:
            raise ValueError("length_normalize=True needs groups (which example each unit is in)")
        return np.full(n_units, 1.0 / n_units)
    g = np.asarray(groups)
    if g.shape != (n_units,):
        raise ValueError(f"groups must have shape ({n_units},) (one example id per unit), got {g.shape}")
    if not length_normalize:
        return np.full(n_units, 1.0 / n_units)
    _, inverse, counts = np.unique(g, return_inverse=True, return_counts=True)
    c = 1.0 / counts[inverse]  # every example weighs the same, whatever its length
    return c / c.sum()


def _check_table(L: Any) -> np.ndarray:
    L = np.asarray(L, dtype=np.float64)
    if L.ndim != 2 or L.shape[0] == 0 or L.shape[1] == 0:
        raise ValueError(f"L must be a (units, experts) table of log-probabilities, got shape {L.shape}")
    if np.isnan(L).any() or (L == np.inf).any():
        raise ValueError("L contains NaN or +inf; it must hold log-probabilities (<= 0, -inf allowed)")
    dead = ~np.isfinite(L).any(axis=1)
    if dead.any():
        raise ValueError(f"{int(dead.sum())} unit(s) have probability 0 under every expert "
                         f"(first: row {int(np.flatnonzero(dead)[0])}); no mixture can score them")
    return L


def mixture_loglik(w: Any, L: Any, groups: Any = None, length_normalize: bool = False) -> float:
    """The EM objective: ``sum_t c_t log sum_i w_i exp(L[t, i])`` with unit weights c summing to 1.

    With ``length_normalize=False`` c_t = 1/T, i.e. the mean per-unit log-likelihood of mixture
    mode "probs" (the total is T times this, same optimum). With ``length_normalize=True`` every
    example (``groups`` id) weighs the same, i.e. the mean over examples of the per-unit mean.

    Args:
        w: (N,) weights on the simplex.
        L: (T, N) log-probabilities of each dev unit under each expert.
        groups: (T,) example id of each unit (needed for ``length_normalize``).
        length_normalize: weigh examples equally instead of units.
    """
    L = _check_table(L)
    c = _unit_weights(L.shape[0], groups, length_normalize)
    with np.errstate(divide="ignore"):
        return float(c @ logsumexp(L + np.log(np.asarray(w, dtype=np.float64))[None, :], axis=1))


def _em(L: np.ndarray, c: np.ndarray, max_iter: int, tol: float,
        init: np.ndarray | None) -> tuple[np.ndarray, float, float, int]:
    """EM iterations; returns (weights, objective, duality gap, iterations)."""
    t, n = L.shape
    w = np.full(n, 1.0 / n) if init is None else np.asarray(init, dtype=np.float64).copy()
    if w.shape != (n,) or (w < 0).any() or not np.isclose(w.sum(), 1.0) or not (w > 0).any():
        raise ValueError("init must be a point of the simplex with N entries")
    gap = np.inf
    it = 0
    with np.errstate(divide="ignore", invalid="ignore"):
        for it in range(1, max_iter + 1):  # noqa: B007 - returned: iterations used
            log_joint = L + np.log(w)[None, :]
            log_mix = logsumexp(log_joint, axis=1)
            # grad_i = sum_t c_t p_ti / m_t; at w: sum_i w_i grad_i = sum_t c_t = 1.
            grad = c @ np.exp(L - log_mix[:, None])
            # Frank-Wolfe duality gap of a concave objective on the simplex:
            # f* - f(w) <= max_i grad_i - <grad, w> = max_i grad_i - 1. A certificate, not a guess.
            gap = float(np.max(grad) - 1.0)
            if gap <= tol:
                break
            w = w * grad  # the EM update: expected responsibilities
            w = w / w.sum()  # exact in theory; renormalise against rounding drift
    obj = float(c @ logsumexp(L + np.log(np.where(w > 0, w, 0.0))[None, :], axis=1))
    return w, obj, gap, it


def em_weights(L: Any, groups: Any = None, iters: int = 10000, tol: float = 1e-10,
               length_normalize: bool = False, init: Any = None) -> np.ndarray:
    """Maximum-likelihood mixture weights over the simplex, by EM on cached per-unit log-probs.

    Maximises :func:`mixture_loglik`, ``sum_t c_t log sum_i w_i p_{i,t}``. The objective is concave
    in w, so EM from the uniform interior point converges to the global optimum; it stops when the
    Frank-Wolfe duality gap ``max_i grad_i - 1`` (an upper bound on how far the objective is from
    its optimum) is <= ``tol``, or after ``iters`` iterations.

    Args:
        L: (T, N) log-probabilities of each dev unit (token or byte) under each expert, the
            per-expert table the scorer caches.
        groups: (T,) which example each unit belongs to; only used with ``length_normalize``.
        iters: maximum EM iterations.
        tol: stop when the objective is provably within ``tol`` of its optimum.
        length_normalize: weigh every example equally (mean over examples of the per-unit mean).
        init: optional starting point on the simplex (default uniform).

    Returns:
        (N,) weights on the simplex (non-negative, summing to 1): use them with mode "probs".
    """
    L = _check_table(L)
    if iters < 1 or tol < 0:
        raise ValueError(f"iters must be >= 1 and tol >= 0, got iters={iters}, tol={tol}")
    c = _unit_weights(L.shape[0], None if groups is None else np.asarray(groups), length_normalize)
    return _em(L, c, iters, tol, None if init is None else np.asarray(init))[0]


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
        MethodUnavailable: the kind has no target text (reward, judge, ...).
    """
    kind = getattr(task, "kind", "")
    if kind == "likelihood":
        ctx, tgt, _ = task.pairs(split)
        return ctx, tgt, False  # exactly the utility's objective: total log-likelihood
    if kind not in ("multiple_choice", "exact_match"):
        raise MethodUnavailable(f"EM needs target text to score; task {task.name!r} (kind {kind!r}) has none")
    exs = task.examples(split)
    if kind == "multiple_choice":
        ctx = [task.build_prompt(ex) for ex in exs]
        pick = "choices" if getattr(task, "target", "text") == "text" else "labels"
        sep = getattr(task, "separator", " ")
        return ctx, [sep + ex[pick][ex["answer"]] for ex in exs], True
    ctx = [task.build_prompt(ex) for ex in exs]
    return ctx, [_answer_continuation(c, ex) for c, ex in zip(ctx, exs)], True


def em_fit(L: Any, groups: Any = None, length_normalize: bool = False, iters: int = 10000,
           tol: float = 1e-10) -> tuple[np.ndarray, dict[str, Any]]:
    """EM weights and diagnostics (objective ``loglik``, duality ``gap``, ``iterations``)."""
    L = _check_table(L)
    if iters < 1 or tol < 0:
        raise ValueError(f"iters must be >= 1 and tol >= 0, got iters={iters}, tol={tol}")
    c = _unit_weights(L.shape[0], None if groups is None else np.asarray(groups), length_normalize)
    w, obj, gap, it = _em(L, c, iters, tol, None)
    return w, {"loglik": float_to_json(obj), "gap": float_to_json(gap), "iterations": it,
               "converged": bool(gap <= tol)}


def em_steps(ctx: SearchContext) -> Steps:
    """EM on the task's dev targets, then one evaluation of the weights."""
    if ctx.space.mode != "probs":
        raise MethodUnavailable("EM finds linear-mixture weights; it applies to mode 'probs' only")
    if ctx.task is None or ctx.experts is None:
        raise MethodUnavailable("EM needs the task and the experts (to score the dev targets)")
    ctx_text, cont, length_normalize = em_targets(ctx.task, "dev")
    keep = [i for i, c in enumerate(cont) if c]
    table = build_table(list(ctx.experts), [ctx_text[i] for i in keep], [cont[i] for i in keep])
    try:
        w, _ = em_fit(table.unit_logprobs, table.groups, length_normalize)
    except ValueError as exc:  # e.g. a unit no expert can produce
        raise MethodUnavailable(f"EM: {exc}") from None
    yield w[None, :]


register_method(MethodInfo(
    name="em", label="EM on dev likelihood", family="em", kind="search", modes=("probs",),
    make=lambda ctx: GeneratorSearcher(em_steps(ctx), ctx.n_experts),
    mapping="Not a paper baseline: the likelihood-optimal mixture, the natural closed-form competitor "
            "of a search over linear mixtures."))
