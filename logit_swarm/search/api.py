"""The public search entry point: :func:`swarm_search` (experts + task -> recipe-ready ensemble).

This is the bridge between the model-free search (``pso``, ``driver``) and the rest of the
project: it loads experts and tasks, turns ``task.evaluate`` into the utility the driver calls
once per iteration with the whole swarm, and wraps the best weights in an
:class:`~logit_swarm.ensemble.Ensemble` that carries decoding defaults and provenance, so
``result.ensemble.save("recipe.json")`` writes a recipe that ``Ensemble.load`` serves.

::

    import logit_swarm as ls
    res = ls.swarm_search([e1, e2, e3], "zoo-facts-mc", seed=0)
    res.weights, res.utility            # raw weights of the global best, its dev utility
    res.history                         # one record per iteration (see driver.py)
    res.ensemble.save("recipe.json")

Search settings come from ``config``: a :class:`SwarmConfig`, a mapping, or a YAML/JSON file.
A mapping may also hold ``grid`` ({setting: [values]}), ``grid_samples`` (draw that many
settings from the grid, as the authors' scripts do) and ``seeds`` (every setting runs once per
seed); the run with the best dev utility is kept, as the paper did.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from logit_swarm.ensemble import Ensemble, load_expert
from logit_swarm.mixing import check_mode
from logit_swarm.tasks import Task, is_test_split, load_task
from logit_swarm.tasks.spec import TASKS

from ..windows import truncation_run
from ._common import float_to_json, make_rng
from .driver import CHECKPOINT_FILE, MethodResult, run_method
from .memo import MemoExpert, memo_stats, memoize, task_generates
from .methods.pso import SwarmConfig, expand_grid, sample_configs
from .space import space_for_mode

__all__ = ["SwarmResult", "SearchPlan", "TaskUtility", "swarm_search", "load_search_config",
           "resolve_experts", "resolve_task", "task_decoding", "RECIPE_FILE"]

#: Name of the recipe a search writes into its run directory.
RECIPE_FILE = "recipe.json"

# Keys of a config mapping that describe a grid of runs rather than one swarm's settings.
_GRID_KEYS = ("grid", "grid_samples", "seeds")


# --------------------------------------------------------------------------------------------
# Inputs: settings, experts, task
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchPlan:
    """What to run: one swarm setting, or a grid of settings × seeds (best on dev wins).

    Attributes:
        config: the base settings (the only ones when ``grid`` is None).
        grid: setting name -> list of values, or None.
        grid_samples: draw this many settings from the grid (None: all combinations).
        seeds: seeds for a grid (None: just the search's own seed).
    """

    config: SwarmConfig
    grid: dict[str, list] | None = None
    grid_samples: int | None = None
    seeds: tuple[int, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description (for provenance)."""
        d: dict[str, Any] = {"config": self.config.to_dict()}
        if self.grid is not None:
            d.update(grid=self.grid, grid_samples=self.grid_samples,
                     seeds=list(self.seeds) if self.seeds is not None else None)
        return d


def _read_mapping_file(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"search config {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot parse search config {str(path)!r}: {first}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"search config {str(path)!r} must be a mapping of settings, e.g. swarm_size: 10")
    return data


def load_search_config(config: Any = None, overrides: Mapping[str, Any] | None = None) -> SearchPlan:
    """Read search settings from None (defaults), a :class:`SwarmConfig`, a mapping or a file.

    Args:
        config: see the module docstring.
        overrides: settings that replace the file's (e.g. from ``--set`` on the command line).

    Raises:
        ValueError: unknown setting (with the closest known name) or a bad value.
        FileNotFoundError: a config path that does not exist.
    """
    if isinstance(config, SearchPlan):
        if overrides:
            config = {**config.config.to_dict(), **dict(overrides)}
        else:
            return config
    if config is None:
        data: dict = {}
    elif isinstance(config, SwarmConfig):
        data = config.to_dict()
    elif isinstance(config, Mapping):
        data = dict(config)
    elif isinstance(config, (str, os.PathLike)):
        data = _read_mapping_file(Path(config).expanduser())
    else:
        raise ValueError(f"config must be a SwarmConfig, a mapping or a YAML/JSON path, "
                         f"not {type(config).__name__}")
    data.update(dict(overrides or {}))
    grid = data.pop("grid", None)
    samples = data.pop("grid_samples", None)
    seeds = data.pop("seeds", None)
    base = SwarmConfig.from_dict(data)
    if grid is None:
        if samples is not None or seeds is not None:
            raise ValueError("grid_samples and seeds only apply with a grid: add grid: {setting: [values]}")
        return SearchPlan(base)
    if not isinstance(grid, Mapping) or not grid:
        raise ValueError("grid must be a non-empty mapping {setting: [values]}, e.g. grid: {inertia: [0.1, 0.2]}")
    grid = {str(k): list(v) if isinstance(v, (list, tuple)) else [v] for k, v in grid.items()}
    expand_grid(grid, base)  # validates every combination now, before any model runs
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
        raise ValueError(f"grid_samples must be a positive integer, got {samples!r}")
    if seeds is not None:
        seeds = [seeds] if isinstance(seeds, int) else list(seeds)
        if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise ValueError(f"seeds must be a list of integers, got {seeds!r}")
        seeds = tuple(seeds)
    return SearchPlan(base, grid, samples, seeds)


def resolve_experts(experts: Any, device: str = "cpu", dtype: Any = None) -> list:
    """Loaded experts from a list of experts, model directories and/or remote endpoint URLs
    (``http://host:port/v1`` or ``http://host:port/v1#model``), or an Ensemble's.

    Raises:
        ValueError: no experts. FileNotFoundError: a directory that does not exist.
    """
    if hasattr(experts, "experts") and hasattr(experts, "weights"):
        return list(experts.experts)
    if isinstance(experts, (str, os.PathLike)):
        experts = [experts]
    experts = list(experts)
    if len(experts) < 2:
        raise ValueError(f"a search needs at least 2 experts, got {len(experts)}")
    out = []
    for e in experts:
        if isinstance(e, str) and e.startswith(("http://", "https://")):
            # A remote OpenAI-compatible endpoint ("URL" or "URL#model"); key from $LOGIT_SWARM_API_KEY.
            url, _, model = e.partition("#")
            out.append(load_expert(url, model=model or None))
        elif isinstance(e, (str, os.PathLike)):
            p = Path(e).expanduser()
            if not p.is_dir():
                raise FileNotFoundError(f"expert directory {str(p)!r} does not exist; pass a Hugging Face "
                                        "model directory (e.g. from `logit-swarm zoo build`)")
            out.append(load_expert(p, device=device, dtype=dtype))
        else:
            out.append(e)
    return out


def resolve_task(task: Any, data_dir: Any = None) -> tuple[Any, str | None]:
    """A Task and the reference that reloads it (a registered name or an absolute spec path).

    The reference is stored in the recipe's provenance so ``logit-swarm eval`` finds the task;
    it is None for a Task object or an inline spec mapping (nothing to reload it from).
    """
    if isinstance(task, Task):
        ref = task.name if task.name in TASKS else None
        return task, ref
    if isinstance(task, Mapping):
        return load_task(task, data_dir=data_dir), None
    if isinstance(task, (str, os.PathLike)):
        t = load_task(task, data_dir=data_dir)
        p = Path(task).expanduser()
        ref = str(p.resolve()) if p.is_file() else TASKS.canonical(str(task))
        return t, ref
    raise ValueError(f"task must be a Task, a spec path, a registered name or a spec mapping, "
                     f"not {type(task).__name__}")


def count_examples(task: Any, split: str) -> int | None:
    """Examples of ``split`` (None for a task with no examples of its own, e.g. a multi task)."""
    try:
        return len(task.examples(split))
    except ValueError:
        return None


def task_decoding(task: Any) -> dict[str, Any]:
    """Decoding defaults a recipe should carry for this task (from its generation settings)."""
    gen = getattr(task, "gen", None)
    if gen is None:
        return {}
    out: dict[str, Any] = {"max_new_tokens": int(gen.max_new_tokens),
                           "temperature": float(gen.temperature)}
    if gen.stop:
        out["stop"] = list(gen.stop)
    if gen.seed is not None:
        out["seed"] = int(gen.seed)
    if gen.chat:
        out["chat"] = True
    return out


# --------------------------------------------------------------------------------------------
# The utility the driver calls
# --------------------------------------------------------------------------------------------


class TaskUtility:
    """``evaluate(W (k, N)) -> (k,)`` for a task and a pool of experts on one split.

    Rows that no mixture can use (non-finite, or in mode "probs" without a positive weight) get
    NaN — the search ranks them worst — instead of failing the whole iteration. Counts rows,
    calls and seconds, for provenance and tables.
    """

    def __init__(self, task: Any, experts: Sequence[Any], split: str = "dev", mode: str = "probs",
                 allow_test: bool = False):
        self.task, self.experts, self.split, self.mode = task, list(experts), split, mode
        self.allow_test = allow_test
        self.rows = 0
        self.calls = 0
        self.seconds = 0.0

    def checkpoint_state(self) -> dict[str, Any]:
        """The task's state (see ``Task.checkpoint_state``), for the search's checkpoints."""
        return self.task.checkpoint_state()

    def restore_state(self, state: dict[str, Any]) -> None:
        """Restore the task's state from a checkpoint (before the first evaluation)."""
        self.task.restore_state(state)

    def __call__(self, W: np.ndarray) -> np.ndarray:
        W = np.atleast_2d(np.asarray(W, dtype=np.float64))
        ok = np.isfinite(W).all(axis=1)
        if self.mode == "probs":
            ok &= (W > 0).any(axis=1)
        out = np.full(len(W), np.nan)
        start = time.perf_counter()
        if ok.any():
            out[ok] = self.task.evaluate(self.experts, W[ok], split=self.split, mode=self.mode,
                                         allow_test=self.allow_test)
        self.seconds += time.perf_counter() - start
        self.rows += len(W)
        self.calls += 1
        return out


# --------------------------------------------------------------------------------------------
# swarm_search
# --------------------------------------------------------------------------------------------


@dataclass
class SwarmResult:
    """What :func:`swarm_search` returns.

    Attributes:
        weights: (N,) the best mixture evaluated (on the simplex in mode "probs").
        utility: its utility on the search split (dev).
        history: one record per swarm iteration (of every grid run), see :mod:`.driver`.
        ensemble: an :class:`~logit_swarm.ensemble.Ensemble` with these weights, the mode, the
            task's decoding defaults and the search's provenance; ``.save()`` writes the recipe.
        search: the driver's :class:`~logit_swarm.search.driver.MethodResult`.
        task: the task that was searched on.
        grid: per grid run (config x seed): its settings, best utility and evaluations; None
            for a single run.
        evaluation_seconds: time spent inside the utility (this session).
        memo: hit statistics of the cross-iteration memo (:mod:`.memo`) when it was used, else
            None. A resumed search starts with an empty memo, so these count this session only.
    """

    weights: np.ndarray
    utility: float
    history: list[dict[str, Any]]
    ensemble: Any
    search: MethodResult
    task: Any = None
    grid: list[dict[str, Any]] | None = None
    evaluation_seconds: float = 0.0
    memo: dict[str, Any] | None = None

    @property
    def n_evaluations(self) -> int:
        """Every utility evaluation of the search: initial swarm, restarts, every grid run."""
        return self.search.n_evaluations


def history_summary(history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Compact per-step summary for provenance: best-so-far and mean utility, evaluations."""
    return {
        "steps": len(history),
        "best": [h.get("best_utility") for h in history],
        "mean": [h.get("mean_utility") for h in history],
        "n_evaluations": history[-1]["n_evaluations"] if history else 0,
    }


def grid_summary(history: Sequence[Mapping[str, Any]], configs: Sequence[SwarmConfig]) -> list[dict[str, Any]]:
    """Per run of a grid (from the history's ``run`` field): seed, settings, best, evaluations."""
    runs: dict[int, dict[str, Any]] = {}
    before = 0
    for h in history:
        k = int(h.get("run", 0))
        r = runs.setdefault(k, {"run": k, "seed": h.get("seed"), "utility": None, "n_evaluations": 0})
        r["n_evaluations"] += h["n_evaluations"] - before
        before = h["n_evaluations"]
        r["utility"] = h.get("g_utility")
    per_seed = max(1, -(-len(runs) // max(len(configs), 1)))
    for k, r in runs.items():
        r["config"] = configs[min(k // per_seed, len(configs) - 1)].to_dict() if configs else None
    return [runs[k] for k in sorted(runs)]


def _provenance(task: Any, task_ref: str | None, split: str, seed: int, mode: str, plan: SearchPlan,
                res: MethodResult, experts: Sequence[Any], grid: list | None) -> dict[str, Any]:
    from logit_swarm import __version__  # the package imports this module: read it at call time

    prov: dict[str, Any] = {
        "task": task_ref,
        "task_name": task.name,
        "task_kind": task.kind,
        "split": split,
        "seed": int(seed),
        "mode": mode,
        "search": "model_swarms_pso",
        "space": space_for_mode(mode).name,
        "config": plan.config.to_dict(),
        "n_evaluations": int(res.n_evaluations),
        "utility": float_to_json(res.utility),
        "experts": [e.name for e in experts],
        "history": history_summary(res.history),
        "logit_swarm_version": __version__,
    }
    if grid is not None:
        prov["grid"] = {**plan.to_dict(), "runs": grid}
    # Wall-clock time is deliberately left out: the recipe of a resumed search must be
    # byte-identical to the one an uninterrupted search writes (result.json keeps the timing).
    return prov


def swarm_options(plan: SearchPlan, seed: int) -> tuple[dict[str, Any], list[SwarmConfig]]:
    """The swarm method's options for a plan: one config, or the grid's configs and seeds."""
    if plan.grid is None:
        return {"config": plan.config}, [plan.config]
    configs = (expand_grid(plan.grid, plan.config) if plan.grid_samples is None else
               sample_configs(plan.grid, plan.grid_samples, make_rng(int(seed)), plan.config))
    seeds = list(plan.seeds) if plan.seeds is not None else [int(seed)]
    return {"configs": configs, "seeds": seeds}, configs


def saved_plan(out_dir: Any) -> SearchPlan | None:
    """The plan of the search checkpointed in ``out_dir`` (for a resume without a config)."""
    path = Path(out_dir) / CHECKPOINT_FILE if out_dir is not None else None
    if path is None or not path.exists():
        return None
    opts = json.loads(path.read_text(encoding="utf-8")).get("options") or {}
    if "configs" in opts:
        configs = [SwarmConfig.from_dict(c) for c in opts["configs"]]
        return SearchPlan(configs[0], grid={"__configs__": configs}, seeds=tuple(opts["seeds"]))
    return SearchPlan(SwarmConfig.from_dict(opts.get("config") or {}))


def swarm_search(experts: Any, task: Any, seed: int = 0, config: Any = None, mode: str = "probs",
                 out_dir: str | os.PathLike | None = None, resume: bool = False, progress: bool = True,
                 split: str = "dev", data_dir: str | os.PathLike | None = None,
                 device: str = "cpu", memo: bool | None = None, truncation: str | None = None) -> SwarmResult:
    """Search mixing weights for ``experts`` on ``task`` with Model Swarms PSO.

    Every iteration evaluates the whole swarm in one ``task.evaluate(experts, W, split)`` call,
    so the experts' work is batched across particles (and, for likelihood-scored tasks, done
    once: later iterations are arithmetic on cached tables). In mode "probs" every particle is a
    mixture (see :mod:`.space`).

    Args:
        experts: loaded experts, model directories or endpoint URLs (at least 2).
        task: a Task, a spec path (YAML/JSON), a registered task name, or a spec mapping.
        seed: seed of the swarm (same inputs + same seed -> same trajectory and recipe).
        config: search settings (see the module docstring); None = the paper protocol (or, when
            resuming, the settings saved in the checkpoint).
        mode: mixing mode, "probs" or "logits".
        out_dir: run directory for ``history.jsonl``, ``checkpoint.json``, ``result.json`` and
            ``recipe.json``; None keeps everything in memory.
        resume: continue the search saved in ``out_dir`` (finished runs are returned as is).
        progress: progress bar on stderr.
        split: the split the utility is measured on; test splits are refused (never search on test).
        data_dir: data directory for named tasks that need files.
        device: device for experts given as directories.
        memo: remember the experts' next-token distributions across iterations
            (:mod:`.memo`); None = on exactly when the task generates text. Results are the
            same either way; the hit rate is in ``result.memo``.
        truncation: what an expert whose context window is too short sees: "left" (default;
            the end of the text, reported once for the whole search) or "error"; a task spec's
            own ``truncation:`` wins (logit_swarm/windows.py).

    Returns:
        A :class:`SwarmResult`.

    Raises:
        ValueError: bad arguments (unknown mode, test split, unknown setting, too few experts...).
        FileNotFoundError: a missing expert directory, spec file or config file.
    """
    check_mode(mode)
    if is_test_split(split):
        raise ValueError(f"refusing to search on the {split!r} split: test data must never steer a "
                         "search; search on dev and report test afterwards (logit-swarm compare)")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    # Resuming without a config uses the checkpoint's saved settings; otherwise read them now so
    # a bad setting fails before any model is loaded.
    plan = None if (resume and config is None) else load_search_config(config)
    task_obj, task_ref = resolve_task(task, data_dir)
    experts = resolve_experts(experts, device=device)
    with truncation_run(truncation):  # one truncation report for the whole search
        return _search(experts, task_obj, task_ref, int(seed), plan, mode, out_dir, resume, progress, split, memo)


def search_utility(task_obj: Any, experts: list, split: str, mode: str, memo: bool | None) -> TaskUtility:
    """The utility the driver calls, over memoised experts when the task generates text."""
    use_memo = task_generates(task_obj) if memo is None else bool(memo)
    # The memo wrappers only serve the search's evaluations; the ensemble keeps the experts.
    return TaskUtility(task_obj, memoize(experts) if use_memo else experts, split=split, mode=mode)


def _search(experts: list, task_obj: Any, task_ref: str | None, seed: int, plan: SearchPlan | None,
            mode: str, out_dir: Any, resume: bool, progress: bool, split: str,
            memo: bool | None = None, utility: TaskUtility | None = None) -> SwarmResult:
    """:func:`swarm_search` once its inputs are resolved (``compare`` enters here, keeping the
    reference of the task it was given, and its own utility so that the memo is shared)."""
    if plan is None:
        plan = saved_plan(out_dir) if resume else None
        plan = plan or load_search_config(None)
    if plan.grid is not None and "__configs__" in plan.grid:  # a resumed grid: its configs as saved
        options = {"configs": plan.grid["__configs__"], "seeds": list(plan.seeds or (seed,))}
        configs = plan.grid["__configs__"]
        plan = SearchPlan(plan.config, grid=None)
        grid_plan = True
    else:
        options, configs = swarm_options(plan, seed)
        grid_plan = plan.grid is not None
    n = len(experts)
    small = [c.swarm_size for c in configs if c.swarm_size < n]
    if small:
        raise ValueError(f"swarm_size {small[0]} is smaller than the number of experts {n}; every expert must "
                         "start as a particle (set swarm_size >= number of experts)")
    utility = utility or search_utility(task_obj, experts, split, mode, memo)
    res = run_method("swarm", utility, n, mode=mode, seed=int(seed), options=options,
                     batch=max(c.swarm_size for c in configs), out_dir=out_dir, resume=resume, progress=progress,
                     resumable=task_obj)
    grid = grid_summary(res.history, configs) if grid_plan else None
    ensemble = Ensemble(experts, weights=res.weights, mode=mode, decoding=task_decoding(task_obj),
                        provenance=_provenance(task_obj, task_ref, split, int(seed), mode, plan, res,
                                               experts, grid))
    if out_dir is not None:
        ensemble.save(Path(out_dir) / RECIPE_FILE)
    stats = memo_stats(utility.experts) if any(isinstance(e, MemoExpert) for e in utility.experts) else None
    if progress:
        hit = f"; memo hit rate {stats['hit_rate']:.1%}" if stats and stats["hits"] + stats["misses"] else ""
        print(f"swarm search: best {split} utility {res.utility:.4g} after {res.n_evaluations} evaluations "
              f"({len(res.history)} iterations){hit}", file=sys.stderr)
    return SwarmResult(weights=np.asarray(res.weights, dtype=np.float64), utility=float(res.utility),
                       history=res.history, ensemble=ensemble, search=res, task=task_obj,
                       grid=grid, evaluation_seconds=utility.seconds, memo=stats)
