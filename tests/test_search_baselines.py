"""Tests for logit_swarm.search.baselines."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import optimize
from scipy.special import logsumexp

from logit_swarm.search.baselines import (
    BASELINES,
    best_single,
    differential_evolution_search,
    em_baseline,
    em_weights,
    greedy_ensemble,
    local_search,
    mixture_loglik,
    random_search,
    run_baseline,
    uniform_mixture,
)

TARGET = np.array([0.5, 0.3, 0.2, 0.0])


def mixture_utility(W):
    c = np.clip(np.asarray(W), 0.0, None)
    c = c / c.sum(axis=1, keepdims=True)
    return -np.linalg.norm(c - TARGET, axis=1)


class Recorder:
    """Wraps a utility and records the number of rows of every call."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, W):
        self.calls.append(len(W))
        return self.fn(W)


# ---------------------------------------------------------------------------------------------
# Static baselines
# ---------------------------------------------------------------------------------------------


def test_best_single_one_call_and_nan_never_wins():
    def u(W):
        out = W @ np.array([0.1, 0.7, 0.3])
        out[1] = np.nan if W.shape[0] == 3 else out[1]
        return out

    rec = Recorder(u)
    r = best_single(3, rec)
    assert rec.calls == [3] and r.n_evaluations == 3
    np.testing.assert_array_equal(r.weights, [0, 0, 1])
    assert r.utility == pytest.approx(0.3) and r.details["expert"] == 2
    assert r.details["utilities"][1] is None  # NaN in strict JSON
    json.loads(r.to_json())
    with pytest.raises(ValueError, match="needs 3 evaluations"):
        best_single(3, u, budget=2)


def test_uniform():
    r = uniform_mixture(4, mixture_utility)
    np.testing.assert_array_equal(r.weights, np.full(4, 0.25))
    assert r.utility == pytest.approx(mixture_utility(np.full((1, 4), 0.25))[0]) and r.n_evaluations == 1


def test_greedy_ensemble_adds_in_rank_order_while_it_helps():
    # Experts 0 and 2 are good and complementary, 1 is poor, 3 is a near-copy of 0 that hurts.
    target = np.array([0.5, 0.0, 0.5, 0.0])

    def u(W):
        c = W / W.sum(axis=1, keepdims=True)
        return -np.abs(c - target).sum(axis=1) - 0.01 * np.arange(4)[None, :].dot(c.T).ravel()

    rec = Recorder(u)
    r = greedy_ensemble(4, rec)
    singles = u(np.eye(4))
    assert r.details["order"] == [int(i) for i in np.argsort(-singles, kind="stable")]
    assert r.details["chosen"] == [0, 2]
    np.testing.assert_allclose(r.weights, [0.5, 0, 0.5, 0])
    assert r.utility == pytest.approx(u(r.weights[None, :])[0])
    assert r.n_evaluations == 2 * 4 - 1 == sum(rec.calls)


def test_greedy_ties_policy():
    flat = lambda W: np.zeros(len(W))  # noqa: E731
    assert greedy_ensemble(3, flat).details["chosen"] == [0, 1, 2]
    assert greedy_ensemble(3, flat, accept_ties=False).details["chosen"] == [0]


# ---------------------------------------------------------------------------------------------
# EM
# ---------------------------------------------------------------------------------------------


def scipy_simplex_optimum(L, c):
    """Reference: maximise sum_t c_t log(sum_i w_i p_ti) over the simplex with SLSQP."""
    n = L.shape[1]
    P = np.exp(L)

    def neg(w):
        return -c @ np.log(P @ w + 1e-300)

    def grad(w):
        return -(c / (P @ w + 1e-300)) @ P

    best = None
    for start in [np.full(n, 1 / n)] + list(np.eye(n) * 0.9 + 0.1 / n):
        res = optimize.minimize(neg, start, jac=grad, method="SLSQP", bounds=[(0, 1)] * n,
                                constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1,
                                              "jac": lambda w: np.ones(n)}],
                                options={"ftol": 1e-14, "maxiter": 1000})
        if best is None or res.fun < best.fun:
            best = res
    return np.clip(best.x, 0, None) / np.clip(best.x, 0, None).sum(), -best.fun


@pytest.mark.parametrize("seed", range(6))
def test_em_matches_scipy_on_random_tables(seed):
    rng = np.random.default_rng(seed)
    t, n = 300, int(rng.integers(2, 6))
    # experts with different sharpness so some optima are interior, some on the boundary
    L = np.log(rng.dirichlet(np.ones(8) * rng.uniform(0.2, 2.0), size=(t, n))[..., 0] + 1e-12)
    if seed % 2:
        L[:, 0] -= 3.0  # a clearly worse expert: its optimal weight is 0
    w = em_weights(L, tol=1e-12)
    assert (w >= 0).all() and w.sum() == pytest.approx(1.0, abs=1e-12)
    w_ref, obj_ref = scipy_simplex_optimum(L, np.full(t, 1 / t))
    obj = mixture_loglik(w, L)
    assert obj >= obj_ref - 1e-9  # EM is at least as good as the reference optimiser
    assert obj == pytest.approx(obj_ref, abs=1e-7)
    np.testing.assert_allclose(w, w_ref, atol=2e-3)
    if seed % 2:
        assert w[0] < 1e-6


def test_em_length_normalised_matches_scipy():
    rng = np.random.default_rng(42)
    lengths = rng.integers(1, 30, size=25)
    groups = np.repeat(np.arange(25), lengths)
    L = np.log(rng.uniform(0.01, 1.0, size=(len(groups), 3)))
    w = em_weights(L, groups=groups, length_normalize=True, tol=1e-12)
    c = 1.0 / lengths[groups]
    _, obj_ref = scipy_simplex_optimum(L, c / c.sum())
    assert mixture_loglik(w, L, groups, length_normalize=True) == pytest.approx(obj_ref, abs=1e-8)
    # without length normalisation, groups do not change the optimum
    np.testing.assert_allclose(em_weights(L, groups=groups), em_weights(L), atol=1e-12)


def test_em_objective_is_the_probs_mode_loglik_and_beats_vertices():
    rng = np.random.default_rng(0)
    L = np.log(rng.uniform(0.05, 1.0, size=(100, 4)))
    w = em_weights(L)
    direct = logsumexp(L + np.log(w)[None, :], axis=1).mean()
    assert mixture_loglik(w, L) == pytest.approx(direct)
    for i in range(4):
        assert mixture_loglik(w, L) >= mixture_loglik(np.eye(4)[i], L)


def test_em_input_validation():
    with pytest.raises(ValueError, match="NaN"):
        em_weights(np.array([[np.nan, 0.0]]))
    with pytest.raises(ValueError, match="probability 0 under every expert"):
        em_weights(np.array([[-np.inf, -np.inf], [-1.0, -2.0]]))
    with pytest.raises(ValueError, match="groups"):
        em_weights(np.zeros((3, 2)), length_normalize=True)
    with pytest.raises(ValueError, match="shape"):
        em_weights(np.zeros((3, 2)), groups=[0, 1], length_normalize=True)
    # -inf for one expert only is fine: that expert gets weight 0 where it cannot explain a unit
    w = em_weights(np.array([[-np.inf, -1.0], [-1.0, -1.0]]))
    assert w[1] == pytest.approx(1.0)


def test_em_baseline_evaluates_once_and_reports_diagnostics():
    rng = np.random.default_rng(1)
    L = np.log(rng.uniform(0.05, 1.0, size=(50, 3)))
    rec = Recorder(lambda W: W @ np.array([1.0, 2.0, 3.0]))
    r = em_baseline(3, rec, L=L)
    assert rec.calls == [1] and r.details["converged"] and r.details["gap"] <= 1e-10
    np.testing.assert_allclose(r.weights, em_weights(L))
    assert em_baseline(3, None, L=L).n_evaluations == 0
    with pytest.raises(ValueError, match="expert columns"):
        em_baseline(4, rec, L=L)


# ---------------------------------------------------------------------------------------------
# Budgeted optimisers
# ---------------------------------------------------------------------------------------------


def test_differential_evolution_vectorised_within_budget_and_seeded():
    rec = Recorder(mixture_utility)
    r = differential_evolution_search(4, rec, budget=300, seed=0, population=20)
    assert set(rec.calls) == {20}, "one evaluate call per generation, whole population"
    assert r.n_evaluations == sum(rec.calls) <= 300
    assert r.utility >= mixture_utility(np.eye(4)).max()  # the one-hots are in the first generation
    assert r.utility == pytest.approx(mixture_utility(r.weights[None, :])[0])
    r2 = differential_evolution_search(4, mixture_utility, budget=300, seed=0, population=20)
    np.testing.assert_array_equal(r.weights, r2.weights)
    with pytest.raises(ValueError, match="budget"):
        differential_evolution_search(4, mixture_utility, budget=3)


@pytest.mark.parametrize("method", ["Nelder-Mead", "Powell"])
def test_local_search_respects_budget_exactly_and_improves_on_uniform(method):
    rec = Recorder(mixture_utility)
    r = local_search(4, rec, budget=60, method=method)
    assert set(rec.calls) == {1} and r.n_evaluations == len(rec.calls) <= 60
    assert r.utility > mixture_utility(np.full((1, 4), 0.25))[0]
    with pytest.raises(ValueError, match="method"):
        local_search(4, mixture_utility, budget=10, method="BFGS")


def test_random_search_budget_batches_and_simplex():
    rows = []

    def u(W):
        rows.append(W)
        return mixture_utility(W)

    r = random_search(4, u, budget=45, seed=3, batch_size=20)
    assert [len(w) for w in rows] == [20, 20, 5] and r.n_evaluations == 45
    allw = np.vstack(rows)
    assert (allw >= 0).all() and np.allclose(allw.sum(axis=1), 1.0)
    assert r.utility == pytest.approx(mixture_utility(allw).max())
    np.testing.assert_array_equal(r.weights, random_search(4, mixture_utility, budget=45, seed=3).weights)
    assert not np.array_equal(r.weights, random_search(4, mixture_utility, budget=45, seed=4).weights)


@pytest.mark.parametrize("name", ["differential_evolution", "local", "random"])
def test_budgeted_baselines_survive_nan_utilities(name):
    def flaky(W):
        u = mixture_utility(W)
        u[W[:, 0] > 0.6] = np.nan
        return u

    r = run_baseline(name, 4, flaky, budget=80, seed=0)
    assert np.isfinite(r.utility) and r.weights[0] <= 0.6 + 1e-12


def test_registry_and_errors():
    assert set(BASELINES) == {"best_single", "uniform", "greedy", "em", "differential_evolution",
                              "local", "random"}
    with pytest.raises(ValueError, match="did you mean 'greedy'"):
        run_baseline("gredy", 3, mixture_utility)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        best_single(3, lambda W: np.zeros(2))
    with pytest.raises(ValueError, match="budget"):
        random_search(3, mixture_utility, budget=0)
