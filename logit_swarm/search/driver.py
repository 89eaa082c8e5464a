"""The search driver: runs a :class:`~logit_swarm.search.pso.PSO` against a utility, with a progress
bar, an append-only history, an atomic checkpoint after every iteration, and exact resume.

Files written to ``out_dir`` (all strict JSON, no pickle):

``history.jsonl``    one line per iteration (iteration 0 = the initial swarm): positions of all
                     particles, which were evaluated and their utilities (NaN -> null), the global
                     best and worst, the step length used for the move, restarts, evaluations so far
                     and cumulative elapsed seconds.
``checkpoint.json``  PSO state (RNG included), seed, the byte length of ``history.jsonl`` it
                     covers, the elapsed time and the utility's own state (``task_state``,
                     see :class:`StatefulUtility`); replaced atomically after every iteration.
``result.json``      :meth:`SearchResult.to_json` when the search ends.

Resume contract: a run killed at any point and restarted with ``resume=True`` (same ``evaluate``,
``n_experts``, config and seed) ends with exactly the weights, utility, state and history (except the
``elapsed`` field) an uninterrupted run gives. History lines written after the last checkpoint are
truncated, because their iteration will be run again.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from tqdm.auto import tqdm

from ._common import (
    Evaluate,
    array_from_json,
    array_to_json,
    atomic_write_text,
    check_utilities,
    dumps,
    float_from_json,
    float_to_json,
    rank_scores,
)
from .pso import PSO, SwarmConfig, SwarmState, state_from_dict, state_to_dict

__all__ = ["SearchResult", "GridRun", "GridResult", "run_search", "run_grid", "expand_grid",
           "sample_configs", "CHECKPOINT_FILE", "HISTORY_FILE", "RESULT_FILE"]

CHECKPOINT_FILE = "checkpoint.json"
HISTORY_FILE = "history.jsonl"
RESULT_FILE = "result.json"
_CHECKPOINT_FORMAT = "logit_swarm.search.checkpoint"
_CHECKPOINT_VERSION = 1


@dataclass
class SearchResult:
    """What a swarm search produced.

    Attributes:
        weights: (N,) raw weights of the all-time global best (see ``pso`` module docstring for how
            mixing modes read raw weights).
        utility: its dev utility (-inf if every evaluation failed).
        history: one record per iteration, as written to ``history.jsonl``.
        state: the final :class:`SwarmState` (RNG included).
        config: the settings used.
        seed: the seed used.
        n_evaluations: utilities computed (rows of W summed over all calls).
        elapsed: wall-clock seconds, summed over resumed sessions.
    """

    weights: np.ndarray
    utility: float
    history: list[dict[str, Any]]
    state: SwarmState
    config: SwarmConfig
    seed: int
    n_evaluations: int
    elapsed: float

    def to_dict(self) -> dict[str, Any]:
        """A strict-JSON-able dict of the whole result."""
        return {
            "weights": array_to_json(self.weights),
            "utility": float_to_json(self.utility),
            "seed": self.seed,
            "n_evaluations": self.n_evaluations,
            "elapsed": self.elapsed,
            "config": self.config.to_dict(),
            "history": self.history,
            "state": state_to_dict(self.state),
        }

    def to_json(self, indent: int | None = None) -> str:
        """The result as strict JSON text (NaN as null, infinities as "inf"/"-inf")."""
        return json.dumps(self.to_dict(), allow_nan=False, indent=indent)

    @classmethod
    def from_json(cls, text: str) -> SearchResult:
        """Read :meth:`to_json` output back."""
        d = json.loads(text)
        return cls(
            weights=array_from_json(d["weights"], 1), utility=float_from_json(d["utility"]),
            history=d["history"], state=state_from_dict(d["state"]),
            config=SwarmConfig.from_dict(d["config"]), seed=int(d["seed"]),
            n_evaluations=int(d["n_evaluations"]), elapsed=float(d["elapsed"]),
        )


@runtime_checkable
class StatefulUtility(Protocol):
    """A utility whose values depend on state it builds while evaluating (a reward task's
    normalisation, a judge's remembered replies): the driver stores ``checkpoint_state()`` in
    every checkpoint and calls ``restore_state`` on resume before the first evaluation."""

    def checkpoint_state(self) -> dict[str, Any]: ...

    def restore_state(self, state: dict[str, Any]) -> None: ...


def _utility_state(evaluate: Any) -> dict[str, Any]:
    return evaluate.checkpoint_state() if isinstance(evaluate, StatefulUtility) else {}


# --------------------------------------------------------------------------------------------
# run_search
# --------------------------------------------------------------------------------------------


def run_search(
    evaluate: Evaluate,
    n_experts: int,
    config: SwarmConfig | None = None,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    seed: int = 0,
    on_iteration: Callable[[dict[str, Any]], None] | None = None,
) -> SearchResult:
    """Run a Model Swarms search over mixing weights.

    Each iteration's particles are evaluated in ONE call ``evaluate(W)`` with W of shape (k, N)
    (k = swarm size, fewer only with dropout; a call with k = 0 is never made).

    Args:
        evaluate: utility, ``W (k, N) -> (k,)``, higher is better; NaN marks a failed particle
            (ranked worst). It receives a copy of W, so it may modify it.
        n_experts: N, the number of experts (>= 2).
        config: swarm settings; ``None`` means the defaults for a new run, or the saved settings
            when resuming.
        out_dir: where to write ``history.jsonl``, ``checkpoint.json`` and ``result.json``; ``None``
            keeps everything in memory (no resume possible).
        resume: continue from ``out_dir/checkpoint.json`` if it exists (a finished run is returned
            as is), else start a new run there. Without it an ``out_dir`` holding a previous run is
            refused rather than overwritten.
        progress: show a tqdm bar on stderr (iteration, best and mean utility, evaluations/s).
        seed: integer seed for the swarm's numpy Generator.
        on_iteration: called with each history record after it is checkpointed.

    Returns:
        A :class:`SearchResult`.

    Raises:
        ValueError: on bad arguments, a resume whose config/seed/N differ from the checkpoint, or
            an ``evaluate`` that returns the wrong shape. Exceptions from ``evaluate`` propagate;
            the last checkpoint stays valid.
    """
    if not callable(evaluate):
        raise ValueError("evaluate must be callable: W (k, N) -> utilities (k,)")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an int (it is stored in the checkpoint), got {seed!r}")
    seed = int(seed)
    if resume and out_dir is None:
        raise ValueError("resume=True needs out_dir (the directory holding checkpoint.json)")
    if config is not None and not isinstance(config, SwarmConfig):
        raise ValueError(f"config must be a SwarmConfig or None, got {type(config).__name__}")

    ckpt_path = hist_path = None
    history: list[dict[str, Any]] = []
    elapsed_before = 0.0
    pso: PSO | None = None
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        ckpt_path = os.path.join(out_dir, CHECKPOINT_FILE)
        hist_path = os.path.join(out_dir, HISTORY_FILE)
        if resume and os.path.exists(ckpt_path):
            pso, history, elapsed_before, state = _load_checkpoint(ckpt_path, hist_path, n_experts, config, seed)
            if isinstance(evaluate, StatefulUtility):
                evaluate.restore_state(state)
        elif any(os.path.exists(os.path.join(out_dir, name))
                 for name in (CHECKPOINT_FILE, HISTORY_FILE, RESULT_FILE)):
            raise ValueError(f"{out_dir} already holds a search; pass resume=True to continue it, "
                             f"or choose an empty directory")
    if pso is None:
        pso = PSO(n_experts, config if config is not None else SwarmConfig(), seed)
        if hist_path is not None:
            open(hist_path, "w").close()  # a fresh run starts a fresh history

    bar = tqdm(total=pso.config.max_iter + 1, initial=len(history), desc="swarm search",
               unit="it", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    session_start = time.perf_counter()
    session_evals = 0
    try:
        while not pso.done:
            step_length = pso.state.step_length if pso.state.initialized else None
            W = pso.ask()
            if len(W):
                utilities = check_utilities(evaluate(W.copy()), len(W))
            else:  # the whole iteration was dropped (dropout acceleration)
                utilities = np.empty(0)
            evaluated = pso.state.pending
            pso.tell(W, utilities)
            session_evals += len(W)
            elapsed = elapsed_before + (time.perf_counter() - session_start)
            record = _history_record(pso, evaluated, utilities, step_length, elapsed)
            history.append(record)
            if ckpt_path is not None:
                _append_line(hist_path, dumps(record))
                _save_checkpoint(ckpt_path, hist_path, pso, seed, elapsed, _utility_state(evaluate))
            bar.update(1)
            rate = session_evals / max(time.perf_counter() - session_start, 1e-9)
            bar.set_postfix(best=f"{pso.best.utility:.4g}", mean=_fmt(record["mean_utility"]),
                            evals_per_s=f"{rate:.3g}", refresh=False)
            if on_iteration is not None:
                on_iteration(record)
    finally:
        bar.close()

    # Time through the last iteration (summed over sessions); a resumed finished run keeps its own.
    elapsed = history[-1]["elapsed"] if history else 0.0
    best = pso.best
    result = SearchResult(weights=best.weights, utility=best.utility, history=history,
                          state=pso.state, config=pso.config, seed=seed,
                          n_evaluations=pso.state.n_evaluations, elapsed=elapsed)
    if out_dir is not None:
        atomic_write_text(os.path.join(out_dir, RESULT_FILE), result.to_json())
    return result


def _fmt(x: float | None) -> str:
    return "nan" if x is None else f"{x:.4g}"


def _history_record(pso: PSO, evaluated: tuple[int, ...] | None, utilities: np.ndarray,
                    step_length: float | None, elapsed: float) -> dict[str, Any]:
    """One line of history.jsonl, describing the iteration just told."""
    s = pso.state
    finite = utilities[np.isfinite(utilities)]
    return {
        "iteration": s.iteration,
        "positions": array_to_json(s.positions),
        "evaluated": list(evaluated or ()),
        "utilities": array_to_json(utilities),
        "mean_utility": float(finite.mean()) if finite.size else None,
        "g": array_to_json(s.gbest_position),
        "g_utility": float_to_json(s.gbest_utility),
        "worst_utility": float_to_json(s.gworst_utility),
        "step_length": step_length,  # the lambda that produced these positions (None at 0)
        "restarted": list(s.restarted) if s.iteration > 0 else [],
        "n_evaluations": s.n_evaluations,
        "elapsed": elapsed,
    }


def _append_line(path: str, line: str) -> None:
    """Append one line and make it durable before the checkpoint that counts it is written."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def _save_checkpoint(ckpt_path: str, hist_path: str, pso: PSO, seed: int, elapsed: float,
                     utility_state: dict[str, Any] | None = None) -> None:
    payload = {
        "format": _CHECKPOINT_FORMAT,
        "version": _CHECKPOINT_VERSION,
        "seed": seed,
        "n_experts": pso.state.n_experts,
        "history_bytes": os.path.getsize(hist_path),
        "elapsed": elapsed,
        "pso": pso.state_dict(),
        "task_state": utility_state or {},
    }
    atomic_write_text(ckpt_path, dumps(payload))


def _load_checkpoint(ckpt_path: str, hist_path: str, n_experts: int, config: SwarmConfig | None,
                     seed: int) -> tuple[PSO, list[dict[str, Any]], float, dict[str, Any]]:
    """Read a checkpoint, check it matches the call, and cut history.jsonl back to what it covers.
    Returns the swarm, the history, the elapsed seconds and the utility's saved state."""
    with open(ckpt_path, encoding="utf-8") as f:
        try:
            d = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{ckpt_path} is not valid JSON ({exc}); it was not written by this "
                             f"code, since checkpoints are replaced atomically") from None
    if not isinstance(d, dict) or d.get("format") != _CHECKPOINT_FORMAT:
        raise ValueError(f"{ckpt_path} is not a logit_swarm search checkpoint")
    if d.get("version") != _CHECKPOINT_VERSION:
        raise ValueError(f"{ckpt_path} has checkpoint version {d.get('version')!r}; "
                         f"this code reads version {_CHECKPOINT_VERSION}")
    pso = PSO.from_state_dict(d["pso"])
    if d["n_experts"] != n_experts:
        raise ValueError(f"checkpoint is for {d['n_experts']} experts, not {n_experts}; "
                         f"resume with the same experts or use another out_dir")
    if d["seed"] != seed:
        raise ValueError(f"checkpoint was made with seed={d['seed']}, not seed={seed}; "
                         f"resume with the same seed or use another out_dir")
    if config is not None and config != pso.config:
        diff = {k: (v, getattr(config, k)) for k, v in pso.config.to_dict().items()
                if getattr(config, k) != v}
        raise ValueError(f"config differs from the checkpoint's (saved, given): {diff}; "
                         f"resume with the saved config (config=None) or use another out_dir")
    n_bytes = int(d["history_bytes"])
    if not os.path.exists(hist_path) or os.path.getsize(hist_path) < n_bytes:
        raise ValueError(f"{hist_path} is missing or shorter than the checkpoint says "
                         f"({n_bytes} bytes); the run directory was modified")
    with open(hist_path, "r+b") as f:
        data = f.read(n_bytes)
        f.truncate(n_bytes)  # drop lines of iterations the checkpoint does not cover
        f.flush()
        os.fsync(f.fileno())
    history = [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
    if len(history) != pso.state.iteration + 1:
        raise ValueError(f"{hist_path} has {len(history)} records but the checkpoint is at "
                         f"iteration {pso.state.iteration}; the run directory was modified")
    return pso, history, float(d["elapsed"]), dict(d.get("task_state") or {})


# --------------------------------------------------------------------------------------------
# Grids of settings and seeds
# --------------------------------------------------------------------------------------------


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


@dataclass
class GridRun:
    """Summary of one (config, seed) run of a grid."""

    config: SwarmConfig
    seed: int
    utility: float
    n_evaluations: int
    out_dir: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return {"config": self.config.to_dict(), "seed": self.seed,
                "utility": float_to_json(self.utility), "n_evaluations": self.n_evaluations,
                "out_dir": self.out_dir}


@dataclass
class GridResult:
    """The best run of a grid on dev, plus a summary of every run.

    Attributes:
        best: the :class:`SearchResult` with the highest dev utility (first one on ties).
        runs: every run, in the order they ran.
    """

    best: SearchResult
    runs: list[GridRun] = field(default_factory=list)

    def to_json(self, indent: int | None = None) -> str:
        """Strict JSON: the best result and the run summaries."""
        return json.dumps({"best": self.best.to_dict(), "runs": [r.to_dict() for r in self.runs]},
                          allow_nan=False, indent=indent)


def run_grid(
    evaluate: Evaluate,
    n_experts: int,
    configs_or_grid: Mapping[str, Any] | Iterable[SwarmConfig],
    seeds: Sequence[int] = (0,),
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    base: SwarmConfig | None = None,
    on_run: Callable[[GridRun], None] | None = None,
) -> GridResult:
    """Run several seeded settings and keep the best on dev, as the paper did.

    Args:
        evaluate: the utility, as for :func:`run_search`.
        n_experts: N.
        configs_or_grid: a list of :class:`SwarmConfig`, or a grid ``{setting: [values]}``
            expanded with :func:`expand_grid` on top of ``base``.
        seeds: every config runs once per seed.
        out_dir: if given, run k with seed s writes to ``out_dir/run{k:03d}-seed{s}`` and a
            ``grid.json`` summary is written at the end.
        resume: resume each run from its own checkpoint (finished runs are not redone).
        progress: progress bars.
        base: base config for a grid mapping.
        on_run: called with each run's summary when it finishes.

    Returns:
        A :class:`GridResult`.
    """
    if isinstance(configs_or_grid, Mapping):
        configs = expand_grid(configs_or_grid, base)
    else:
        configs = list(configs_or_grid)
        if not all(isinstance(c, SwarmConfig) for c in configs):
            raise ValueError("configs_or_grid must be a grid mapping or a list of SwarmConfig")
    seeds = list(seeds)
    if not configs or not seeds:
        raise ValueError("run_grid needs at least one config and one seed")
    runs: list[GridRun] = []
    best: SearchResult | None = None
    for k, cfg in enumerate(configs):
        for s in seeds:
            sub = None if out_dir is None else os.path.join(out_dir, f"run{k:03d}-seed{s}")
            res = run_search(evaluate, n_experts, cfg, sub, resume=resume, progress=progress, seed=s)
            run = GridRun(cfg, int(s), res.utility, res.n_evaluations, sub)
            runs.append(run)
            if best is None or rank_scores(res.utility) > rank_scores(best.utility):
                best = res
            if on_run is not None:
                on_run(run)
    assert best is not None
    result = GridResult(best=best, runs=runs)
    if out_dir is not None:
        atomic_write_text(os.path.join(out_dir, "grid.json"), result.to_json())
    return result
