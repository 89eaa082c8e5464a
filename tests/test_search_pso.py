"""Tests for logit_swarm.search.pso: Model Swarms Algorithm 1 in mixing space, ask/tell."""

from __future__ import annotations

import json

import numpy as np
import pytest

from logit_swarm.search.methods.pso import (
    PSO,
    SwarmConfig,
    init_particles,
    init_state,
    init_velocities,
    is_done,
    iterations_since_improvement,
    observe,
    update,
    velocity_update,
)

TARGET = np.array([0.5, 0.3, 0.2, 0.0])


def mixture_utility(W: np.ndarray) -> np.ndarray:
    """-|w~ - target| with w~ the clipped, renormalised weights (mode "probs"): optimum is a mixture."""
    c = np.clip(W, 0.0, None)
    c = c / c.sum(axis=1, keepdims=True)
    return -np.linalg.norm(c - TARGET, axis=1)


def run(pso: PSO, evaluate) -> list[np.ndarray]:
    """Drive a PSO to the end; return every asked matrix."""
    asked = []
    while not pso.done:
        W = pso.ask()
        asked.append(W)
        pso.tell(W, evaluate(W))
    return asked


# ---------------------------------------------------------------------------------------------
# The update rule, by hand
# ---------------------------------------------------------------------------------------------

X = np.array([[1.0, 0.0]])
V = np.array([[0.5, -0.5]])
P = np.array([[0.0, 1.0]])
G = np.array([0.5, 0.5])
WORST = np.array([2.0, -1.0])
ONES = np.ones((1, 4))


def test_velocity_update_with_r_all_one_is_hand_checkable():
    cfg = SwarmConfig(inertia=0.4, cognitive=0.3, social=0.3, repel=0.3)
    # 0.4*[.5,-.5] + 0.3*(p-x)=[-.3,.3] + 0.3*(g-x)=[-.15,.15] + 0.3*(x-w)=[-.3,.3] = [-.55,.55]
    # divided by C = 1.3
    v = velocity_update(X, V, P, G, WORST, cfg, ONES)
    np.testing.assert_allclose(v, [[-0.55 / 1.3, 0.55 / 1.3]], rtol=0, atol=1e-15)


def test_velocity_update_without_repel_term_drops_it_from_c():
    cfg = SwarmConfig(inertia=0.4, cognitive=0.3, social=0.3, repel=0.3, repel_term=False)
    v = velocity_update(X, V, P, G, WORST, cfg, ONES)
    np.testing.assert_allclose(v, [[-0.25, 0.25]], rtol=0, atol=1e-15)  # (.2-.3-.15)/1.0


def test_velocity_update_random_factors_scale_each_term():
    cfg = SwarmConfig(inertia=0.4, cognitive=0.3, social=0.3, repel=0.3)
    np.testing.assert_allclose(velocity_update(X, V, P, G, WORST, cfg, np.array([[1.0, 0, 0, 0]])), V)
    np.testing.assert_allclose(velocity_update(X, V, P, G, WORST, cfg, np.array([[0, 0, 1.0, 0]])), G - X)
    # all r = 0 -> C = 0 -> zero velocity, not NaN
    assert np.array_equal(velocity_update(X, V, P, G, WORST, cfg, np.zeros((1, 4))), np.zeros((1, 2)))


def test_update_moves_by_step_length_times_velocity_deterministic():
    cfg = SwarmConfig(swarm_size=4, weight_randomness=False, velocity_init="zero", step_length=0.5,
                      inertia=0.4, cognitive=0.3, social=0.2, repel=0.1, restart=False)
    s = init_state(3, cfg, 0)
    s = observe(s, cfg, np.array([0.1, 0.9, 0.2, 0.0]))
    s2 = update(s, cfg)
    x = np.array(s.positions)
    g, w = np.array(s.gbest_position), np.array(s.gworst_position)
    # C = 1: v = .4*0 + .3*(p - x) + .2*(g - x) + .1*(x - w), and p = x right after the init
    v = 0.2 * (g - x) + 0.1 * (x - w)
    np.testing.assert_allclose(s2.velocities, v, atol=1e-15)
    np.testing.assert_allclose(s2.positions, x + 0.5 * v, atol=1e-15)
    assert np.array_equal(g, x[1]) and np.array_equal(w, x[3])


# ---------------------------------------------------------------------------------------------
# Initialisation
# ---------------------------------------------------------------------------------------------


def test_init_particles_one_hots_first_then_recomputable_crossover():
    cfg = SwarmConfig(swarm_size=9)
    X0 = init_particles(3, cfg, np.random.default_rng(123))
    np.testing.assert_array_equal(X0[:3], np.eye(3))
    rng = np.random.default_rng(123)
    rows = [np.eye(3)[i] for i in range(3)]
    w1s = []
    while len(rows) < 9:
        k = len(rows)
        i = int(rng.integers(k))
        j = int(rng.integers(k - 1))
        j += j >= i
        w1 = 2.0 * rng.random()
        w1s.append(w1)
        rows.append(w1 * rows[i] + (1 - w1) * rows[j])
    np.testing.assert_array_equal(X0, np.stack(rows))
    np.testing.assert_allclose(X0.sum(axis=1), 1.0, atol=1e-12)  # affine children
    assert all(0.0 <= w < 2.0 for w in w1s)


def test_init_particles_refuses_fewer_particles_than_experts_and_single_expert():
    with pytest.raises(ValueError, match="swarm_size"):
        init_particles(5, SwarmConfig(swarm_size=4), np.random.default_rng(0))
    with pytest.raises(ValueError, match="at least 2 experts"):
        init_particles(1, SwarmConfig(swarm_size=4), np.random.default_rng(0))
    X0 = init_particles(4, SwarmConfig(swarm_size=4), np.random.default_rng(0))
    np.testing.assert_array_equal(X0, np.eye(4))  # no crossover needed


def test_random_velocity_points_to_another_particle():
    x = init_particles(3, SwarmConfig(swarm_size=6), np.random.default_rng(0))
    v = init_velocities(x, "random", np.random.default_rng(1))
    for i in range(6):
        target = x[i] + v[i]
        matches = [j for j in range(6) if np.allclose(target, x[j], atol=1e-12)]
        assert matches and i not in matches


def test_best_velocity_init_points_at_global_best_after_initial_evaluation():
    cfg = SwarmConfig(swarm_size=5, velocity_init="best")
    pso = PSO(3, cfg, seed=0)
    W = pso.ask()
    u = np.array([0.0, 3.0, 1.0, 2.0, -1.0])
    pso.tell(W, u)
    np.testing.assert_array_equal(pso.state.velocities, W[1][None, :] - W)


# ---------------------------------------------------------------------------------------------
# Restart, stopping, step schedule
# ---------------------------------------------------------------------------------------------


def constant(W):
    return np.zeros(len(W))


@pytest.mark.parametrize("cooldown,expected", [(2, [3, 6, 9]), (0, [3, 4, 5, 6, 7, 8, 9, 10])])
def test_restart_after_stagnation_with_cooldown(cooldown, expected):
    # Nobody ever improves (constant utility). Stagnation count = 1 + iterations since the best,
    # threshold 0.3 * 10 = 3 -> first restart in the 3rd move; then blocked `cooldown` moves.
    cfg = SwarmConfig(swarm_size=4, patience=10, restart_patience=0.3, restart_cooldown=cooldown,
                      max_iter=50)
    pso = PSO(3, cfg, seed=0)
    restarted_at = []
    while not pso.done:
        W = pso.ask()
        s = pso.state
        if s.restarted:
            assert s.restarted == (0, 1, 2, 3)
            restarted_at.append(s.iteration + 1)
            # restarted: x = p, v = 0, then the normal update: x_new = p + lambda * v_new
            np.testing.assert_allclose(s.positions, s.pbest_positions + s.step_length * s.velocities,
                                       atol=1e-12)
        pso.tell(W, constant(W))
    assert restarted_at == expected
    assert pso.iteration == 10  # patience: g flat for 10 iterations


def test_no_restart_when_disabled():
    cfg = SwarmConfig(swarm_size=4, restart=False, restart_patience=0.1)
    pso = PSO(3, cfg, seed=0)
    while not pso.done:
        W = pso.ask()
        assert pso.state.restarted == ()
        pso.tell(W, constant(W))


def test_patience_stop_counts_flat_iterations_after_last_improvement():
    cfg = SwarmConfig(swarm_size=4, patience=5, max_iter=100)
    calls = []

    def rises_twice(W):
        calls.append(len(W))
        return np.full(len(W), float(min(len(calls) - 1, 2)))  # 0, 1, 2, 2, 2, ...

    pso = PSO(3, cfg, seed=0)
    run(pso, rises_twice)
    assert pso.state.g_history[:3] == (0.0, 1.0, 2.0)
    assert pso.iteration == 2 + 5
    assert iterations_since_improvement(pso.state.g_history) == 5
    assert pso.state.n_evaluations == 4 * (1 + 7) == sum(calls)


def test_max_iter_stop():
    cfg = SwarmConfig(swarm_size=4, patience=3, max_iter=7)
    counter = iter(range(10**6))
    pso = PSO(3, cfg, seed=0)
    run(pso, lambda W: np.full(len(W), float(next(counter))))  # always improving
    assert pso.iteration == 7 and pso.done
    with pytest.raises(RuntimeError, match="done"):
        pso.ask()
    assert PSO(3, SwarmConfig(swarm_size=4, max_iter=0), seed=0).done is False  # not evaluated yet


def test_step_length_schedule():
    cfg = SwarmConfig(swarm_size=4, step_length=1.0, step_length_factor=0.5, min_step_length=0.1,
                      max_iter=6, patience=100)
    pso = PSO(3, cfg, seed=0)
    seen = []
    while not pso.done:
        W = pso.ask()
        pso.tell(W, mixture_utility(np.pad(W, ((0, 0), (0, 1)))))
        seen.append(pso.state.step_length)
    # no decay after the initial evaluation, then x0.5 per iteration down to the floor
    assert seen == [1.0, 0.5, 0.25, 0.125, 0.1, 0.1, 0.1]


# ---------------------------------------------------------------------------------------------
# Seeding, NaN, invariants, ask/tell contract, serialisation
# ---------------------------------------------------------------------------------------------


def test_same_seed_same_trajectory_and_different_seeds_differ():
    cfg = SwarmConfig(max_iter=15)
    a = run(PSO(4, cfg, seed=7), mixture_utility)
    b = run(PSO(4, cfg, seed=7), mixture_utility)
    c = run(PSO(4, cfg, seed=8), mixture_utility)
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    # a Generator works too and gives the same as its int seed
    d = run(PSO(4, cfg, seed=np.random.default_rng(7)), mixture_utility)
    assert all(np.array_equal(x, y) for x, y in zip(a, d))


def test_nan_and_posinf_are_worst_never_best():
    cfg = SwarmConfig(swarm_size=6, max_iter=10)

    def flaky(W):
        u = mixture_utility(W)
        u[0] = np.nan  # particle 0 always fails
        u[1] = np.inf  # a broken utility, not a perfect score
        return u

    pso = PSO(4, cfg, seed=0)
    while not pso.done:
        W = pso.ask()
        pso.tell(W, flaky(W))
        s = pso.state
        assert np.isfinite(s.gbest_utility)
        assert s.pbest_utilities[0] == -np.inf and s.pbest_utilities[1] == -np.inf
        assert s.gworst_utility == -np.inf
        assert not np.isnan(s.utilities).any()
    best_w, best_u = pso.best
    assert np.isclose(best_u, mixture_utility(best_w[None, :])[0])


def test_all_nan_search_ends_with_minus_inf():
    pso = PSO(3, SwarmConfig(swarm_size=4, patience=2), seed=0)
    run(pso, lambda W: np.full(len(W), np.nan))
    assert pso.best.utility == -np.inf and pso.iteration == 2


def test_positions_always_sum_to_one():
    pso = PSO(4, SwarmConfig(max_iter=20), seed=3)
    for W in run(pso, mixture_utility):
        np.testing.assert_allclose(W.sum(axis=1), 1.0, atol=1e-9)


def test_pso_beats_every_one_hot_and_uniform_on_a_mixture_optimum():
    one_hots = mixture_utility(np.eye(4)).max()
    uniform = mixture_utility(np.full((1, 4), 0.25))[0]
    for seed in range(3):
        pso = PSO(4, SwarmConfig(), seed=seed)
        run(pso, mixture_utility)
        assert pso.best.utility > max(one_hots, uniform) + 0.05


def test_ask_is_idempotent_and_tell_checks_its_input():
    pso = PSO(3, SwarmConfig(swarm_size=4), seed=0)
    with pytest.raises(ValueError, match="differ"):  # the initial swarm is what is pending
        PSO(3, SwarmConfig(swarm_size=4), seed=0).tell(np.eye(3), [0, 0, 0])
    W = pso.ask()
    np.testing.assert_array_equal(W, pso.ask())
    W[0, 0] = 99.0  # ask returns a copy: the caller may scribble on it
    W = pso.ask()
    with pytest.raises(ValueError, match="differ"):
        pso.tell(W[::-1], np.zeros(4))
    with pytest.raises(ValueError, match="4 utilities"):
        pso.tell(W, np.zeros(3))
    pso.tell(W, np.zeros(4))
    with pytest.raises(ValueError, match="without a pending ask"):
        pso.tell(W, np.zeros(4))
    with pytest.raises(RuntimeError):
        _ = PSO(3, SwarmConfig(swarm_size=4), seed=0).best


def test_pure_functions_refuse_out_of_order_calls():
    cfg = SwarmConfig(swarm_size=4)
    s = init_state(3, cfg, 0)
    with pytest.raises(ValueError):
        update(s, cfg)  # not evaluated yet
    s = observe(s, cfg, np.zeros(4))
    with pytest.raises(ValueError):
        observe(s, cfg, np.zeros(4))  # nothing pending
    assert not is_done(s, cfg)


def test_state_is_frozen():
    s = PSO(3, SwarmConfig(swarm_size=4), seed=0).state
    with pytest.raises(ValueError):
        s.positions[0, 0] = 1.0
    with pytest.raises(AttributeError):
        s.iteration = 3  # type: ignore[misc]


def test_state_dict_json_round_trip_continues_bit_exactly():
    cfg = SwarmConfig(max_iter=20, drop_particle=0.2)
    a = PSO(4, cfg, seed=11)
    for _ in range(6):
        W = a.ask()
        u = mixture_utility(W)
        u[0] = np.nan
        a.tell(W, u)
    text = json.dumps(a.state_dict(), allow_nan=False)  # strict JSON
    b = PSO.from_state_dict(json.loads(text))
    wa, wb = run(a, mixture_utility), run(b, mixture_utility)
    assert len(wa) == len(wb) and all(np.array_equal(x, y) for x, y in zip(wa, wb))
    assert a.state_dict() == b.state_dict()
    with pytest.raises(ValueError, match="not a PSO checkpoint"):
        PSO.from_state_dict({"format": "pickle"})


def test_dropout_skips_evaluations_and_keeps_previous_utility():
    cfg = SwarmConfig(swarm_size=8, drop_particle=0.5, drop_iter=0.3, max_iter=30, patience=100)
    pso = PSO(4, cfg, seed=0)
    W = pso.ask()
    pso.tell(W, mixture_utility(W))
    sizes = []
    while not pso.done:
        before = np.array(pso.state.utilities)
        W = pso.ask()
        pending = pso.state.pending
        sizes.append(len(W))
        pso.tell(W, mixture_utility(W))
        skipped = [i for i in range(8) if i not in pending]
        np.testing.assert_array_equal(pso.state.utilities[skipped], before[skipped])
    assert 0 in sizes and min(s for s in sizes if s) < 8
    assert pso.state.n_evaluations == 8 + sum(sizes)


def test_config_validation_and_round_trip():
    cfg = SwarmConfig(step_length=1, patience=4)
    assert isinstance(cfg.step_length, float)
    assert SwarmConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="did you mean 'inertia'"):
        SwarmConfig.from_dict({"inertai": 0.1})
    for bad in [dict(swarm_size=1), dict(inertia=-1), dict(velocity_init="fast"),
                dict(drop_iter=1.0), dict(patience=0), dict(swarm_size=2.5),
                dict(inertia=0, cognitive=0, social=0, repel=0), dict(step_length=float("nan")),
                dict(restart="yes")]:
        with pytest.raises(ValueError):
            SwarmConfig(**bad)
    assert cfg.replace(max_iter=3).max_iter == 3
