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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._common import float_to_json, make_rng
from .driver import GridResult, SearchResult, expand_grid, run_grid, run_search, sample_configs
from .pso import SwarmConfig

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
    import yaml

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
    from logit_swarm.ensemble import load_expert

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
    from logit_swarm.tasks import Task, load_task
    from logit_swarm.tasks.spec import TASKS

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
        weights: (N,) raw weights of the best particle (mode "probs" reads max(w,0)/sum).
        utility: its utility on the search split (dev).
        history: one record per iteration of the kept run (see :mod:`.driver`).
        ensemble: an :class:`~logit_swarm.ensemble.Ensemble` with these weights, the mode, the
            task's decoding defaults and the search's provenance; ``.save()`` writes the recipe.
        search: the driver's :class:`~logit_swarm.search.driver.SearchResult` (state, config...).
        task: the task that was searched on.
        grid: the :class:`~logit_swarm.search.driver.GridResult` when a grid ran, else None.
        evaluation_seconds: time spent inside the utility (this session).
        memo: hit statistics of the cross-iteration memo (:mod:`.memo`) when it was used, else
            None. A resumed search starts with an empty memo, so these count this session only.
    """

    weights: np.ndarray
    utility: float
    history: list[dict[str, Any]]
    ensemble: Any
    search: SearchResult
    task: Any = None
    grid: GridResult | None = None
    evaluation_seconds: float = 0.0
    memo: dict[str, Any] | None = None

    @property
    def n_evaluations(self) -> int:
        """Utilities computed by the kept run (a resumed run counts its earlier sessions too)."""
        return self.search.n_evaluations


def history_summary(history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Compact per-iteration summary for provenance: best-so-far and mean utility, evaluations."""
    return {
        "iterations": max(len(history) - 1, 0),
        "best": [h.get("g_utility") for h in history],
        "mean": [h.get("mean_utility") for h in history],
        "n_evaluations": history[-1]["n_evaluations"] if history else 0,
    }


def _provenance(task: Any, task_ref: str | None, split: str, seed: int, mode: str, plan: SearchPlan,
                res: SearchResult, experts: Sequence[Any], grid: GridResult | None) -> dict[str, Any]:
    from logit_swarm import __version__

    prov: dict[str, Any] = {
        "task": task_ref,
        "task_name": task.name,
        "task_kind": task.kind,
        "split": split,
        "seed": int(seed),
        "mode": mode,
        "search": "model_swarms_pso",
        "config": res.config.to_dict(),
        "n_evaluations": int(res.n_evaluations),
        "utility": float_to_json(res.utility),
        "experts": [e.name for e in experts],
        "history": history_summary(res.history),
        "logit_swarm_version": __version__,
    }
    if grid is not None:
        prov["grid"] = {**plan.to_dict(), "runs": [r.to_dict() for r in grid.runs],
                        "chosen_seed": res.seed}
    # Wall-clock time is deliberately left out: the recipe of a resumed search must be
    # byte-identical to the one an uninterrupted search writes (result.json keeps the timing).
    return prov


def swarm_search(experts: Any, task: Any, seed: int = 0, config: Any = None, mode: str = "probs",
                 out_dir: str | os.PathLike | None = None, resume: bool = False, progress: bool = True,
                 split: str = "dev", data_dir: str | os.PathLike | None = None,
                 device: str = "cpu", memo: bool | None = None) -> SwarmResult:
    """Search mixing weights for ``experts`` on ``task`` with Model Swarms PSO.

    Every iteration evaluates the whole swarm in one ``task.evaluate(experts, W, split)`` call,
    so the experts' work is batched across particles (and, for likelihood-scored tasks, done
    once: later iterations are arithmetic on cached tables).

    Args:
        experts: loaded experts or model directories (at least 2).
        task: a Task, a spec path (YAML/JSON), a registered task name, or a spec mapping.
        seed: seed of the swarm (same inputs + same seed -> same trajectory and recipe).
        config: search settings (see the module docstring); None = defaults (or, when resuming,
            the settings saved in the checkpoint).
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

    Returns:
        A :class:`SwarmResult`.

    Raises:
        ValueError: bad arguments (unknown mode, test split, unknown setting, too few experts...).
        FileNotFoundError: a missing expert directory, spec file or config file.
    """
    from logit_swarm.mixing import check_mode
    from logit_swarm.tasks import is_test_split

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
    return _search(experts, task_obj, task_ref, int(seed), plan, mode, out_dir, resume, progress, split, memo)


def _search(experts: list, task_obj: Any, task_ref: str | None, seed: int, plan: SearchPlan | None,
            mode: str, out_dir: Any, resume: bool, progress: bool, split: str,
            memo: bool | None = None) -> SwarmResult:
    """:func:`swarm_search` once its inputs are resolved (``compare`` enters here, keeping the
    reference of the task it was given)."""
    from logit_swarm.ensemble import Ensemble

    if plan is None and out_dir is not None and (Path(out_dir) / "grid.json").exists():
        raise ValueError(f"{out_dir} holds a grid of searches; resume it with the same config (--config)")
    n = len(experts)
    if plan is not None and plan.config.swarm_size < n:
        raise ValueError(f"swarm_size {plan.config.swarm_size} is smaller than the number of experts {n}; "
                         "every expert must start as a particle (set swarm_size >= number of experts)")
    from .memo import memo_stats, memoize, task_generates

    use_memo = task_generates(task_obj) if memo is None else bool(memo)
    # The memo wrappers only serve the search's evaluations; the ensemble keeps the experts.
    utility = TaskUtility(task_obj, memoize(experts) if use_memo else experts, split=split, mode=mode)

    grid_result: GridResult | None = None
    if plan is not None and plan.grid is not None:
        configs = (expand_grid(plan.grid, plan.config) if plan.grid_samples is None else
                   sample_configs(plan.grid, plan.grid_samples, make_rng(int(seed)), plan.config))
        seeds = plan.seeds if plan.seeds is not None else (int(seed),)
        grid_result = run_grid(utility, n, configs, seeds=seeds, out_dir=out_dir, resume=resume,
                               progress=progress)
        res = grid_result.best
    else:
        res = run_search(utility, n, plan.config if plan is not None else None, out_dir=out_dir,
                         resume=resume, progress=progress, seed=int(seed))
        plan = plan or SearchPlan(res.config)

    ensemble = Ensemble(experts, weights=res.weights, mode=mode, decoding=task_decoding(task_obj),
                        provenance=_provenance(task_obj, task_ref, split, int(seed), mode, plan, res,
                                               experts, grid_result))
    if out_dir is not None:
        ensemble.save(Path(out_dir) / RECIPE_FILE)
    stats = memo_stats(utility.experts) if use_memo else None
    if progress:
        hit = f"; memo hit rate {stats['hit_rate']:.1%}" if stats and stats["hits"] + stats["misses"] else ""
        print(f"swarm search: best {split} utility {res.utility:.4g} after {res.n_evaluations} evaluations "
              f"({len(res.history) - 1} iterations){hit}", file=sys.stderr)
    return SwarmResult(weights=np.asarray(res.weights, dtype=np.float64), utility=float(res.utility),
                       history=res.history, ensemble=ensemble, search=res, task=task_obj,
                       grid=grid_result, evaluation_seconds=utility.seconds, memo=stats)


# --------------------------------------------------------------------------------------------
# compare: the search against every baseline, dev and test
# --------------------------------------------------------------------------------------------

#: Baselines :func:`compare` runs by default, in table order.
COMPARE_BASELINES = ("best_single", "uniform", "prediction_merge", "greedy", "packllm", "em",
                     "differential_evolution", "local", "random")

_LABELS = {
    "swarm": "model swarms (PSO)", "best_single": "best single expert", "uniform": "uniform mixture",
    "prediction_merge": "prediction merge (vote)", "greedy": "greedy ensemble", "packllm": "PackLLM (per prompt)",
    "em": "EM on dev likelihood", "differential_evolution": "differential evolution",
    "local": "local search (Nelder-Mead)", "random": "random search",
}


@dataclass
class MethodRow:
    """One line of a comparison: a method, its weights (if one vector), dev and test utility.

    ``n_evaluations`` counts dev utilities the method used (None for the model-output baselines,
    which do not search). ``test`` is None when the task has no test split or it was not asked.
    """

    name: str
    label: str
    dev: float
    test: float | None = None
    weights: np.ndarray | None = None
    n_evaluations: int | None = None
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON-able dict."""
        return {"name": self.name, "label": self.label, "dev": float_to_json(self.dev),
                "test": None if self.test is None else float_to_json(self.test),
                "weights": None if self.weights is None else [float_to_json(w) for w in self.weights],
                "n_evaluations": self.n_evaluations, "seconds": self.seconds, "details": self.details}


@dataclass
class CompareResult:
    """The search and its baselines on one task: rows, absent baselines (with why), experts.

    ``expert_utilities`` maps each expert's name to its own (dev, test) utility.
    """

    task_name: str
    task_kind: str
    mode: str
    seed: int
    experts: list[str]
    rows: list[MethodRow]
    absent: dict[str, str]
    n_examples: dict[str, int]
    expert_utilities: dict[str, tuple[float, float | None]]
    swarm: SwarmResult
    seconds: float = 0.0

    def row(self, name: str) -> MethodRow:
        """The row of method ``name``."""
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON-able summary (the recipe is saved separately)."""
        return {"task": self.task_name, "task_kind": self.task_kind, "mode": self.mode, "seed": self.seed,
                "experts": self.experts, "n_examples": self.n_examples,
                "rows": [r.to_dict() for r in self.rows], "absent": self.absent,
                "expert_utilities": {k: [float_to_json(d), None if t is None else float_to_json(t)]
                                     for k, (d, t) in self.expert_utilities.items()},
                "seconds": self.seconds}

    def format_table(self) -> str:
        """The comparison as a fixed-width text table (test column only if measured)."""
        has_test = any(r.test is not None for r in self.rows)
        n = self.n_examples
        head = (f"task {self.task_name} ({self.task_kind}), {len(self.experts)} experts, mode {self.mode}, "
                f"seed {self.seed}; dev {n.get('dev') or '?'} examples"
                + (f", test {n.get('test') or '?'} examples" if has_test else ""))
        cols = ["method", "dev"] + (["test"] if has_test else []) + ["evals", "weights"]
        body = []
        for r in self.rows:
            cells = [r.label, _fmt_u(r.dev)] + ([_fmt_u(r.test)] if has_test else [])
            cells += ["-" if r.n_evaluations is None else str(r.n_evaluations),
                      _fmt_weights(r.weights, self.experts, self.mode, r.details)]
            body.append(cells)
        widths = [max(len(c[i]) for c in [cols] + body) for i in range(len(cols))]
        fmt = lambda cells: "  ".join(c.ljust(w) if i in (0, len(cols) - 1) else c.rjust(w)  # noqa: E731
                                      for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
        lines = [head, fmt(cols), fmt(["-" * w for w in widths])] + [fmt(c) for c in body]
        if self.absent:
            lines.append("absent: " + "; ".join(f"{k}: {v}" for k, v in self.absent.items()))
        lines.append("experts alone (dev/test): " + ", ".join(
            f"{k} {_fmt_u(d)}/{_fmt_u(t)}" for k, (d, t) in self.expert_utilities.items()))
        return "\n".join(lines)


def _fmt_u(x: float | None) -> str:
    if x is None:
        return "-"
    return "nan" if not np.isfinite(x) else f"{x:.3f}"


def _fmt_weights(w: np.ndarray | None, names: Sequence[str], mode: str, details: Mapping[str, Any]) -> str:
    if w is None:
        return str(details.get("summary", "per example"))
    w = np.asarray(w, dtype=np.float64)
    if mode == "probs":
        c = np.clip(w, 0, None)
        w = c / c.sum() if c.sum() > 0 else c
    order = np.argsort(-np.abs(w), kind="stable")
    shown = [f"{names[i]} {w[i]:.2f}" for i in order if abs(w[i]) >= 0.005][:4]
    return ", ".join(shown) + (", ..." if np.sum(np.abs(w) >= 0.005) > 4 else "")


def compare(experts: Any, task: Any, seed: int = 0, config: Any = None, mode: str = "probs",
            budget: int | None = None, baselines: Sequence[str] | None = None,
            out_dir: str | os.PathLike | None = None, resume: bool = False, progress: bool = True,
            data_dir: str | os.PathLike | None = None, test_split: str | None = "test",
            device: str = "cpu", memo: bool | None = None) -> CompareResult:
    """Run the swarm search and the baselines on dev, then report every method on test.

    Everything that chooses (search, baselines' own tuning, tie-break orders, PackLLM's τ) sees
    only dev. The test split is evaluated once at the end, with ``allow_test=True``, for the
    report: all weight vectors in one call, plus the model-output baselines.

    Args:
        experts, task, seed, config, mode, resume, progress, data_dir, device, memo: as for
            :func:`swarm_search`.
        budget: dev evaluations for the budgeted baselines (differential evolution, local and
            random search); default: as many as the search used.
        baselines: names to run (default :data:`COMPARE_BASELINES`).
        out_dir: the search's run directory is ``out_dir/search``; ``compare.json`` goes here.
        test_split: the held-out split to report (None: dev only).

    Returns:
        A :class:`CompareResult`; ``.format_table()`` prints it.
    """
    from logit_swarm.mixing import check_mode

    from . import model_baselines as mb
    from .baselines import run_baseline

    check_mode(mode)
    names = list(COMPARE_BASELINES if baselines is None else baselines)
    for nm in names:
        if nm not in COMPARE_BASELINES:
            import difflib

            near = difflib.get_close_matches(nm, COMPARE_BASELINES, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ValueError(f"unknown baseline {nm!r}{hint} (known: {', '.join(COMPARE_BASELINES)})")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 5):
        raise ValueError(f"budget must be an integer >= 5 (dev evaluations), got {budget!r}")
    t_all = time.perf_counter()
    experts = resolve_experts(experts, device=device)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    plan = None if (resume and config is None) else load_search_config(config)
    task_obj, task_ref = resolve_task(task, data_dir)
    if test_split is not None and test_split not in task_obj.splits:
        if progress:
            print(f"compare: task {task_obj.name!r} has no {test_split!r} split; reporting dev only",
                  file=sys.stderr)
        test_split = None
    run_dir = None if out_dir is None else Path(out_dir) / "search"
    t0 = time.perf_counter()
    sw = _search(experts, task_obj, task_ref, int(seed), plan, mode, run_dir, resume, progress, "dev", memo)
    details: dict[str, Any] = {"iterations": len(sw.history) - 1}
    if sw.memo is not None:
        details["memo"] = {k: sw.memo[k] for k in ("hits", "misses", "hit_rate")}
    rows = [MethodRow("swarm", _LABELS["swarm"], sw.utility, weights=sw.weights,
                      n_evaluations=sw.n_evaluations, seconds=time.perf_counter() - t0, details=details)]
    n = len(experts)
    budget = int(budget if budget is not None else max(sw.n_evaluations, 5))
    evaluate = TaskUtility(task_obj, experts, split="dev", mode=mode)
    absent: dict[str, str] = {}
    singles_dev: np.ndarray | None = None
    model_rows: dict[str, tuple[MethodRow, Any]] = {}

    def note(msg: str) -> None:
        if progress:
            print(msg, file=sys.stderr)

    for name in names:
        t0 = time.perf_counter()
        try:
            if name in ("prediction_merge", "packllm"):
                res = (mb.prediction_merge(task_obj, experts, "dev") if name == "prediction_merge"
                       else mb.packllm(task_obj, experts, "dev", mode=mode))
                row = MethodRow(name, _LABELS[name], res.utility, seconds=time.perf_counter() - t0,
                                details=dict(res.details))
                if name == "packllm":
                    row.details["summary"] = f"per prompt, tau {res.details['tau']:g}"
                else:
                    row.details["summary"] = f"vote of {n} experts"
                model_rows[name] = (row, res)
            elif name == "em":
                res = mb.em_task_baseline(task_obj, experts, evaluate, "dev", mode)
                row = MethodRow(name, _LABELS[name], res.utility, weights=res.weights,
                                n_evaluations=res.n_evaluations, seconds=time.perf_counter() - t0,
                                details=dict(res.details))
            else:
                opts: dict[str, Any] = {}
                if name in ("differential_evolution", "local", "random"):
                    opts["budget"] = budget
                    if name == "differential_evolution" and mode == "logits":
                        opts["bounds"] = (-1.0, 1.0)
                res = run_baseline(name, n, evaluate, seed=seed, **opts)
                row = MethodRow(name, _LABELS[name], res.utility, weights=res.weights,
                                n_evaluations=res.n_evaluations, seconds=time.perf_counter() - t0,
                                details=dict(res.details))
                if name == "best_single":
                    singles_dev = np.array([np.nan if u is None else float(u) for u in res.details["utilities"]])
                    row.label = f"best single ({experts[res.details['expert']].name})"
        except mb.BaselineUnavailable as exc:
            absent[name] = str(exc)
            note(f"compare: {name} absent: {exc}")
            continue
        rows.append(row)
        note(f"compare: {name}: dev {row.dev:.4g} ({row.seconds:.1f}s)")
    if singles_dev is None:
        singles_dev = evaluate(np.eye(n))
    dev_order = [int(i) for i in np.argsort(-np.nan_to_num(singles_dev, nan=-np.inf), kind="stable")]

    # ---- the held-out report: nothing below feeds back into any choice above -------------
    expert_test: np.ndarray | None = None
    if test_split is not None:
        note(f"compare: evaluating every method on the {test_split!r} split ...")
        vec_rows = [r for r in rows if r.weights is not None]
        W = np.vstack([np.eye(n)] + [r.weights[None, :] for r in vec_rows])
        test = TaskUtility(task_obj, experts, split=test_split, mode=mode, allow_test=True)(W)
        expert_test = test[:n]
        for r, u in zip(vec_rows, test[n:]):
            r.test = float(u)
        for name, (row, res) in model_rows.items():
            if name == "prediction_merge":
                row.test = mb.prediction_merge(task_obj, experts, test_split, allow_test=True,
                                               order=dev_order).utility
            else:
                row.test = mb.packllm(task_obj, experts, test_split, allow_test=True,
                                      tau=res.details["tau"], mode=mode).utility
    # Keep table order: search first, then baselines in the order asked.
    result = CompareResult(
        task_name=task_obj.name, task_kind=task_obj.kind, mode=mode, seed=int(seed),
        experts=[e.name for e in experts], rows=rows, absent=absent,
        n_examples={s: count_examples(task_obj, s) for s in (["dev"] + ([test_split] if test_split else []))},
        expert_utilities={e.name: (float(singles_dev[i]), None if expert_test is None else float(expert_test[i]))
                          for i, e in enumerate(experts)},
        swarm=sw, seconds=time.perf_counter() - t_all)
    if out_dir is not None:
        from ._common import atomic_write_text

        Path(out_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(out_dir) / "compare.json", json.dumps(result.to_dict(), indent=2, allow_nan=False))
    return result
