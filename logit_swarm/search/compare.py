"""``compare``: every registered method on the same task, at the same budget; dev and test.

The swarm runs first; its evaluation count (initial swarm, restarts and every grid run) becomes
the budget of every budgeted method (random search, DE, Nelder-Mead, CMA-ES, NGOpt), which all
ask at most one swarm iteration of rows at a time, so their counts match the swarm's within one
swarm iteration. Fixed-count methods (best single N, uniform 1, greedy 2N - 1, EM 1) run as they
are; per-question methods (PackLLM, prediction merge) do not search. Each search method runs
through the generic driver with its own run directory (``OUT/methods/NAME``), so a compare
resumes like a search. Everything that chooses sees only dev; the test split is evaluated once at
the end for the report.

Files in ``out_dir``: ``compare.json`` (the table as data), ``per_question.jsonl`` (one line per
method x split x question: ``method``, ``split``, ``question`` id, ``score``, ``correct``),
``search/`` (the swarm's run directory) and ``methods/NAME/`` (every other search method's).
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

from logit_swarm.mixing import check_mode

from ._common import atomic_write_text, dumps, float_to_json
from .api import (
    SwarmResult,
    TaskUtility,
    _search,
    count_examples,
    load_search_config,
    resolve_experts,
    resolve_task,
    search_utility,
)
from .driver import MethodResult, run_method
from .methods import METHODS, MethodInfo, MethodUnavailable, OutputResult, method_names

__all__ = ["MethodRow", "CompareResult", "compare", "default_methods", "PER_QUESTION_FILE"]

PER_QUESTION_FILE = "per_question.jsonl"


def default_methods() -> list[str]:
    """The methods ``compare`` runs by default, in table order (the swarm first)."""
    return [n for n in method_names() if METHODS.get(n).default]


@dataclass
class MethodRow:
    """One line of a comparison: a method, its weights (if one vector), dev and test utility.

    ``n_evaluations`` counts dev utilities the method used (None for the per-question methods,
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
    budget: int = 0

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
                "budget": self.budget, "seconds": self.seconds}

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



def _check_methods(names: Sequence[str] | None) -> list[MethodInfo]:
    chosen = default_methods() if names is None else list(names)
    infos = [METHODS.get(n) for n in chosen]  # unknown names: an error naming the close ones
    return [METHODS.get("swarm")] + [i for i in infos if i.name != "swarm"]


@dataclass
class _Ran:
    """A method's dev outcome before the test report."""

    row: MethodRow
    search: MethodResult | None = None
    output: OutputResult | None = None
    info: MethodInfo | None = None


def _run_search_method(info: MethodInfo, evaluate: TaskUtility, experts: list, task: Any, mode: str, seed: int,
                       budget: int, batch: int, out_dir: Path | None, resume: bool, progress: bool) -> _Ran:
    t0 = time.perf_counter()
    sub = None if out_dir is None else out_dir / "methods" / info.name
    res = run_method(info, evaluate, len(experts), mode=mode, seed=seed, budget=budget if info.budgeted else None,
                     batch=batch, out_dir=sub, resume=resume, progress=progress, resumable=task, task=task,
                     experts=evaluate.experts)
    row = MethodRow(info.name, info.label, res.utility, weights=res.weights, n_evaluations=res.n_evaluations,
                    seconds=time.perf_counter() - t0, details={"steps": res.steps})
    return _Ran(row, search=res, info=info)


def _run_output_method(info: MethodInfo, experts: list, task: Any, mode: str) -> _Ran:
    t0 = time.perf_counter()
    res = info.run(task, experts, "dev", mode, False, None)
    row = MethodRow(info.name, info.label, res.utility, seconds=time.perf_counter() - t0,
                    details={**{k: v for k, v in res.details.items() if k != "tuned"}, "summary": res.summary})
    return _Ran(row, output=res, info=info)


def _per_question_lines(method: str, split: str, ids: Sequence[str], scores: Any) -> list[str]:
    if scores is None:
        return []
    s = np.asarray(scores, dtype=np.float64)
    return [dumps({"method": method, "split": split, "question": q, "score": float_to_json(v),
                   "correct": bool(v >= 1.0) if np.isfinite(v) else None}) for q, v in zip(ids, s)]


def _question_ids(task: Any, split: str) -> list[str] | None:
    try:
        return task.question_ids(split)
    except ValueError:  # a task with no examples of its own (multi-task)
        return None


def _report_split(task: Any, experts: list, ran: list[_Ran], split: str, mode: str, n: int,
                  allow_test: bool) -> tuple[np.ndarray, list[str]]:
    """Evaluate every method on ``split`` (one call for all weight vectors); fill the rows' test
    column if it is a test split; return the experts' own utilities and per-question lines."""
    vec = [r for r in ran if r.row.weights is not None]
    W = np.vstack([np.eye(n)] + [r.row.weights[None, :] for r in vec])
    detailed = task.evaluate_detailed(experts, W, split=split, mode=mode, allow_test=allow_test)
    ids = _question_ids(task, split)
    lines: list[str] = []
    per = detailed.per_example
    for j, r in enumerate(vec):
        if allow_test:
            r.row.test = float(detailed.utility[n + j])
        if ids is not None and per is not None:
            lines += _per_question_lines(r.row.name, split, ids, per[n + j])
    for i, e in enumerate(experts):
        if ids is not None and per is not None:
            lines += _per_question_lines(f"expert:{e.name}", split, ids, per[i])
    for r in ran:
        if r.output is None:
            continue
        out = r.output if not allow_test else r.info.run(task, experts, split, mode, True, r.output.details["tuned"])
        if allow_test:
            r.row.test = out.utility
        if ids is not None:
            lines += _per_question_lines(r.row.name, split, ids, out.per_question)
    return np.asarray(detailed.utility[:n], dtype=np.float64), lines


def compare(experts: Any, task: Any, seed: int = 0, config: Any = None, mode: str = "probs",
            budget: int | None = None, methods: Sequence[str] | None = None,
            out_dir: str | os.PathLike | None = None, resume: bool = False, progress: bool = True,
            data_dir: str | os.PathLike | None = None, test_split: str | None = "test",
            device: str = "cpu", memo: bool | None = None, baselines: Sequence[str] | None = None) -> CompareResult:
    """Run the swarm and every other method on dev at equal budget, then report dev and test.

    Args:
        experts, task, seed, config, mode, resume, progress, data_dir, device, memo: as for
            :func:`~logit_swarm.search.api.swarm_search`.
        budget: dev evaluations for the budgeted methods; default: as many as the swarm used
            (all of its evaluations, grid runs included).
        methods: names to run (default :func:`default_methods`); the swarm always runs.
            ``baselines`` is the old name of this argument.
        out_dir: ``compare.json``, ``per_question.jsonl``, ``search/``, ``methods/NAME/``.
        test_split: the held-out split to report (None: dev only).

    Returns:
        A :class:`CompareResult`; ``.format_table()`` prints it.
    """
    check_mode(mode)
    infos = _check_methods(methods if methods is not None else baselines)
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 5):
        raise ValueError(f"budget must be an integer >= 5 (dev evaluations), got {budget!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    t_all = time.perf_counter()
    experts = resolve_experts(experts, device=device)
    plan = None if (resume and config is None) else load_search_config(config)
    task_obj, task_ref = resolve_task(task, data_dir)
    if test_split is not None and test_split not in task_obj.splits:
        if progress:
            print(f"compare: task {task_obj.name!r} has no {test_split!r} split; reporting dev only", file=sys.stderr)
        test_split = None
    out = None if out_dir is None else Path(out_dir)
    evaluate = search_utility(task_obj, experts, "dev", mode, memo)
    t0 = time.perf_counter()
    sw = _search(experts, task_obj, task_ref, int(seed), plan, mode, None if out is None else out / "search",
                 resume, progress, "dev", memo, utility=evaluate)
    swarm_row = MethodRow("swarm", METHODS.get("swarm").label, sw.utility, weights=sw.weights,
                          n_evaluations=sw.n_evaluations, seconds=time.perf_counter() - t0,
                          details={"steps": sw.search.steps})
    ran = [_Ran(swarm_row, search=sw.search, info=METHODS.get("swarm"))]
    batch = len(sw.history[0]["weights"])  # one swarm iteration: the initial swarm
    budget = int(budget if budget is not None else sw.n_evaluations)
    absent: dict[str, str] = {}
    for info in infos[1:]:
        try:
            if info.kind == "search":
                r = _run_search_method(info, evaluate, experts, task_obj, mode, int(seed), budget, batch, out,
                                       resume, progress)
            else:
                r = _run_output_method(info, experts, task_obj, mode)
        except MethodUnavailable as exc:
            absent[info.name] = str(exc)
            if progress:
                print(f"compare: {info.name} absent: {exc}", file=sys.stderr)
            continue
        ran.append(r)
        if progress:
            print(f"compare: {info.name}: dev {r.row.dev:.4g}, {r.row.n_evaluations} evaluations "
                  f"({r.row.seconds:.1f}s)", file=sys.stderr)
    result = _finish_compare(task_obj, experts, ran, absent, mode, int(seed), test_split, sw, budget, out, progress)
    result.seconds = time.perf_counter() - t_all
    if out is not None:
        atomic_write_text(out / "compare.json", json.dumps(result.to_dict(), indent=2, allow_nan=False))
    return result


def _finish_compare(task: Any, experts: list, ran: list[_Ran], absent: dict[str, str], mode: str, seed: int,
                    test_split: str | None, sw: SwarmResult, budget: int, out: Path | None,
                    progress: bool) -> CompareResult:
    """The report: per-question dev results, then (once) the test split; nothing here feeds back."""
    n = len(experts)
    for r in ran:
        if r.row.name == "best_single":
            r.row.label = f"best single ({experts[int(np.argmax(r.row.weights))].name})"
    singles_dev, lines = _report_split(task, experts, ran, "dev", mode, n, allow_test=False)
    singles_test = None
    if test_split is not None:
        if progress:
            print(f"compare: evaluating every method on the {test_split!r} split ...", file=sys.stderr)
        singles_test, test_lines = _report_split(task, experts, ran, test_split, mode, n, allow_test=True)
        lines += test_lines
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / PER_QUESTION_FILE, "".join(x + "\n" for x in lines))
    return CompareResult(
        task_name=task.name, task_kind=task.kind, mode=mode, seed=seed, experts=[e.name for e in experts],
        rows=[r.row for r in ran], absent=absent,
        n_examples={s: count_examples(task, s) for s in (["dev"] + ([test_split] if test_split else []))},
        expert_utilities={e.name: (float(singles_dev[i]), None if singles_test is None else float(singles_test[i]))
                          for i, e in enumerate(experts)},
        swarm=sw, budget=budget)
