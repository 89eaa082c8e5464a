"""Baselines for the swarm search, in the same mixing space and under the same utility.

Every baseline gets the number of experts N and a utility ``evaluate(W (k, N)) -> (k,)`` (higher is
better, NaN = failed) and returns a :class:`BaselineResult` with raw weights (interpreted by the
mixing mode exactly like PSO positions), their dev utility and how many utilities it used.

============================  =====================================================  ============
name                          what                                                   evaluations
============================  =====================================================  ============
``best_single``               best one-hot expert on dev ("Best Single")              N
``uniform``                   uniform mixture 1/N ("Uniform Soup" analogue)           1
``greedy``                    greedy ensemble ("Greedy Soup" analogue)                2N - 1
``em``                        exact likelihood optimum from cached per-unit log-probs 1
``differential_evolution``    scipy DE, whole population per call ("EvolMerge")       <= budget
``local``                     Nelder-Mead / Powell from uniform ("LoraHub" analogue)  <= budget
``random``                    Dirichlet random search on the simplex                  budget
============================  =====================================================  ============

Baselines that need model outputs (prediction merge, PackLLM) live with the tasks, not here.
"""

from __future__ import annotations

import difflib
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import optimize
from scipy.special import logsumexp

from ._common import Evaluate, array_to_json, check_utilities, float_to_json, make_rng, rank_scores

__all__ = [
    "BaselineResult",
    "best_single",
    "uniform_mixture",
    "greedy_ensemble",
    "em_weights",
    "mixture_loglik",
    "em_baseline",
    "differential_evolution_search",
    "local_search",
    "random_search",
    "BASELINES",
    "run_baseline",
]

# Stand-in loss for failed evaluations inside scipy minimisers, which need finite numbers to
# compare and interpolate; any real utility is far above -1e30.
_FAIL_LOSS = 1e30


@dataclass
class BaselineResult:
    """Outcome of one baseline.

    Attributes:
        name: baseline name (a key of :data:`BASELINES`).
        weights: (N,) raw mixing weights.
        utility: dev utility of ``weights`` (-inf if every evaluation failed; NaN if none was made).
        n_evaluations: utilities computed (rows, summed over calls).
        details: baseline-specific extras (JSON-able), e.g. per-expert utilities or EM diagnostics.
    """

    name: str
    weights: np.ndarray
    utility: float
    n_evaluations: int
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A strict-JSON-able dict."""
        return {"name": self.name, "weights": array_to_json(self.weights),
                "utility": float_to_json(self.utility), "n_evaluations": self.n_evaluations,
                "details": self.details}

    def to_json(self, indent: int | None = None) -> str:
        """Strict JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), allow_nan=False, indent=indent)


class _BudgetExhausted(Exception):
    """Raised inside an optimiser's objective to stop it exactly at the evaluation budget."""


class _Tracker:
    """Counts evaluations, enforces a budget and remembers the best row ever evaluated.

    Optimisers report their own "result", which may not be the best point they evaluated (and
    with failures or a budget cut may be meaningless); this keeps the true best seen.
    """

    def __init__(self, evaluate: Evaluate, n_experts: int, budget: int | None = None) -> None:
        if not callable(evaluate):
            raise ValueError("evaluate must be callable: W (k, N) -> utilities (k,)")
        self.evaluate, self.n, self.budget = evaluate, n_experts, budget
        self.count = 0
        self.best_w: np.ndarray | None = None
        self.best_u = np.nan
        self.best_score = -np.inf

    def __call__(self, W: np.ndarray) -> np.ndarray:
        W = np.atleast_2d(np.asarray(W, dtype=np.float64))
        if self.budget is not None and self.count + len(W) > self.budget:
            raise _BudgetExhausted
        u = check_utilities(self.evaluate(W.copy()), len(W))
        self.count += len(W)
        scores = rank_scores(u)
        i = int(np.argmax(scores))
        if self.best_w is None or scores[i] > self.best_score:
            self.best_w, self.best_u, self.best_score = W[i].copy(), float(u[i]), float(scores[i])
        return u

    def result(self, name: str, **details: Any) -> BaselineResult:
        if self.best_w is None:
            raise ValueError(f"{name}: the budget allowed no evaluation at all")
        # -inf when every evaluation failed (or the best utility really is -inf).
        utility = self.best_u if np.isfinite(self.best_score) else -np.inf
        return BaselineResult(name, self.best_w, float(utility), self.count, details)


def _check_n(n_experts: Any) -> int:
    if isinstance(n_experts, bool) or not isinstance(n_experts, (int, np.integer)) or n_experts < 1:
        raise ValueError(f"n_experts must be a positive int, got {n_experts!r}")
    return int(n_experts)


def _check_budget(budget: Any, needed: int, name: str) -> None:
    """Deterministic baselines need a fixed number of evaluations; refuse a smaller budget."""
    if budget is not None and budget < needed:
        raise ValueError(f"{name} needs {needed} evaluations but the budget is {budget}")


def _to_loss(u: np.ndarray) -> np.ndarray:
    """Utilities (maximise) -> finite losses (minimise); failures and -inf get a huge loss."""
    s = rank_scores(u)
    return np.where(np.isfinite(s), -s, _FAIL_LOSS)


# --------------------------------------------------------------------------------------------
# Static baselines
# --------------------------------------------------------------------------------------------


def best_single(n_experts: int, evaluate: Evaluate, *, budget: int | None = None,
                seed: int = 0) -> BaselineResult:
    """The best single expert on dev: all N one-hot vectors in one call, keep the best.

    Args:
        n_experts: N.
        evaluate: the utility.
        budget: if given, must be >= N.
        seed: unused (deterministic); accepted so every baseline has the same call shape.

    Returns:
        Result with a one-hot ``weights``; ``details["utilities"]`` lists every expert's utility.
    """
    n = _check_n(n_experts)
    _check_budget(budget, n, "best_single")
    t = _Tracker(evaluate, n)
    u = t(np.eye(n))
    return t.result("best_single", utilities=[float_to_json(x) for x in u],
                    expert=int(np.argmax(rank_scores(u))))


def uniform_mixture(n_experts: int, evaluate: Evaluate, *, budget: int | None = None,
                    seed: int = 0) -> BaselineResult:
    """The uniform mixture w = 1/N (one evaluation). ``seed`` is unused (deterministic)."""
    n = _check_n(n_experts)
    _check_budget(budget, 1, "uniform")
    t = _Tracker(evaluate, n)
    t(np.full((1, n), 1.0 / n))
    return t.result("uniform")


def greedy_ensemble(n_experts: int, evaluate: Evaluate, *, budget: int | None = None,
                    seed: int = 0, accept_ties: bool = True) -> BaselineResult:
    """Greedy ensemble, the mixing-space analogue of Greedy Soup (Wortsman et al. 2022).

    Rank the experts by their own dev utility; start from the best; try the others in that order,
    each time evaluating the uniform mixture of the chosen set plus the candidate, and keep the
    candidate if the utility does not drop (``accept_ties=True``, as Greedy Soup does) or strictly
    rises (``accept_ties=False``). Every candidate is tried once.

    Args:
        n_experts: N.
        evaluate: the utility.
        budget: if given, must be >= 2N - 1.
        seed: unused (deterministic; ties in the ranking keep expert order).
        accept_ties: keep a candidate that leaves the utility unchanged.

    Returns:
        Result with uniform weights over the chosen set; ``details`` has the ranking and the set.
    """
    n = _check_n(n_experts)
    _check_budget(budget, 2 * n - 1, "greedy")
    t = _Tracker(evaluate, n)
    singles = rank_scores(t(np.eye(n)))
    order = [int(i) for i in np.argsort(-singles, kind="stable")]
    chosen = [order[0]]
    current = singles[order[0]]
    for cand in order[1:]:
        w = np.zeros(n)
        w[chosen + [cand]] = 1.0 / (len(chosen) + 1)
        score = float(rank_scores(t(w[None, :]))[0])
        if score > current or (accept_ties and score == current and np.isfinite(score)):
            chosen.append(cand)
            current = score
    w = np.zeros(n)
    w[chosen] = 1.0 / len(chosen)
    # No evaluated row beats the final set: a candidate is only dropped if it does not improve.
    return BaselineResult("greedy", w, float(current), t.count,
                          {"order": order, "chosen": sorted(chosen),
                           "single_utilities": [float_to_json(x) for x in singles]})


# --------------------------------------------------------------------------------------------
# EM on cached likelihoods
# --------------------------------------------------------------------------------------------


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


def em_baseline(n_experts: int, evaluate: Evaluate | None, *, L: Any, groups: Any = None,
                budget: int | None = None, seed: int = 0, length_normalize: bool = False,
                iters: int = 10000, tol: float = 1e-10) -> BaselineResult:
    """EM weights from the cached likelihood table, then one dev evaluation of them.

    Args:
        n_experts: N (must equal ``L.shape[1]``).
        evaluate: the utility; ``None`` skips the evaluation (utility is then NaN).
        L, groups, length_normalize, iters, tol: as for :func:`em_weights`.
        budget: if given, must be >= 1 when ``evaluate`` is given.
        seed: unused (deterministic).

    Returns:
        Result whose ``details`` has the objective (``loglik``), the duality ``gap`` and
        ``iterations``.
    """
    n = _check_n(n_experts)
    L = _check_table(L)
    if L.shape[1] != n:
        raise ValueError(f"L has {L.shape[1]} expert columns but n_experts is {n}")
    if iters < 1 or tol < 0:
        raise ValueError(f"iters must be >= 1 and tol >= 0, got iters={iters}, tol={tol}")
    c = _unit_weights(L.shape[0], None if groups is None else np.asarray(groups), length_normalize)
    w, obj, gap, it = _em(L, c, iters, tol, None)
    details = {"loglik": float_to_json(obj), "gap": float_to_json(gap), "iterations": it,
               "converged": bool(gap <= tol)}
    if evaluate is None:
        return BaselineResult("em", w, float("nan"), 0, details)
    _check_budget(budget, 1, "em")
    t = _Tracker(evaluate, n)
    u = t(w[None, :])
    return BaselineResult("em", w, float(u[0]) if np.isfinite(rank_scores(u[0])) else -np.inf,
                          t.count, details)


# --------------------------------------------------------------------------------------------
# Budgeted black-box optimisers
# --------------------------------------------------------------------------------------------


def _check_bounds(bounds: tuple[float, float]) -> tuple[float, float]:
    lo, hi = (float(b) for b in bounds)
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"bounds must be finite (low, high) with low < high, got {bounds}")
    return lo, hi


def _positive_budget(budget: Any, name: str, minimum: int = 1) -> int:
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < minimum:
        raise ValueError(f"{name} needs an integer evaluation budget >= {minimum}, got {budget!r}")
    return int(budget)


def differential_evolution_search(n_experts: int, evaluate: Evaluate, *, budget: int, seed: int = 0,
                                  bounds: tuple[float, float] = (0.0, 1.0),
                                  population: int | None = None,
                                  **de_kwargs: Any) -> BaselineResult:
    """scipy ``differential_evolution`` within an evaluation budget (EvolMerge analogue).

    Each generation's whole population is evaluated in one ``evaluate`` call (``vectorized=True``).
    The initial population holds the N one-hot experts (clipped to ``bounds``) and uniform random
    points; it then runs ``budget // population - 1`` generations, without the gradient "polish"
    step (utilities are not smooth). The reported point is the best row ever evaluated.

    Args:
        n_experts: N.
        evaluate: the utility.
        budget: maximum evaluations (>= 5).
        seed: seed of the numpy Generator handed to scipy.
        bounds: box for every weight; (0, 1) suits mode "probs", use e.g. (-1, 1) for "logits".
        population: individuals per generation (default ``max(5, min(15 N, budget // 10))``).
        **de_kwargs: passed to ``scipy.optimize.differential_evolution`` (e.g. ``strategy``,
            ``mutation``, ``recombination``, ``tol``).

    Returns:
        Result; ``details`` has the population size, generations and scipy's message.
    """
    n = _check_n(n_experts)
    budget = _positive_budget(budget, "differential_evolution", 5)
    lo, hi = _check_bounds(bounds)
    m = population if population is not None else max(5, min(15 * n, budget // 10))
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or not 5 <= m <= budget:
        raise ValueError(f"population must be an int in [5, budget={budget}], got {population!r}")
    rng = make_rng(seed)
    init = rng.uniform(lo, hi, size=(m, n))
    k = min(n, m)
    init[:k] = np.clip(np.eye(n)[:k], lo, hi)
    t = _Tracker(evaluate, n, budget)

    def loss(x: np.ndarray) -> np.ndarray:
        # vectorized=True: x has shape (N, S), one column per individual.
        return _to_loss(t(np.asarray(x).T))

    kwargs: dict[str, Any] = dict(maxiter=budget // m - 1, init=init, polish=False, tol=0.0,
                                  vectorized=True, updating="deferred")
    kwargs.update(de_kwargs)
    # scipy >= 1.15 takes rng=, older versions seed=.
    key = "rng" if "rng" in inspect.signature(optimize.differential_evolution).parameters else "seed"
    kwargs[key] = rng
    message = "stopped at the evaluation budget"
    try:
        out = optimize.differential_evolution(loss, [(lo, hi)] * n, **kwargs)
        message = str(out.message)
    except _BudgetExhausted:
        pass
    return t.result("differential_evolution", population=int(m), generations=int(kwargs["maxiter"]),
                    message=message)


def local_search(n_experts: int, evaluate: Evaluate, *, budget: int, seed: int = 0,
                 method: str = "Nelder-Mead", bounds: tuple[float, float] = (0.0, 1.0),
                 x0: str | Any = "uniform") -> BaselineResult:
    """Gradient-free local search from the uniform mixture (LoraHub analogue; it uses NGOpt).

    One row per ``evaluate`` call. Nelder-Mead starts from a simplex whose vertices are x0 and the
    N points half-way from x0 to each one-hot expert (scipy's default 5 % simplex is too small to
    see a change in accuracy-like utilities). The budget is enforced exactly (scipy's ``maxfev``
    is a soft limit for Powell); the reported point is the best row ever evaluated.

    Args:
        n_experts: N.
        evaluate: the utility.
        budget: maximum evaluations (>= 1).
        seed: seeds ``x0="random"`` (a Dirichlet(1) point); otherwise unused.
        method: ``"Nelder-Mead"`` or ``"Powell"``.
        bounds: box for every weight.
        x0: ``"uniform"``, ``"random"`` or an (N,) array.

    Returns:
        Result; ``details`` has the method and scipy's message.
    """
    n = _check_n(n_experts)
    budget = _positive_budget(budget, "local search")
    lo, hi = _check_bounds(bounds)
    if method not in ("Nelder-Mead", "Powell"):
        raise ValueError(f"method must be 'Nelder-Mead' or 'Powell', got {method!r}")
    if isinstance(x0, str):
        if x0 == "uniform":
            start = np.full(n, 1.0 / n)
        elif x0 == "random":
            start = make_rng(seed).dirichlet(np.ones(n))
        else:
            raise ValueError(f"x0 must be 'uniform', 'random' or an array, got {x0!r}")
    else:
        start = np.asarray(x0, dtype=np.float64)
        if start.shape != (n,):
            raise ValueError(f"x0 must have shape ({n},), got {start.shape}")
    start = np.clip(start, lo, hi)
    t = _Tracker(evaluate, n, budget)

    def loss(x: np.ndarray) -> float:
        return float(_to_loss(t(np.asarray(x)[None, :]))[0])

    options: dict[str, Any] = {"maxfev": budget}
    if method == "Nelder-Mead":
        options["initial_simplex"] = np.clip(
            np.vstack([start, start[None, :] + 0.5 * (np.eye(n) - start[None, :])]), lo, hi)
    message = "stopped at the evaluation budget"
    try:
        out = optimize.minimize(loss, start, method=method, bounds=[(lo, hi)] * n, options=options)
        message = str(out.message)
    except _BudgetExhausted:
        pass
    return t.result("local", method=method, message=message)


def random_search(n_experts: int, evaluate: Evaluate, *, budget: int, seed: int = 0,
                  alpha: float = 1.0, batch_size: int = 20) -> BaselineResult:
    """Random search: ``budget`` points drawn from Dirichlet(alpha) on the simplex.

    Args:
        n_experts: N.
        evaluate: the utility.
        budget: number of points (>= 1).
        seed: seed of the numpy Generator.
        alpha: Dirichlet concentration (1 = uniform on the simplex).
        batch_size: points per ``evaluate`` call (20 = one swarm iteration).

    Returns:
        Result with the best point drawn.
    """
    n = _check_n(n_experts)
    budget = _positive_budget(budget, "random search")
    if not alpha > 0 or batch_size < 1:
        raise ValueError(f"alpha must be > 0 and batch_size >= 1, got {alpha}, {batch_size}")
    rng = make_rng(seed)
    t = _Tracker(evaluate, n, budget)
    done = 0
    while done < budget:
        k = min(batch_size, budget - done)
        t(rng.dirichlet(np.full(n, float(alpha)), size=k))
        done += k
    return t.result("random", alpha=float(alpha))


#: Every baseline by name; all take ``(n_experts, evaluate, *, budget, seed, **options)``.
BASELINES: dict[str, Callable[..., BaselineResult]] = {
    "best_single": best_single,
    "uniform": uniform_mixture,
    "greedy": greedy_ensemble,
    "em": em_baseline,
    "differential_evolution": differential_evolution_search,
    "local": local_search,
    "random": random_search,
}


def run_baseline(name: str, n_experts: int, evaluate: Evaluate, *, budget: int | None = None,
                 seed: int = 0, **options: Any) -> BaselineResult:
    """Run a baseline by name (see :data:`BASELINES`).

    Args:
        name: baseline name.
        n_experts: N.
        evaluate: the utility.
        budget: evaluation budget (required by the budgeted ones).
        seed: seed.
        **options: baseline-specific options (``L``/``groups`` for ``em``, ``method`` for
            ``local``, ...).

    Raises:
        ValueError: on an unknown name (with the closest known one).
    """
    fn = BASELINES.get(name)
    if fn is None:
        near = difflib.get_close_matches(name, list(BASELINES), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"unknown baseline {name!r}{hint} (known: {', '.join(BASELINES)})")
    return fn(n_experts, evaluate, budget=budget, seed=seed, **options)
