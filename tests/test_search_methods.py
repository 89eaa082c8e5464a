"""Tests for the search methods (logit_swarm.search.methods) and the mixing space."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import optimize
from scipy.special import logsumexp

from logit_swarm.search import project_simplex, run_method, space_for_mode
from logit_swarm.search.methods import METHODS, GeneratorSearcher, SearchContext, Searcher
from logit_swarm.search.methods.em import em_fit, em_weights, mixture_loglik
from logit_swarm.search.methods.pso import PSO, SwarmConfig, init_particles

TARGET = np.array([0.5, 0.3, 0.2, 0.0])


def mixture_utility(W):
    return -np.linalg.norm(np.asarray(W) - TARGET, axis=1)


class Recorder:
    """Wraps a utility and records the number of rows of every call."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, W):
        self.calls.append(len(W))
        return self.fn(W)


def run(name, fn, n=4, **kw):
    return run_method(name, fn, n, progress=False, **kw)


# ---------------------------------------------------------------------------------------------
# The space
# ---------------------------------------------------------------------------------------------


def brute_force_projection(x, grid=200):
    """Nearest point of a fine simplex grid (3 experts), for checking the projection."""
    best, best_d = None, np.inf
    for a in range(grid + 1):
        for b in range(grid + 1 - a):
            p = np.array([a, b, grid - a - b]) / grid
            d = np.sum((p - x) ** 2)
            if d < best_d:
                best, best_d = p, d
    return best


@pytest.mark.parametrize("seed", range(5))
def test_simplex_projection_is_the_nearest_mixture(seed):
    x = np.random.default_rng(seed).normal(0.3, 1.0, size=3)
    w = project_simplex(x)
    assert (w >= 0).all() and w.sum() == pytest.approx(1.0, abs=1e-15)
    np.testing.assert_allclose(w, brute_force_projection(x), atol=6e-3)
    # optimality (KKT): no point of the simplex is closer
    for v in np.random.default_rng(seed + 10).dirichlet(np.ones(3), size=200):
        assert np.sum((w - x) ** 2) <= np.sum((v - x) ** 2) + 1e-12


def test_projection_keeps_mixtures_and_experts_and_works_on_rows():
    W = np.vstack([np.eye(4), np.random.default_rng(0).dirichlet(np.ones(4), size=5)])
    np.testing.assert_allclose(project_simplex(W), W, atol=1e-15)
    np.testing.assert_array_equal(project_simplex(np.array([2.0, -1.0, 0.5])), [1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="non-finite"):
        project_simplex(np.array([np.nan, 1.0]))


def test_logit_space_is_a_box():
    s = space_for_mode("logits")
    np.testing.assert_array_equal(s.weights(np.array([[3.0, -2.0, 0.5]])), [[1.0, -1.0, 0.5]])
    assert s.name == "box" and space_for_mode("probs").name == "simplex"


@pytest.mark.parametrize("mode", ["probs", "logits"])
def test_starting_swarm_is_every_expert_plus_valid_crossover_children(mode):
    """Done-when item: crossover children are valid positions of the space."""
    space = space_for_mode(mode)
    for seed in range(20):
        x = init_particles(5, SwarmConfig(swarm_size=20), np.random.default_rng(seed), space)
        np.testing.assert_array_equal(x[:5], np.eye(5))
        children = x[5:]
        if mode == "probs":
            assert (children >= 0).all() and np.allclose(children.sum(axis=1), 1.0, atol=1e-12)
            assert ((children > 1e-12).sum(axis=1) >= 2).all()  # a child mixes its parents
        else:
            assert (children >= -1).all() and (children <= 1).all()


def test_bounded_swarm_positions_stay_mixtures_for_the_whole_search():
    pso = PSO(4, SwarmConfig(swarm_size=12, max_iter=30, patience=100, step_length=1.0, inertia=0.4),
              seed=0, space=space_for_mode("probs"))
    while not pso.done:
        W = pso.ask()
        assert (W >= 0).all() and np.allclose(W.sum(axis=1), 1.0, atol=1e-12)
        pso.tell(W, mixture_utility(W))
    assert pso.best.utility > mixture_utility(np.eye(4)).max() + 0.1


# ---------------------------------------------------------------------------------------------
# The interface
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["swarm", "swarm_restarts", "best_single", "uniform", "greedy", "random",
                                  "differential_evolution", "nelder_mead", "cma_es", "ngopt"])
def test_every_search_method_builds_a_searcher(name):
    if name == "cma_es":
        pytest.importorskip("cma")
    if name == "ngopt":
        pytest.importorskip("nevergrad")
    info = METHODS.get(name)
    ctx = SearchContext(n_experts=3, space=space_for_mode("probs"), seed=0, budget=40, batch=6)
    s = info.make(ctx)
    assert isinstance(s, Searcher)
    x = s.ask()
    limit = SwarmConfig().swarm_size if name == "swarm" else 6  # the swarm's own size, else one batch
    assert x.ndim == 2 and x.shape[1] == 3 and 1 <= len(x) <= max(limit, 3 + 1)
    np.testing.assert_array_equal(s.ask(), x)  # ask twice without tell: same rows
    with pytest.raises(ValueError, match="differ"):
        s.tell(x + 1.0, np.zeros(len(x)))


def test_generator_searcher_checks_shapes():
    def bad():
        yield np.zeros((2, 5))

    with pytest.raises(ValueError, match="expected"):
        GeneratorSearcher(bad(), 3)


# ---------------------------------------------------------------------------------------------
# Static, greedy
# ---------------------------------------------------------------------------------------------


def test_best_single_one_call_and_nan_never_wins():
    def u(W):
        out = W @ np.array([0.1, 0.7, 0.3])
        out[1] = np.nan
        return out

    rec = Recorder(u)
    r = run("best_single", rec, n=3)
    assert rec.calls == [3] and r.n_evaluations == 3
    np.testing.assert_array_equal(r.weights, [0, 0, 1])
    assert r.utility == pytest.approx(0.3)


def test_uniform():
    r = run("uniform", mixture_utility)
    np.testing.assert_array_equal(r.weights, np.full(4, 0.25))
    assert r.n_evaluations == 1


def test_greedy_ensemble_adds_in_rank_order_while_it_helps():
    target = np.array([0.5, 0.0, 0.5, 0.0])

    def u(W):
        return -np.abs(W - target).sum(axis=1) - 0.01 * W @ np.arange(4)

    rec = Recorder(u)
    r = run("greedy", rec)
    np.testing.assert_allclose(r.weights, [0.5, 0, 0.5, 0])
    assert r.n_evaluations == 2 * 4 - 1 == sum(rec.calls)


def test_greedy_ties_policy():
    flat = lambda W: np.zeros(len(W))  # noqa: E731
    tried = []
    run("greedy", lambda W: tried.append(W.copy()) or flat(W), n=3)
    assert np.allclose(tried[-1], [[1 / 3] * 3])  # ties accepted: the last candidate joins a set of 2
    tried.clear()
    run("greedy", lambda W: tried.append(W.copy()) or flat(W), n=3, options={"accept_ties": False})
    assert np.allclose(tried[-1], [[0.5, 0.0, 0.5]])  # never accepted: always {0} + candidate


# ---------------------------------------------------------------------------------------------
# Budgeted optimisers: same space, same budget, they actually optimise
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["random", "differential_evolution", "nelder_mead", "cma_es", "ngopt",
                                  "swarm_restarts"])
def test_budgeted_methods_beat_uniform_within_budget_and_are_seeded(name):
    if name == "cma_es":
        pytest.importorskip("cma")
    if name == "ngopt":
        pytest.importorskip("nevergrad")
    rec = Recorder(mixture_utility)
    r = run(name, rec, budget=200, seed=0)
    assert 180 < r.n_evaluations <= 200 and max(rec.calls) <= 20
    assert r.utility > mixture_utility(np.full((1, 4), 0.25))[0] + 0.1
    again = run(name, mixture_utility, budget=200, seed=0)
    np.testing.assert_array_equal(again.weights, r.weights)


@pytest.mark.parametrize("name", ["random", "differential_evolution", "nelder_mead", "cma_es", "ngopt"])
def test_budgeted_methods_survive_nan_utilities(name):
    if name == "cma_es":
        pytest.importorskip("cma")
    if name == "ngopt":
        pytest.importorskip("nevergrad")

    def u(W):
        out = mixture_utility(W)
        out[W[:, 0] > 0.4] = np.nan
        return out

    r = run(name, u, budget=60, seed=1)
    assert np.isfinite(r.utility) and r.weights[0] <= 0.4


def test_optional_optimisers_say_how_to_install(monkeypatch):
    import builtins

    from logit_swarm.search.methods import MethodUnavailable

    real = builtins.__import__

    def fake(name, *a, **k):
        if name in ("cma", "nevergrad"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    for name, pkg in (("cma_es", "cma"), ("ngopt", "nevergrad")):
        with pytest.raises(MethodUnavailable, match=f"'{pkg}'.*pip install"):
            run(name, mixture_utility, budget=10)


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


def test_em_fit_reports_diagnostics():
    rng = np.random.default_rng(1)
    L = np.log(rng.uniform(0.05, 1.0, size=(50, 3)))
    w, d = em_fit(L)
    assert d["converged"] and d["gap"] <= 1e-10
    np.testing.assert_allclose(w, em_weights(L))


def test_em_needs_the_task_and_mode_probs():
    from logit_swarm.search.methods import MethodUnavailable

    with pytest.raises(MethodUnavailable, match="task"):
        run("em", mixture_utility)
    with pytest.raises(MethodUnavailable, match="mode"):
        run("em", mixture_utility, mode="logits")


# ---------------------------------------------------------------------------------------------
# Weight-space merge (SLERP)
# ---------------------------------------------------------------------------------------------


def test_slerp_tensor_endpoints_and_the_sphere():
    import torch

    from logit_swarm.search.methods.merge import slerp_tensor

    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    torch.testing.assert_close(slerp_tensor(a, b, 0.0), a)
    torch.testing.assert_close(slerp_tensor(a, b, 1.0), b)
    mid = slerp_tensor(a, b, 0.5)
    torch.testing.assert_close(mid, torch.tensor([2 ** -0.5, 2 ** -0.5]))  # on the unit circle, not at 0.5
    torch.testing.assert_close(slerp_tensor(a, 2 * a, 0.5), 1.5 * a)  # parallel: linear


def test_slerp_runs_on_same_architecture_pairs_and_is_na_otherwise(experts):
    import logit_swarm as ls
    from logit_swarm.search.methods import MethodUnavailable
    from logit_swarm.search.methods.merge import merge_compatible, run_slerp, slerp_expert

    same = [experts["gpt2_a"], experts["gpt2_b"]]
    assert merge_compatible(same) is None
    assert merge_compatible([experts["gpt2_a"], experts["llama_bl"]]) == "n/a (architectures differ)"
    m = slerp_expert(same, 0.0)  # t = 0 is the first expert's weights
    ctx, cont = ["Hello"], [" world"]
    assert ls.Ensemble([m]).logprob(ctx, cont)[0] == pytest.approx(ls.Ensemble([same[0]]).logprob(ctx, cont)[0],
                                                                  abs=1e-5)
    task = ls.load_task({"kind": "likelihood", "name": "lik", "data": {"dev": [{"text": "hello world"}] * 2}})
    res = run_slerp(task, same, "dev", "probs", False, None)
    assert res.details["t"] in (0.25, 0.5, 0.75) and np.isfinite(res.utility)
    with pytest.raises(MethodUnavailable, match="architectures differ"):
        run_slerp(task, [experts["gpt2_a"], experts["llama_sp"]], "dev", "probs", False, None)
