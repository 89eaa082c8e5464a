"""Model Swarms (Feng et al. 2024, Algorithm 1) in mixing space, as a pure ask/tell optimiser.

A *particle* is a raw weight vector ``w`` in R^N, one entry per expert. This module never touches a
model: it proposes weight vectors and is told one utility per vector (higher is better).

Weight convention
-----------------
Every search runs the swarm in a bounded :class:`~logit_swarm.search.space.MixingSpace`: in mode
``"probs"`` every position is a mixture (>= 0, sums to 1; moves are followed by the Euclidean
projection onto the simplex), in mode ``"logits"`` positions stay in the box ``[-1, 1]^N``
(clipped). The starting swarm is the N one-hot experts plus crossover children that are valid
points of the space (see :func:`init_particles`). The pure functions also accept ``space=None``,
the authors' unbounded rule: positions are raw vectors that stay in the affine hull of the initial
swarm (every position sums to 1), where with the argparse settings they drifted to |w| ~ 100.
Either way an expert that is not in the initial swarm could never gain weight, which is why
``swarm_size`` must be at least the number of experts.

How the state moves (the two halves of one iteration of Algorithm 1)
---------------------------------------------------------------------
``init_state``  one-hot experts + crossover children, initial velocities; all particles pending.
``observe``     record utilities: personal bests (strict improvement), all-time global best and
                global worst, history of g, step-length decay (not after the initial evaluation).
``update``      move: restart stagnant particles (x = p, v = 0, with a cooldown), velocity update,
                position update, optional dropout of evaluations; the moved particles are pending.
``is_done``     g unchanged for ``patience`` iterations, or ``max_iter`` iterations done.

Every function takes a frozen :class:`SwarmState` and returns a new one; the RNG is part of the
state (the bit generator's JSON-able state), so a state saved after any ``observe`` resumes to the
exact same trajectory. :class:`PSO` wraps the functions in an ``ask()`` / ``tell()`` object.

Where this follows the authors' code (``BunsenFeng/model_swarm`` ``search.py``) and where it does
not, with reasons, is said next to each rule below.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .._common import (
    array_from_json,
    array_to_json,
    float_from_json,
    float_to_json,
    frozen_array,
    make_rng,
    rank_scores,
    rng_from_state,
    rng_state,
)
from ..space import MixingSpace, space_for_mode
from .base import MethodInfo, register_method

__all__ = [
    "SwarmConfig",
    "SwarmState",
    "Best",
    "PSO",
    "init_particles",
    "init_velocities",
    "velocity_update",
    "init_state",
    "update",
    "observe",
    "is_done",
    "iterations_since_improvement",
    "state_to_dict",
    "state_from_dict",
]

VELOCITY_INIT_MODES = ("random", "zero", "best")
RESTART_TARGETS = ("pbest", "random")


# ============================================================================================
# Configuration
# ============================================================================================


@dataclass(frozen=True)
class SwarmConfig:
    """Hyper-parameters of one swarm search (immutable; JSON round-trip via to_dict/from_dict).

    Defaults are the paper's protocol: the settings the paper states (N = 20, patience 10,
    step length x0.95 per iteration with floor 0.1, restart patience c_r = 5, K = 50 iterations;
    Feng et al. 2024, as quoted in ``shared/notes/model_swarms.md``) and, for the four
    coefficients and the initial step length, which the authors' run scripts
    (``search_*.sh``) draw at random from grids, the middle value of each script grid.
    ``experiments/configs/paper_grid.yaml`` runs the scripts' grid itself. The argparse defaults
    of their ``search.py`` (0.4 / 0.3 / 0.3 / 0.3, lambda 1) are not what their scripts ran.

    Attributes:
        swarm_size: number of particles P (paper: N = 20 via the population step). Must be at least
            the number of experts, see the module docstring.
        inertia: phi_v, weight of the previous velocity (0.2 = middle of the scripts' {0.1, 0.2, 0.3};
            argparse default 0.4).
        cognitive: phi_p, pull towards the particle's personal best (0.3, middle of {0.1 ... 0.5}).
        social: phi_g, pull towards the global best (0.4, middle of {0.2 ... 0.6}; argparse 0.3).
        repel: phi_w, push away from the all-time global worst (0.05, middle of {0.01, 0.05, 0.1};
            argparse 0.3).
        step_length: initial lambda in ``x <- x + lambda v`` (0.7, the lower middle of the scripts'
            {0.5, 0.6, ..., 1.0}; argparse 1.0).
        step_length_factor: lambda is multiplied by this after every iteration (0.95).
        min_step_length: floor of lambda (0.1).
        patience: stop when the global best has not improved for this many iterations (10).
        restart_patience: a particle is restarted when its stagnation count reaches
            ``restart_patience * patience`` (0.5, i.e. 5 iterations: the paper's c_r = 5 and the
            argparse default; the scripts use 0.67).
        restart_cooldown: after a restart, a particle cannot be restarted again for this many
            iterations (3, as in the authors' later MoCo code; 0 = the original, which resets a
            stagnant particle every iteration).
        max_iter: maximum number of update iterations after the initial evaluation (paper K = 50;
            the code's default is 200).
        velocity_init: ``"random"`` (v_i = x_j - x_i for a random j != i; the default everywhere),
            ``"zero"`` or ``"best"`` (v_i = g - x_i after the initial evaluation).
        weight_randomness: draw r_v, r_p, r_g, r_w ~ U(0, 1) per particle per iteration; if False
            all four are 1 (the paper's "fully deterministic" ablation).
        repel_term: include the repel term (True).
        restart: restart stagnant particles at their personal best (True).
        drop_iter: "Dropout-K": probability that a whole iteration is not evaluated (0 = off).
        drop_particle: "Dropout-N": probability that one particle is not evaluated (0 = off).
            A skipped particle still moves but keeps its previous utility, as in the authors' code.
    """

    swarm_size: int = 20
    inertia: float = 0.2
    cognitive: float = 0.3
    social: float = 0.4
    repel: float = 0.05
    step_length: float = 0.7
    step_length_factor: float = 0.95
    min_step_length: float = 0.1
    patience: int = 10
    restart_patience: float = 0.5
    restart_cooldown: int = 3
    max_iter: int = 50
    velocity_init: str = "random"
    weight_randomness: bool = True
    repel_term: bool = True
    restart: bool = True
    drop_iter: float = 0.0
    drop_particle: float = 0.0
    restart_to: str = "pbest"
    r_low: float = 0.0

    def __post_init__(self) -> None:
        """Check types and ranges; coerce int-valued floats to float so equality is by value."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", int):
                if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                    raise ValueError(f"SwarmConfig.{f.name} must be an int, got {value!r}")
                object.__setattr__(self, f.name, int(value))
            elif f.type in ("float", float):
                if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                    raise ValueError(f"SwarmConfig.{f.name} must be a number, got {value!r}")
                if not np.isfinite(value):
                    raise ValueError(f"SwarmConfig.{f.name} must be finite, got {value!r}")
                object.__setattr__(self, f.name, float(value))
            elif f.type in ("bool", bool):
                if not isinstance(value, (bool, np.bool_)):
                    raise ValueError(f"SwarmConfig.{f.name} must be true or false, got {value!r}")
                object.__setattr__(self, f.name, bool(value))
        if self.swarm_size < 2:
            raise ValueError(f"SwarmConfig.swarm_size must be >= 2, got {self.swarm_size}")
        for name in ("inertia", "cognitive", "social", "repel"):
            if getattr(self, name) < 0:
                raise ValueError(f"SwarmConfig.{name} must be >= 0, got {getattr(self, name)}")
        total = self.inertia + self.cognitive + self.social + (self.repel if self.repel_term else 0.0)
        if total <= 0:
            raise ValueError("SwarmConfig: inertia + cognitive + social (+ repel) must be > 0, "
                             "otherwise the velocity update divides by zero")
        if self.step_length <= 0:
            raise ValueError(f"SwarmConfig.step_length must be > 0, got {self.step_length}")
        if self.step_length_factor <= 0:
            raise ValueError(f"SwarmConfig.step_length_factor must be > 0 (1 = no decay), "
                             f"got {self.step_length_factor}")
        if self.min_step_length < 0:
            raise ValueError(f"SwarmConfig.min_step_length must be >= 0, got {self.min_step_length}")
        if self.patience < 1:
            raise ValueError(f"SwarmConfig.patience must be >= 1, got {self.patience}")
        if self.restart_patience <= 0:
            raise ValueError(f"SwarmConfig.restart_patience must be > 0 (a fraction of patience), "
                             f"got {self.restart_patience}")
        if self.restart_cooldown < 0:
            raise ValueError(f"SwarmConfig.restart_cooldown must be >= 0, got {self.restart_cooldown}")
        if self.max_iter < 0:
            raise ValueError(f"SwarmConfig.max_iter must be >= 0, got {self.max_iter}")
        if self.velocity_init not in VELOCITY_INIT_MODES:
            raise ValueError(f"SwarmConfig.velocity_init must be one of {VELOCITY_INIT_MODES}, "
                             f"got {self.velocity_init!r}")
        if self.restart_to not in RESTART_TARGETS:
            raise ValueError(f"SwarmConfig.restart_to must be one of {RESTART_TARGETS}, got {self.restart_to!r}")
        if not -1.0 <= self.r_low < 1.0:
            raise ValueError(f"SwarmConfig.r_low must be in [-1, 1), got {self.r_low}")
        for name in ("drop_iter", "drop_particle"):
            p = getattr(self, name)
            if not 0.0 <= p < 1.0:
                raise ValueError(f"SwarmConfig.{name} must be in [0, 1), got {p}")

    def to_dict(self) -> dict[str, Any]:
        """All fields as a plain JSON-able dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SwarmConfig:
        """Build a config from a dict (e.g. parsed YAML); unknown keys are an error with a hint.

        Args:
            d: field name -> value; missing fields take their defaults.

        Raises:
            ValueError: on an unknown key (with the closest known name) or a bad value.
        """
        if not isinstance(d, dict):
            raise ValueError(f"SwarmConfig.from_dict expects a dict, got {type(d).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        for key in d:
            if key not in known:
                near = difflib.get_close_matches(str(key), known, n=1)
                hint = f"; did you mean {near[0]!r}?" if near else f"; known keys: {', '.join(known)}"
                raise ValueError(f"unknown swarm setting {key!r}{hint}")
        return cls(**d)

    def replace(self, **changes: Any) -> SwarmConfig:
        """A copy with some fields changed (validated like a new config)."""
        return self.from_dict({**self.to_dict(), **changes})


# ============================================================================================
# State
# ============================================================================================


@dataclass(frozen=True, eq=False)
class SwarmState:
    """Everything a swarm search needs to continue, as immutable values (arrays are read-only).

    Attributes:
        n_experts: N, the dimension of a weight vector.
        iteration: update iterations observed so far (0 until the first move has been scored).
        initialized: whether the initial swarm has been evaluated.
        positions: (P, N) current positions (some may be pending evaluation).
        velocities: (P, N) current velocities.
        utilities: (P,) latest score of each particle; failures (NaN, +inf) are stored as -inf.
        pbest_positions: (P, N) personal best positions.
        pbest_utilities: (P,) their scores.
        pbest_age: (P,) stagnation count exactly as the authors compute it:
            ``len(history_i) - history_i.index(best_i)``, i.e. 1 right after an improvement.
        cooldown: (P,) iterations during which the particle may not be restarted again.
        gbest_position: (N,) all-time global best g.
        gbest_utility: its score.
        gworst_position: (N,) all-time global worst (the repel target).
        gworst_utility: its score.
        g_history: the global best score after the initial evaluation and after every iteration.
        step_length: current lambda.
        pending: indices of particles whose current position awaits a utility (``None`` when no
            proposal is outstanding, i.e. right after ``observe``; this is when to checkpoint).
        restarted: particles restarted by the latest ``update``.
        n_evaluations: utilities received so far (rows of W, not calls).
        rng_state: JSON-able state of the numpy bit generator, positioned for the next draw.
    """

    n_experts: int
    iteration: int
    initialized: bool
    positions: np.ndarray
    velocities: np.ndarray
    utilities: np.ndarray
    pbest_positions: np.ndarray
    pbest_utilities: np.ndarray
    pbest_age: np.ndarray
    cooldown: np.ndarray
    gbest_position: np.ndarray
    gbest_utility: float
    gworst_position: np.ndarray
    gworst_utility: float
    g_history: tuple[float, ...]
    step_length: float
    pending: tuple[int, ...] | None
    restarted: tuple[int, ...]
    n_evaluations: int
    rng_state: dict

    @property
    def swarm_size(self) -> int:
        """P, the number of particles."""
        return int(self.positions.shape[0])

    def replace(self, **changes: Any) -> SwarmState:
        """A copy with some fields changed; arrays are copied and frozen."""
        for key, value in list(changes.items()):
            if isinstance(value, np.ndarray):
                dtype = np.int64 if key in ("pbest_age", "cooldown") else np.float64
                changes[key] = frozen_array(value, dtype)
        return dataclasses.replace(self, **changes)


class Best(NamedTuple):
    """The best weight vector found so far and its utility (-inf if every evaluation failed)."""

    weights: np.ndarray
    utility: float


# ============================================================================================
# Pure building blocks
# ============================================================================================


def init_particles(n_experts: int, config: SwarmConfig, rng: np.random.Generator,
                   space: MixingSpace | None = None) -> np.ndarray:
    """Initial swarm: the N one-hot experts, then crossover children until ``swarm_size``.

    With a bounded ``space`` (what every search uses) children are valid points of it: on the
    simplex (mode "probs") ``w1 = U(0, 1)``, a convex combination, so a child is a mixture of its
    parents and never needs clipping (the authors' ``2 U(0, 1)`` would put about half of the
    children outside, and clipping those collapses many onto one expert); in the box (mode
    "logits") the authors' ``2 U(0, 1)`` is kept and the child clipped to the box. ``space=None``
    is the unbounded rule below, kept for the pure-function tests.

    Each child is ``w1 * a + (1 - w1) * b`` with ``w1 = 2 * U(0, 1)`` (half interpolation, half
    extrapolation, as in the authors' code) and parents ``a != b`` drawn uniformly from the list
    built so far, so later children may have earlier children as parents. Draw order per child,
    so tests can recompute it: ``i = rng.integers(k)``, ``j = rng.integers(k - 1)`` (shifted past
    ``i``), ``w1 = 2 * rng.random()``, where k is the current list length.

    Args:
        n_experts: N >= 2.
        config: uses ``swarm_size`` (P >= N).
        rng: the generator to draw from (advanced in place).

    Returns:
        (P, N) float64 array; every row sums to 1.

    Raises:
        ValueError: if N < 2 or P < N. With fewer particles than experts the swarm could never
            give weight to the experts left out (positions stay in the affine hull of the initial
            swarm), so this is refused instead of silently dropping experts.
    """
    n = _check_n_experts(n_experts)
    p = config.swarm_size
    if p < n:
        raise ValueError(
            f"swarm_size={p} is smaller than the number of experts ({n}); the swarm could never put "
            f"weight on the experts left out. Use swarm_size >= {n} (the paper uses 20)."
        )
    rows = [np.eye(n, dtype=np.float64)[i] for i in range(n)]
    while len(rows) < p:
        k = len(rows)
        i = int(rng.integers(k))
        j = int(rng.integers(k - 1))
        j += j >= i  # uniform over the k - 1 other parents
        u = float(rng.random())
        w1 = u if space is not None and space.mode == "probs" else 2.0 * u
        child = w1 * rows[i] + (1.0 - w1) * rows[j]
        rows.append(child if space is None else space.weights(child))
    return np.stack(rows)


def init_velocities(positions: np.ndarray, mode: str, rng: np.random.Generator,
                    best: np.ndarray | None = None) -> np.ndarray:
    """Initial velocities.

    Args:
        positions: (P, N) initial positions.
        mode: ``"random"``: v_i = x_j - x_i with j != i uniform (one ``rng.integers(P - 1, size=P)``
            draw); ``"zero"``: v = 0; ``"best"``: v_i = best - x_i (needs ``best``).
        rng: generator, used by ``"random"`` only.
        best: (N,) the global best after the initial evaluation, for ``"best"``.

    Returns:
        (P, N) float64 array.
    """
    x = np.asarray(positions, dtype=np.float64)
    if mode == "zero":
        return np.zeros_like(x)
    if mode == "random":
        p = x.shape[0]
        j = rng.integers(p - 1, size=p)
        j = j + (j >= np.arange(p))  # skip the particle itself
        return x[j] - x
    if mode == "best":
        if best is None:
            raise ValueError("velocity_init='best' needs the global best position")
        return np.asarray(best, dtype=np.float64)[None, :] - x
    raise ValueError(f"velocity_init must be one of {VELOCITY_INIT_MODES}, got {mode!r}")


def velocity_update(x: np.ndarray, v: np.ndarray, p: np.ndarray, g: np.ndarray, worst: np.ndarray,
                    config: SwarmConfig, r: np.ndarray) -> np.ndarray:
    """The Model Swarms velocity rule, for all particles at once.

    ``v <- (a_v v + a_p (p - x) + a_g (g - x) + a_w (x - worst)) / C`` with ``a_v = r_v phi_v``,
    ``a_p = r_p phi_p``, ``a_g = r_g phi_g``, ``a_w = r_w phi_w`` (0 without the repel term) and
    ``C = a_v + a_p + a_g + a_w``: a convex combination of the four directions.

    Args:
        x, v, p: (P, N) positions, velocities, personal bests.
        g, worst: (N,) global best and global worst.
        config: the four coefficients and ``repel_term``.
        r: (P, 4) random factors (r_v, r_p, r_g, r_w) per particle, or all ones.

    Returns:
        (P, N) new velocities. A particle whose C is 0 (all its r drew exactly 0) gets v = 0.
    """
    phi = np.array([config.inertia, config.cognitive, config.social,
                    config.repel if config.repel_term else 0.0])
    a = np.asarray(r, dtype=np.float64) * phi[None, :]
    c = a.sum(axis=1)
    num = (a[:, 0:1] * v + a[:, 1:2] * (p - x) + a[:, 2:3] * (g[None, :] - x)
           + a[:, 3:4] * (x - worst[None, :]))
    safe_c = np.where(c > 0, c, 1.0)
    return np.where((c > 0)[:, None], num / safe_c[:, None], 0.0)


def iterations_since_improvement(g_history: tuple[float, ...] | list[float]) -> int:
    """Iterations since the global best last changed (the initial evaluation counts as a change)."""
    h = list(g_history)
    last = 0
    for k in range(1, len(h)):
        if h[k] != h[k - 1]:
            last = k
    return len(h) - 1 - last


def is_done(state: SwarmState, config: SwarmConfig) -> bool:
    """Whether the search has ended: ``max_iter`` iterations, or g unchanged for ``patience``.

    The authors stop when the last ``patience`` entries of g_history are equal, which after an
    improvement means ``patience - 1`` flat iterations; here it is ``patience`` flat iterations
    every time, which is what "patience" says.
    """
    if not state.initialized or state.pending is not None:
        return False
    if state.iteration >= config.max_iter:
        return True
    return iterations_since_improvement(state.g_history) >= config.patience


# ============================================================================================
# State transitions
# ============================================================================================


def init_state(n_experts: int, config: SwarmConfig,
               rng: int | np.random.Generator | np.random.SeedSequence,
               space: MixingSpace | None = None) -> SwarmState:
    """The state before anything is evaluated: initial swarm and velocities, all pending.

    Args:
        n_experts: N >= 2.
        config: the search settings.
        rng: a seed or a Generator. A Generator is advanced by the initial draws; afterwards the
            state carries its own snapshot, so later draws do not advance the caller's generator.
        space: the mixing space positions must stay in (None: unbounded).

    Returns:
        A :class:`SwarmState` whose ``pending`` is every particle.
    """
    gen = make_rng(rng)
    x = init_particles(n_experts, config, gen, space)
    # 'best' needs the initial utilities; its velocities are set in observe().
    v = init_velocities(x, "zero" if config.velocity_init == "best" else config.velocity_init, gen)
    p, n = x.shape
    return SwarmState(
        n_experts=n, iteration=0, initialized=False,
        positions=frozen_array(x), velocities=frozen_array(v),
        utilities=frozen_array(np.full(p, -np.inf)),
        pbest_positions=frozen_array(x), pbest_utilities=frozen_array(np.full(p, -np.inf)),
        pbest_age=frozen_array(np.zeros(p), np.int64), cooldown=frozen_array(np.zeros(p), np.int64),
        gbest_position=frozen_array(x[0]), gbest_utility=-np.inf,
        gworst_position=frozen_array(x[0]), gworst_utility=np.inf,
        g_history=(), step_length=config.step_length,
        pending=tuple(range(p)), restarted=(), n_evaluations=0, rng_state=rng_state(gen),
    )


def update(state: SwarmState, config: SwarmConfig, space: MixingSpace | None = None) -> SwarmState:
    """Move the swarm one iteration (Algorithm 1, steps 2-4); the moved particles become pending.

    1. Restart: a particle whose stagnation count ``pbest_age`` reached
       ``restart_patience * patience`` and whose cooldown is 0 is put back at its personal best
       with zero velocity, and its cooldown set to ``restart_cooldown``; other cooldowns count down.
       The normal update then proceeds in the same iteration, as in the authors' code.
    2. Velocity: :func:`velocity_update` with fresh r ~ U(0, 1) per particle (or all 1).
    3. Position: ``x <- x + lambda v`` with the current step length; with a ``space``, x is then
       mapped into it (Euclidean projection onto the simplex, or clipping to the box) and the
       velocity set to the move actually made, ``v <- (x_new - x_old) / lambda``, so the inertia
       of the next step does not keep pushing against the boundary (the velocity clamp of
       bounded PSO).
    4. Dropout (off by default): with ``drop_iter`` skip the whole evaluation, then each particle
       with ``drop_particle``; skipped particles keep their previous utility in :func:`observe`.

    RNG draw order: ``random((P, 4))`` if weight_randomness, then ``random()`` if drop_iter > 0,
    then ``random(P)`` if drop_particle > 0.

    Args:
        state: an initialised state with nothing pending that is not done.
        config: the search settings the state was made with.
        space: the mixing space (None: unbounded, the authors' rule).

    Returns:
        The new state with ``pending`` = particles to evaluate (possibly empty with dropout).

    Raises:
        ValueError: if the state still awaits utilities, was never evaluated, or is done.
    """
    if not state.initialized or state.pending is not None:
        raise ValueError("update() needs a state whose pending utilities have been observed")
    if is_done(state, config):
        raise ValueError("the search is done; read the global best instead of moving the swarm")
    rng = rng_from_state(state.rng_state)
    p = state.swarm_size
    x = np.array(state.positions)
    v = np.array(state.velocities)

    if config.restart:
        due = state.pbest_age >= config.restart_patience * config.patience
        restart = due & (state.cooldown == 0)
        cooldown = np.where(restart, config.restart_cooldown, np.maximum(state.cooldown - 1, 0))
        if config.restart_to == "random" and restart.any():
            # A fresh point of the space (Dirichlet(1) on the simplex): the swarm re-diversifies
            # instead of piling its stagnant particles onto their personal bests.
            fresh = (space.sample(rng, p, state.n_experts) if space is not None
                     else rng.dirichlet(np.ones(state.n_experts), size=p))
            x = np.where(restart[:, None], fresh, x)
        else:
            x = np.where(restart[:, None], state.pbest_positions, x)
        v = np.where(restart[:, None], 0.0, v)
    else:
        restart = np.zeros(p, dtype=bool)
        cooldown = np.array(state.cooldown)

    r = rng.random((p, 4)) if config.weight_randomness else np.ones((p, 4))
    if config.r_low != 0.0:  # the paper's suggested widening of r from U(0, 1) to U(r_low, 1)
        r = config.r_low + (1.0 - config.r_low) * r
    v = velocity_update(x, v, state.pbest_positions, state.gbest_position, state.gworst_position,
                        config, r)
    moved = x + state.step_length * v
    if space is not None:
        moved = space.weights(moved)
        v = (moved - x) / state.step_length
    x = moved

    evaluate = np.ones(p, dtype=bool)
    if config.drop_iter > 0 and rng.random() < config.drop_iter:
        evaluate[:] = False
    if config.drop_particle > 0:
        evaluate &= ~(rng.random(p) < config.drop_particle)

    return state.replace(
        positions=x, velocities=v, cooldown=cooldown,
        pending=tuple(int(i) for i in np.flatnonzero(evaluate)),
        restarted=tuple(int(i) for i in np.flatnonzero(restart)),
        rng_state=rng_state(rng),
    )


def observe(state: SwarmState, config: SwarmConfig, utilities: Any) -> SwarmState:
    """Record the utilities of the pending particles (Algorithm 1, steps 5-7).

    Failures (NaN, +inf) count as -inf: they can never become a personal or global best, and a
    failed particle can become the global worst (the repel target). Personal bests change on
    strict improvement only; g and the worst are all-time. After the initial evaluation this sets
    p = x, g, worst and (``velocity_init="best"``) v = g - x; after a move it also appends to
    g_history, decays the step length ``lambda <- max(lambda * factor, min)`` and counts the iteration.

    Args:
        state: a state with ``pending`` set.
        config: the search settings.
        utilities: one utility per pending particle, in the order of ``state.pending``.

    Returns:
        The new state, with ``pending = None``.
    """
    if state.pending is None:
        raise ValueError("observe() called with nothing pending; call update() (ask) first")
    idx = np.array(state.pending, dtype=np.int64)
    u = np.asarray(utilities, dtype=np.float64)
    if u.shape != (len(idx),):
        raise ValueError(f"expected {len(idx)} utilities (one per pending particle), got shape {u.shape}")
    scores = np.array(state.utilities)
    scores[idx] = rank_scores(u)
    x = state.positions

    if not state.initialized:
        gi, wi = int(np.argmax(scores)), int(np.argmin(scores))
        v = state.velocities
        if config.velocity_init == "best":
            v = init_velocities(x, "best", None, best=x[gi])  # type: ignore[arg-type]
        return state.replace(
            initialized=True, utilities=scores, velocities=v,
            pbest_positions=x, pbest_utilities=scores, pbest_age=np.ones(len(scores)),
            gbest_position=x[gi], gbest_utility=float(scores[gi]),
            gworst_position=x[wi], gworst_utility=float(scores[wi]),
            g_history=(float(scores[gi]),), pending=None,
            n_evaluations=state.n_evaluations + len(idx),
        )

    improved = scores > state.pbest_utilities
    changes: dict[str, Any] = dict(
        utilities=scores,
        pbest_positions=np.where(improved[:, None], x, state.pbest_positions),
        pbest_utilities=np.where(improved, scores, state.pbest_utilities),
        # Authors: len(history) - history.index(best): 1 right after an improvement, +1 per step.
        pbest_age=np.where(improved, 1, state.pbest_age + 1),
    )
    gi, wi = int(np.argmax(scores)), int(np.argmin(scores))
    g_u = state.gbest_utility
    if scores[gi] > g_u:
        g_u = float(scores[gi])
        changes.update(gbest_position=x[gi], gbest_utility=g_u)
    if scores[wi] < state.gworst_utility:
        changes.update(gworst_position=x[wi], gworst_utility=float(scores[wi]))
    return state.replace(
        **changes,
        g_history=state.g_history + (g_u,),
        step_length=max(state.step_length * config.step_length_factor, config.min_step_length),
        iteration=state.iteration + 1, pending=None,
        n_evaluations=state.n_evaluations + len(idx),
    )


# ============================================================================================
# JSON (no pickle)
# ============================================================================================

_ARRAYS_2D = ("positions", "velocities", "pbest_positions")
_ARRAYS_1D = ("utilities", "pbest_utilities", "gbest_position", "gworst_position")
_INTS_1D = ("pbest_age", "cooldown")


def state_to_dict(state: SwarmState) -> dict[str, Any]:
    """Encode a state as strict JSON values; floats round-trip bit-exactly."""
    d: dict[str, Any] = {
        "n_experts": state.n_experts,
        "iteration": state.iteration,
        "initialized": state.initialized,
        "gbest_utility": float_to_json(state.gbest_utility),
        "gworst_utility": float_to_json(state.gworst_utility),
        "g_history": [float_to_json(g) for g in state.g_history],
        "step_length": float_to_json(state.step_length),
        "pending": None if state.pending is None else list(state.pending),
        "restarted": list(state.restarted),
        "n_evaluations": state.n_evaluations,
        "rng_state": state.rng_state,
    }
    for name in _ARRAYS_2D + _ARRAYS_1D:
        d[name] = array_to_json(getattr(state, name))
    for name in _INTS_1D:
        d[name] = [int(a) for a in getattr(state, name)]
    return d


def state_from_dict(d: dict[str, Any]) -> SwarmState:
    """Decode :func:`state_to_dict` output, checking that shapes agree."""
    try:
        n = int(d["n_experts"])
        kw: dict[str, Any] = {name: frozen_array(array_from_json(d[name], 2, n)) for name in _ARRAYS_2D}
        kw.update({name: frozen_array(array_from_json(d[name], 1)) for name in _ARRAYS_1D})
        kw.update({name: frozen_array(d[name], np.int64) for name in _INTS_1D})
        state = SwarmState(
            n_experts=n, iteration=int(d["iteration"]), initialized=bool(d["initialized"]),
            gbest_utility=float_from_json(d["gbest_utility"]),
            gworst_utility=float_from_json(d["gworst_utility"]),
            g_history=tuple(float_from_json(g) for g in d["g_history"]),
            step_length=float_from_json(d["step_length"]),
            pending=None if d["pending"] is None else tuple(int(i) for i in d["pending"]),
            restarted=tuple(int(i) for i in d["restarted"]),
            n_evaluations=int(d["n_evaluations"]), rng_state=dict(d["rng_state"]), **kw,
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a saved swarm state (missing or malformed field: {exc})") from None
    p = state.positions.shape[0]
    shapes_ok = (
        all(getattr(state, a).shape == (p, n) for a in _ARRAYS_2D)
        and all(getattr(state, a).shape == (p,) for a in ("utilities", "pbest_utilities") + _INTS_1D)
        and state.gbest_position.shape == (n,) and state.gworst_position.shape == (n,)
    )
    if not shapes_ok:
        raise ValueError("saved swarm state has inconsistent array shapes")
    return state


def _check_n_experts(n_experts: Any) -> int:
    if isinstance(n_experts, bool) or not isinstance(n_experts, (int, np.integer)):
        raise ValueError(f"n_experts must be an int, got {n_experts!r}")
    if n_experts < 2:
        raise ValueError(f"a swarm search needs at least 2 experts, got {n_experts}")
    return int(n_experts)


# ============================================================================================
# Ask / tell
# ============================================================================================


class PSO:
    """Model Swarms as an ask/tell optimiser over weight vectors.

    Example::

        pso = PSO(n_experts=4, config=SwarmConfig(), seed=0)
        while not pso.done:
            W = pso.ask()                 # (k, N); k = P except with dropout
            pso.tell(W, evaluate(W))      # one utility per row
        weights, utility = pso.best

    The first ``ask()`` returns the initial swarm. ``ask()`` twice without ``tell()`` returns the
    same rows. ``state_dict()`` right after a ``tell()`` is a complete checkpoint.

    Args:
        n_experts: N >= 2.
        config: search settings (default: :class:`SwarmConfig` defaults).
        seed: an int, a SeedSequence or a numpy Generator.
    """

    FORMAT = "logit_swarm.pso"
    VERSION = 1

    def __init__(self, n_experts: int, config: SwarmConfig | None = None,
                 seed: int | np.random.Generator | np.random.SeedSequence = 0,
                 space: MixingSpace | None = None) -> None:
        self._config = config if config is not None else SwarmConfig()
        if not isinstance(self._config, SwarmConfig):
            raise ValueError(f"config must be a SwarmConfig, got {type(self._config).__name__}")
        self._space = space
        self._state = init_state(n_experts, self._config, seed, space)

    @classmethod
    def from_state(cls, state: SwarmState, config: SwarmConfig, space: MixingSpace | None = None) -> PSO:
        """Wrap an existing state (e.g. one built with the pure functions)."""
        obj = cls.__new__(cls)
        obj._config, obj._state, obj._space = config, state, space
        return obj

    @property
    def config(self) -> SwarmConfig:
        """The search settings."""
        return self._config

    @property
    def state(self) -> SwarmState:
        """The current immutable state."""
        return self._state

    @property
    def done(self) -> bool:
        """True once the stopping rule holds (checked after each ``tell``)."""
        return is_done(self._state, self._config)

    @property
    def iteration(self) -> int:
        """Update iterations completed (0 = only the initial swarm evaluated, or not even that)."""
        return self._state.iteration

    @property
    def best(self) -> Best:
        """The all-time global best weights (raw, see module docstring) and their utility."""
        if not self._state.initialized:
            raise RuntimeError("no utilities told yet; ask() and tell() the initial swarm first")
        return Best(np.array(self._state.gbest_position), float(self._state.gbest_utility))

    def ask(self) -> np.ndarray:
        """Weight vectors to evaluate next, shape (k, N) (a fresh writable copy).

        Raises:
            RuntimeError: if the search is done.
        """
        if self._state.pending is None:
            if self.done:
                raise RuntimeError("the search is done; read .best")
            self._state = update(self._state, self._config, self._space)
        return np.array(self._state.positions[list(self._state.pending)], dtype=np.float64)

    def tell(self, weights: np.ndarray, utilities: Any) -> None:
        """Report the utilities of the rows the last ``ask()`` returned.

        Args:
            weights: exactly the array ``ask()`` returned (checked, to catch mix-ups).
            utilities: one number per row; NaN marks a failed evaluation (ranked worst).

        Raises:
            ValueError: if nothing was asked, the weights differ from the asked ones, or the
                number of utilities is wrong.
        """
        if self._state.pending is None:
            raise ValueError("tell() without a pending ask(); call ask() first")
        expected = self._state.positions[list(self._state.pending)]
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != expected.shape or not np.array_equal(w, expected):
            raise ValueError("tell() got weights that differ from the last ask(); "
                             "pass back the rows ask() returned, in the same order")
        self._state = observe(self._state, self._config, utilities)

    def state_dict(self) -> dict[str, Any]:
        """A JSON-able checkpoint: format tag, config and state (no pickle)."""
        return {"format": self.FORMAT, "version": self.VERSION,
                "config": self._config.to_dict(), "state": state_to_dict(self._state),
                "space": None if self._space is None else self._space.mode}

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> PSO:
        """Restore a :class:`PSO` from :meth:`state_dict` output; continues bit-exactly."""
        if not isinstance(d, dict) or d.get("format") != cls.FORMAT:
            raise ValueError(f"not a PSO checkpoint (expected format {cls.FORMAT!r})")
        if d.get("version") != cls.VERSION:
            raise ValueError(f"PSO checkpoint version {d.get('version')!r} is not supported "
                             f"(this code reads version {cls.VERSION})")
        config = SwarmConfig.from_dict(d["config"])
        state = state_from_dict(d["state"])
        if state.swarm_size != config.swarm_size:
            raise ValueError("PSO checkpoint: state swarm size does not match its config")
        space = d.get("space")
        return cls.from_state(state, config, None if space is None else space_for_mode(space))


# ============================================================================================
# Grids of settings (the authors' scripts sample one)
# ============================================================================================


def expand_grid(grid: Mapping[str, Any], base: SwarmConfig | None = None) -> list[SwarmConfig]:
    """All combinations of a grid of settings, as configs (cartesian product, in key order).

    Args:
        grid: setting name -> list of values (a single non-list value counts as one value).
        base: settings not in the grid (default: :class:`SwarmConfig` defaults).

    Returns:
        One :class:`SwarmConfig` per combination.
    """
    base = base if base is not None else SwarmConfig()
    keys = list(grid)
    values = [v if isinstance(v, (list, tuple)) else [v] for v in grid.values()]
    for k, v in zip(keys, values):
        if len(v) == 0:
            raise ValueError(f"grid entry {k!r} has no values")
    return [base.replace(**dict(zip(keys, combo))) for combo in itertools.product(*values)]


def sample_configs(grid: Mapping[str, Any], n: int, rng: np.random.Generator,
                   base: SwarmConfig | None = None) -> list[SwarmConfig]:
    """``n`` distinct configs drawn uniformly from a grid (the authors' scripts sample their grid).

    Args:
        grid: as for :func:`expand_grid`.
        n: how many (at most the grid's size).
        rng: numpy Generator.
        base: settings not in the grid.
    """
    configs = expand_grid(grid, base)
    if not 1 <= n <= len(configs):
        raise ValueError(f"n must be between 1 and the grid size {len(configs)}, got {n}")
    return [configs[i] for i in sorted(rng.choice(len(configs), size=n, replace=False))]


# ============================================================================================
# The swarm as a registered search method (one run, or a grid of runs, through the driver)
# ============================================================================================


class SwarmSearcher:
    """Model Swarms as a :class:`~logit_swarm.search.methods.base.Searcher`.

    Options (``ctx.options``): ``config`` (a :class:`SwarmConfig` or mapping; default the paper
    protocol), or ``configs`` (a list, e.g. sampled from the scripts' grid) and ``seeds``: the runs
    (config x seed) go one after the other through the same driver, so every evaluation of every
    run is counted and checkpointed, and the best row of all runs -- the best run on dev, as the
    paper kept it -- is the result. Iterations whose evaluation dropout skipped entirely are told
    at once (nothing to evaluate), so every ask has rows.
    """

    def __init__(self, ctx: Any) -> None:
        opts = dict(ctx.options or {})
        configs = opts.get("configs") or [opts.get("config") or SwarmConfig()]
        self._configs = [c if isinstance(c, SwarmConfig) else SwarmConfig.from_dict(dict(c)) for c in configs]
        seeds = opts.get("seeds") or [ctx.seed]
        self._runs = [(c, int(s)) for c in self._configs for s in seeds]
        self._space, self._n = ctx.space, ctx.n_experts
        self._k = -1
        self._pso: PSO | None = None
        self._evaluated: tuple[int, ...] = ()
        self._next_run()

    def _next_run(self) -> None:
        self._k += 1
        config, seed = self._runs[self._k]
        self._pso = PSO(self._n, config, seed, self._space)

    def _skip_empty(self) -> None:
        """Tell empty (fully dropped) iterations and move to the next run when one ends."""
        assert self._pso is not None
        while True:
            if self._pso.done:
                if self._k + 1 >= len(self._runs):
                    return
                self._next_run()
                continue
            w = self._pso.ask()
            if len(w):
                return
            self._pso.tell(w, np.empty(0))

    @property
    def done(self) -> bool:
        """All runs finished."""
        self._skip_empty()
        return self._pso.done and self._k + 1 >= len(self._runs)

    def ask(self) -> np.ndarray:
        """The pending particles of the current run."""
        self._skip_empty()
        return self._pso.ask()

    def tell(self, coords: np.ndarray, utilities: np.ndarray) -> None:
        """Their utilities."""
        self._evaluated = tuple(self._pso.state.pending or ())
        self._pso.tell(coords, utilities)

    def info(self) -> dict[str, Any]:
        """Run index, iteration, step length used, restarts, the run's g and worst."""
        s = self._pso.state
        return {"run": self._k, "seed": self._runs[self._k][1], "iteration": s.iteration,
                "evaluated": list(self._evaluated), "step_length": float_to_json(s.step_length),
                "restarted": list(s.restarted) if s.iteration > 0 else [],
                "g": array_to_json(s.gbest_position), "g_utility": float_to_json(s.gbest_utility),
                "worst_utility": float_to_json(s.gworst_utility)}

    @property
    def pso(self) -> PSO:
        """The PSO of the current run."""
        return self._pso

    @property
    def configs(self) -> list[SwarmConfig]:
        """The settings of the runs."""
        return list(self._configs)


def _make_swarm(ctx: Any) -> SwarmSearcher:
    return SwarmSearcher(ctx)


register_method(MethodInfo(
    name="swarm", label="model swarms (PSO)", family="pso", kind="search", make=_make_swarm,
    mapping="Model Swarms itself: particles are mixing-weight vectors instead of adapter weights."))

#: The improved swarm of this project (see README "Where the swarm loses"): stagnant particles
#: restart at a fresh random mixture instead of their personal best, r ~ U(-0.2, 1) (the
#: paper's own suggested fix for local optima), and no patience stop: it runs to the budget.
SWARM_RESTARTS = SwarmConfig(restart_to="random", r_low=-0.2, patience=10**6, max_iter=10**6)


def _make_swarm_restarts(ctx: Any) -> SwarmSearcher:
    opts = dict(ctx.options or {})
    opts.setdefault("config", SWARM_RESTARTS.replace(swarm_size=min(ctx.batch, 20) if ctx.batch >= ctx.n_experts
                                                     else max(ctx.n_experts, 2)))
    return SwarmSearcher(dataclasses.replace(ctx, options=opts))


register_method(MethodInfo(
    name="swarm_restarts", label="swarm + random restarts", family="pso", kind="search", budgeted=True,
    make=_make_swarm_restarts,
    mapping="This project's variant of Model Swarms: random restarts, r ~ U(-0.2, 1), run to the budget."))
