"""The one driver every search method runs through: budget, history, checkpoint, exact resume.

:func:`run_method` builds a method's :class:`~logit_swarm.search.methods.base.Searcher` and loops
``ask -> map coordinates to mixtures -> evaluate -> tell``. Each step's rows are evaluated in ONE
call of the utility. The driver, not the method, keeps:

* the **budget**: a step whose rows would exceed it is not evaluated, and the method ends there
  (population methods ask at most one swarm iteration of rows, so "equal budget" holds within one
  swarm iteration);
* the **best** mixture evaluated (first among equal utilities; NaN and +inf rank worst);
* the **history**: ``history.jsonl``, one line per step: the ``weights`` (mixtures) every row was
  evaluated with, the method's ``positions`` (its coordinates) when they differ, ``utilities``
  (NaN -> null), the best so far, evaluations so far, elapsed seconds, plus the method's own
  ``info`` (the swarm adds iteration, step length, restarts, g, worst...);
* the **checkpoint**: ``checkpoint.json``, replaced atomically after every step: method, options,
  seed, mode, budget, the byte length of ``history.jsonl`` it covers, and the task's own state
  (``task.checkpoint_state()``: reward normalisation, judge cache, random streams);
* **resume**: the task's state is restored first (``task.restore_state``, before any evaluation),
  then the method is rebuilt and *replayed*: it is told the saved utilities step by step and each
  of its asks is checked against the saved coordinates, so the resumed run continues exactly
  where the interrupted one stopped and ends with the same history and result (except the
  ``elapsed`` fields). History lines written after the last checkpoint are cut, since their step
  runs again.

Files in ``out_dir`` (strict JSON, no pickle): ``history.jsonl``, ``checkpoint.json``,
``result.json`` (:meth:`MethodResult.to_dict`, at the end).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping
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
from .methods import METHODS, MethodInfo, MethodUnavailable, SearchContext, Searcher
from .space import space_for_mode

__all__ = ["MethodResult", "Resumable", "run_method", "read_history", "CHECKPOINT_FILE", "HISTORY_FILE",
           "RESULT_FILE"]

CHECKPOINT_FILE = "checkpoint.json"
HISTORY_FILE = "history.jsonl"
RESULT_FILE = "result.json"
_FORMAT = "logit_swarm.search.checkpoint"
_VERSION = 2


@runtime_checkable
class Resumable(Protocol):
    """What the utility depends on beyond the weights, saved in every checkpoint (a Task)."""

    def checkpoint_state(self) -> dict:
        """JSON-serialisable state."""
        ...

    def restore_state(self, state: dict) -> None:
        """Put the state back (before the first evaluation of a resumed run)."""
        ...


@dataclass
class MethodResult:
    """What one method found.

    Attributes:
        method: registry name.
        weights: (N,) the best mixture evaluated (as evaluated: on the simplex in mode "probs").
        utility: its utility (-inf if every evaluation failed).
        n_evaluations: utilities computed (rows, summed over steps).
        history: one record per step, as in ``history.jsonl``.
        seed, mode, budget, options: how it ran.
        elapsed: wall-clock seconds, summed over resumed sessions.
        info: the method's last ``info()`` (e.g. the swarm's final iteration).
    """

    method: str
    weights: np.ndarray
    utility: float
    n_evaluations: int
    history: list[dict[str, Any]]
    seed: int
    mode: str
    budget: int | None
    options: dict[str, Any] = field(default_factory=dict)
    elapsed: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        """Number of asks evaluated."""
        return len(self.history)

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON-able dict (options must be JSON-able)."""
        return {"method": self.method, "weights": array_to_json(self.weights), "utility": float_to_json(self.utility),
                "n_evaluations": self.n_evaluations, "seed": self.seed, "mode": self.mode, "budget": self.budget,
                "options": self.options, "elapsed": self.elapsed, "info": self.info, "history": self.history}

    def to_json(self, indent: int | None = None) -> str:
        """Strict JSON text."""
        return json.dumps(self.to_dict(), allow_nan=False, indent=indent)


def _info(method: str | MethodInfo) -> MethodInfo:
    return method if isinstance(method, MethodInfo) else METHODS.get(method)


class _Best:
    """The best row evaluated so far (first among equals)."""

    def __init__(self, n: int) -> None:
        self.weights, self.utility, self.score = np.full(n, np.nan), -np.inf, -np.inf

    def update(self, W: np.ndarray, u: np.ndarray) -> None:
        s = rank_scores(u)
        i = int(np.argmax(s)) if len(s) else 0
        if len(s) and (s[i] > self.score or not np.isfinite(self.weights).all()):
            self.weights, self.utility, self.score = W[i].copy(), float(u[i]), float(s[i])


def _record(step: int, coords: np.ndarray, W: np.ndarray, u: np.ndarray, best: _Best, n_eval: int,
            elapsed: float, info: Mapping[str, Any]) -> dict[str, Any]:
    finite = u[np.isfinite(u)]
    rec: dict[str, Any] = {"step": step, "weights": array_to_json(W)}
    if not np.array_equal(coords, W):
        rec["positions"] = array_to_json(coords)
    rec.update(utilities=array_to_json(u), mean_utility=float(finite.mean()) if finite.size else None,
               best_utility=float_to_json(best.utility if np.isfinite(best.score) else -np.inf),
               best_weights=array_to_json(best.weights), n_evaluations=n_eval, elapsed=elapsed)
    rec.update(info)
    return rec


def read_history(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of ``out_dir/history.jsonl``."""
    with open(os.path.join(out_dir, HISTORY_FILE), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _append_line(path: str, line: str) -> None:
    """Append one line and make it durable before the checkpoint that counts it is written."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def _json_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Options as JSON values (configs via their to_dict)."""
    def enc(v: Any) -> Any:
        if hasattr(v, "to_dict"):
            return v.to_dict()
        if isinstance(v, (list, tuple)):
            return [enc(x) for x in v]
        if isinstance(v, Mapping):
            return {str(k): enc(x) for k, x in v.items()}
        return v
    return {str(k): enc(v) for k, v in options.items()}


@dataclass
class _Run:
    """The mutable state of one driver loop."""

    searcher: Searcher
    best: _Best
    history: list[dict[str, Any]]
    n_eval: int = 0
    elapsed_before: float = 0.0


def _replay(run: _Run, space: Any) -> None:
    """Tell a fresh searcher the saved steps, checking each ask against the saved coordinates."""
    for rec in run.history:
        coords = run.searcher.ask()
        saved = array_from_json(rec.get("positions", rec["weights"]), 2, coords.shape[1])
        if coords.shape != saved.shape or not np.array_equal(coords, saved):
            raise ValueError(f"resume: step {rec['step']} of the saved history does not match what the method "
                             "asks now (different code, options or seed); use another out_dir to start over")
        u = np.array([float_from_json(x) for x in rec["utilities"]], dtype=np.float64)
        run.searcher.tell(coords, u)
        run.best.update(space.weights(coords), u)
        run.n_eval += len(u)


def _open_run_dir(out_dir: str, resume: bool, header: dict[str, Any], resumable: Resumable | None,
                  ) -> tuple[list[dict[str, Any]], float] | None:
    """Check the run directory; on resume restore the task state, cut the history, return it."""
    os.makedirs(out_dir, exist_ok=True)
    ckpt, hist = os.path.join(out_dir, CHECKPOINT_FILE), os.path.join(out_dir, HISTORY_FILE)
    if resume and os.path.exists(ckpt):
        with open(ckpt, encoding="utf-8") as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{ckpt} is not valid JSON ({exc}); checkpoints are written atomically, "
                                 "so it was not written by this code") from None
        if not isinstance(d, dict) or d.get("format") != _FORMAT or d.get("version") != _VERSION:
            raise ValueError(f"{ckpt} is not a search checkpoint of this version (format {_FORMAT} v{_VERSION}); "
                             "use another out_dir")
        diff = {k: (d.get(k), v) for k, v in header.items() if d.get(k) != v}
        if diff:
            raise ValueError(f"resume: the run in {out_dir} was made with other settings (saved, given): {diff}; "
                             "resume with the same ones or use another out_dir")
        n_bytes = int(d["history_bytes"])
        if not os.path.exists(hist) or os.path.getsize(hist) < n_bytes:
            raise ValueError(f"{hist} is missing or shorter than its checkpoint says; the run directory was modified")
        with open(hist, "r+b") as f:
            data = f.read(n_bytes)
            f.truncate(n_bytes)  # drop steps the checkpoint does not cover: they run again
        if resumable is not None:
            resumable.restore_state(d.get("task_state") or {})
        return [json.loads(x) for x in data.decode("utf-8").splitlines() if x.strip()], float(d["elapsed"])
    if any(os.path.exists(os.path.join(out_dir, n)) for n in (CHECKPOINT_FILE, HISTORY_FILE, RESULT_FILE)):
        raise ValueError(f"{out_dir} already holds a search; pass resume=True (--resume) to continue it, "
                         "or choose an empty directory")
    open(hist, "w").close()
    return None


def _checkpoint(out_dir: str, header: dict[str, Any], elapsed: float, n_eval: int,
                resumable: Resumable | None) -> None:
    payload = {"format": _FORMAT, "version": _VERSION, **header,
               "history_bytes": os.path.getsize(os.path.join(out_dir, HISTORY_FILE)),
               "n_evaluations": n_eval, "elapsed": elapsed,
               "task_state": resumable.checkpoint_state() if resumable is not None else {}}
    atomic_write_text(os.path.join(out_dir, CHECKPOINT_FILE), dumps(payload))


def run_method(method: str | MethodInfo, evaluate: Evaluate, n_experts: int, *, mode: str = "probs",
               seed: int = 0, budget: int | None = None, options: Mapping[str, Any] | None = None,
               batch: int = 20, out_dir: str | os.PathLike | None = None, resume: bool = False,
               progress: bool = True, resumable: Resumable | None = None, task: Any = None,
               experts: Any = None, on_step: Callable[[dict[str, Any]], None] | None = None) -> MethodResult:
    """Run one registered search method against a utility.

    Args:
        method: a name of :data:`~logit_swarm.search.methods.METHODS` (or its info).
        evaluate: ``W (k, N) -> (k,)`` utilities of mixtures, higher is better, NaN = failed.
        n_experts: N.
        mode: mixing mode; decides the space (simplex / box) coordinates are mapped into.
        seed: the method's seed.
        budget: maximum utility evaluations (None: the method's own count; budgeted methods
            need one).
        options: method-specific settings (the swarm's ``config`` / ``configs`` / ``seeds``...).
        batch: rows per ask for population methods (one swarm iteration).
        out_dir: where to write history, checkpoint and result; None keeps them in memory.
        resume: continue the run saved in ``out_dir`` (a finished run is replayed, nothing evaluated).
        progress: a tqdm bar on stderr.
        resumable: the task (anything with checkpoint_state/restore_state), saved in checkpoints.
        task, experts: handed to methods that read the task's targets (EM).
        on_step: called with each history record after it is checkpointed.

    Returns:
        A :class:`MethodResult`.

    Raises:
        MethodUnavailable: the method does not apply (optional package missing, mode, task kind).
        ValueError: bad arguments, or a resume whose settings differ from the saved ones.
    """
    info = _info(method)
    if mode not in info.modes:
        raise MethodUnavailable(f"{info.name} applies to mode(s) {', '.join(info.modes)}, not {mode!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an int (it is stored in the checkpoint), got {seed!r}")
    if resume and out_dir is None:
        raise ValueError("resume=True needs out_dir (the directory holding checkpoint.json)")
    space = space_for_mode(mode)
    opts = dict(options or {})
    ctx = SearchContext(n_experts=int(n_experts), space=space, seed=int(seed), budget=budget, batch=int(batch),
                        options=opts, task=task, experts=experts)
    header = {"method": info.name, "seed": int(seed), "mode": mode, "n_experts": int(n_experts), "budget": budget,
              "batch": int(batch), "options": _json_options(opts)}
    run = _Run(info.make(ctx), _Best(int(n_experts)), [])
    if out_dir is not None:
        out_dir = os.fspath(out_dir)
        saved = _open_run_dir(out_dir, resume, header, resumable)
        if saved is not None:
            run.history, run.elapsed_before = saved
            _replay(run, space)
    _loop(run, evaluate, space, budget, out_dir, header, resumable, progress, info.label, on_step)
    return _finish(run, info, header, out_dir)


def _loop(run: _Run, evaluate: Evaluate, space: Any, budget: int | None, out_dir: str | None,
          header: dict[str, Any], resumable: Resumable | None, progress: bool, label: str,
          on_step: Callable[[dict[str, Any]], None] | None) -> None:
    bar = tqdm(total=budget, initial=run.n_eval, desc=label, unit="eval", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    start = time.perf_counter()
    try:
        while not run.searcher.done:
            coords = run.searcher.ask()
            if budget is not None and run.n_eval + len(coords) > budget:
                break
            W = space.weights(coords)
            u = check_utilities(evaluate(W.copy()), len(W))
            run.searcher.tell(coords, u)
            run.best.update(W, u)
            run.n_eval += len(u)
            elapsed = run.elapsed_before + (time.perf_counter() - start)
            rec = _record(len(run.history), coords, W, u, run.best, run.n_eval, elapsed, run.searcher.info())
            run.history.append(rec)
            if out_dir is not None:
                _append_line(os.path.join(out_dir, HISTORY_FILE), dumps(rec))
                _checkpoint(out_dir, header, elapsed, run.n_eval, resumable)
            bar.update(len(u))
            bar.set_postfix(best=f"{run.best.utility:.4g}", refresh=False)
            if on_step is not None:
                on_step(rec)
    finally:
        bar.close()


def _finish(run: _Run, info: MethodInfo, header: dict[str, Any], out_dir: str | None) -> MethodResult:
    if not run.history:
        raise ValueError(f"{info.name}: the budget ({header['budget']}) allowed no evaluation at all")
    utility = run.best.utility if np.isfinite(run.best.score) else -np.inf
    res = MethodResult(method=info.name, weights=run.best.weights, utility=float(utility), n_evaluations=run.n_eval,
                       history=run.history, seed=header["seed"], mode=header["mode"], budget=header["budget"],
                       options=header["options"], elapsed=float(run.history[-1]["elapsed"]),
                       info=run.searcher.info())
    if out_dir is not None:
        atomic_write_text(os.path.join(out_dir, RESULT_FILE), res.to_json())
    return res
