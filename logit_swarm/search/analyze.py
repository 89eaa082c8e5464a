"""The Model Swarms paper's analyses, each a table (text + JSON) and a PNG.

* :func:`weak_to_strong` — start the search from the weakest half of the experts (ranked by
  their own dev utility): does the result beat the best starting expert on test, and how far is
  it from the strong half?
* :func:`c_emerge` — the share of test questions solved by the result and by **no** starting
  expert (the paper's "C-emerge"), from per-question results: computed here (search, then
  :meth:`Task.question_results`) or read from ``compare``'s ``per_question.jsonl``.
* :func:`n_experts` — the utility as experts are added: a search over the first k experts for
  k = 1 … N (k = 1 is the expert alone), beside the best single expert among those k.

Everything that chooses (searches, which experts are "weak", which starting expert is "best")
sees only dev; test is evaluated once per result for the report. ``resume=True`` continues (or
reuses, when finished) the searches an earlier run left in ``out_dir``. Each function returns an
:class:`Analysis` and, with ``out_dir``, writes ``<name>.txt``, ``<name>.json`` and
``<name>.png`` there (the PNG needs matplotlib, the ``plots`` extra; without it the table is
still written and ``png`` is None). The command line is ``logit-swarm analyze``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from logit_swarm.tasks.registry import Registry

from ._common import atomic_write_text, float_to_json
from .api import resolve_experts, resolve_task, swarm_search
from .plots import PlotsUnavailable, save_figure

__all__ = ["Analysis", "ANALYSES", "weak_to_strong", "c_emerge", "n_experts", "read_per_question",
           "emergence"]

#: Expert rows of a ``per_question.jsonl`` are named ``expert:<name>`` (``compare``'s convention).
EXPERT_PREFIX = "expert:"


@dataclass
class Analysis:
    """One analysis: its name, the table as text, the numbers as JSON-able data, the files."""

    name: str
    table: str
    data: dict[str, Any]
    files: list[Path] = field(default_factory=list)

    def write(self, out_dir: str | os.PathLike, plot: Callable[[Any], None] | None) -> list[Path]:
        """Write ``<name>.txt``, ``<name>.json`` and (with matplotlib) ``<name>.png``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        files = [out / f"{self.name}.txt", out / f"{self.name}.json"]
        atomic_write_text(files[0], self.table + "\n")
        atomic_write_text(files[1], json.dumps(self.data, indent=2, allow_nan=False))
        if plot is not None:
            try:
                png = out / f"{self.name}.png"
                _save_plot(plot, png)
                files.append(png)
            except PlotsUnavailable as exc:
                print(f"analyze: {self.name}.png skipped: {exc}", file=sys.stderr)
        self.files = files
        return files


# --------------------------------------------------------------------------------------------
# Shared steps


def _u(x: float | None) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{x:.3f}"


def _j(x: float | None) -> Any:
    return None if x is None else float_to_json(float(x))


def _format(header: str, cols: Sequence[str], rows: Sequence[Sequence[str]], notes: Sequence[str] = ()) -> str:
    """A fixed-width table: first column left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [cols, *rows]) for i in range(len(cols))]

    def line(cells):
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join([header, line(cols), line(["-" * w for w in widths]), *map(line, rows), *notes])


@dataclass
class _Setup:
    experts: list
    task: Any
    test_split: str | None
    mode: str
    names: list[str]
    resume: bool = False


def _setup(experts: Any, task: Any, data_dir: Any, device: str, test_split: str | None, mode: str,
           resume: bool = False) -> _Setup:
    task_obj, _ = resolve_task(task, data_dir)
    pool = resolve_experts(experts, device=device)
    if test_split is not None and test_split not in task_obj.splits:
        print(f"analyze: task {task_obj.name!r} has no {test_split!r} split; reporting dev only", file=sys.stderr)
        test_split = None
    return _Setup(pool, task_obj, test_split, mode, [e.name for e in pool], resume)


def _utilities(s: _Setup, experts: list, W: np.ndarray, split: str | None) -> np.ndarray | None:
    if split is None:
        return None
    return np.asarray(s.task.evaluate(experts, W, split=split, mode=s.mode, allow_test=split != "dev"),
                      dtype=np.float64)


def _search(s: _Setup, experts: list, seed: int, config: Any, out_dir: Path | None, tag: str, progress: bool):
    """A swarm search on dev over ``experts`` (its run directory under ``out_dir/tag``). With
    ``resume`` a search already in that directory is continued, or returned as is when finished,
    so an interrupted analysis rerun with ``resume=True`` loses nothing."""
    run_dir = None if out_dir is None else out_dir / tag
    resume = s.resume and run_dir is not None and (run_dir / "checkpoint.json").exists()
    return swarm_search(experts, s.task, seed=seed, config=config, mode=s.mode,
                        out_dir=run_dir, progress=progress, resume=resume)


# --------------------------------------------------------------------------------------------
# weak-to-strong


def weak_to_strong(experts: Any, task: Any, *, seed: int = 0, config: Any = None, mode: str = "probs",
                   out_dir: str | os.PathLike | None = None, progress: bool = False, data_dir: Any = None,
                   device: str = "cpu", test_split: str | None = "test", resume: bool = False) -> Analysis:
    """Search from the weakest half of the experts (by their dev utility; at least 2).

    The verdict compares the result on test with the starting expert that is best on dev (the
    one a user would have picked), and also reports the best of all experts (strong half
    included) for reference. Needs at least 3 experts (a weak half of 2 and a strong rest).
    """
    s = _setup(experts, task, data_dir, device, test_split, mode, resume)
    n = len(s.experts)
    if n < 3:
        raise ValueError(f"weak-to-strong needs at least 3 experts (a weak half to start from), got {n}")
    dev = _utilities(s, s.experts, np.eye(n), "dev")
    order = [int(i) for i in np.argsort(dev, kind="stable")]
    weak = sorted(order[:max(2, n // 2)])
    out = Path(out_dir) if out_dir is not None else None
    sw = _search(s, [s.experts[i] for i in weak], seed, config, out, "search", progress)
    test = _utilities(s, s.experts, np.eye(n), s.test_split)
    res_test = None if test is None else float(
        _utilities(s, [s.experts[i] for i in weak], sw.weights[None, :], s.test_split)[0])
    ref = test if test is not None else dev
    res_ref = res_test if res_test is not None else float(sw.utility)
    best_start = max(weak, key=lambda i: (dev[i], -i))
    best_all = max(range(n), key=lambda i: (dev[i], -i))
    top_start = max(weak, key=lambda i: (ref[i], -i))  # best starting expert on the report split
    data = {"analysis": "weak-to-strong", "task": s.task.name, "mode": mode, "seed": seed, "experts": s.names,
            "order": [s.names[i] for i in order], "weak": [s.names[i] for i in weak],
            "expert_dev": [_j(x) for x in dev], "expert_test": None if test is None else [_j(x) for x in test],
            "result": {"weights": [_j(w) for w in sw.weights], "dev": _j(sw.utility), "test": _j(res_test),
                       "n_evaluations": int(sw.n_evaluations)},
            "best_start": s.names[best_start], "beats_best_start": bool(res_ref > ref[best_start]),
            "margin_best_start": _j(res_ref - ref[best_start]), "top_start": s.names[top_start],
            "margin_top_start": _j(res_ref - ref[top_start]), "best_overall": s.names[best_all],
            "margin_best_overall": _j(res_ref - ref[best_all]), "split": s.test_split or "dev"}
    a = Analysis("weak-to-strong", _weak_to_strong_table(data), data)
    if out is not None:
        a.write(out, lambda ax: _plot_weak_to_strong(ax, data))
    return a


def _weak_to_strong_table(d: Mapping[str, Any]) -> str:
    names = d["experts"]
    dev, test = d["expert_dev"], d["expert_test"]
    rows = []
    for nm in d["order"]:
        i = names.index(nm)
        rows.append([nm, "weak (start)" if nm in d["weak"] else "strong", _u(dev[i]),
                     _u(None if test is None else test[i])])
    r = d["result"]
    rows.append(["swarm from the weak half", "result", _u(r["dev"]), _u(r["test"])])
    ref = test if test is not None else dev
    sp = d["split"]
    start, best = names.index(d["best_start"]), names.index(d["best_overall"])
    notes = [f"best starting expert (on dev): {d['best_start']} {_u(ref[start])} on {sp}; the result "
             f"{'beats' if d['beats_best_start'] else 'does not beat'} it ({d['margin_best_start']:+.3f})",
             f"best starting expert on {sp} itself: {d['top_start']} {_u(ref[names.index(d['top_start'])])}; "
             f"the result {'beats' if d['margin_top_start'] > 0 else 'does not beat'} it "
             f"({d['margin_top_start']:+.3f})",
             f"best expert overall (on dev): {d['best_overall']} {_u(ref[best])} on {sp}; the result is "
             f"{'at least as good' if d['margin_best_overall'] >= 0 else 'worse'} ({d['margin_best_overall']:+.3f})"]
    header = (f"weak-to-strong: task {d['task']}, {len(names)} experts, search from the weakest {len(d['weak'])} "
              f"(by dev utility), mode {d['mode']}, seed {d['seed']}, {r['n_evaluations']} dev evaluations")
    return _format(header, ["expert", "group", "dev", "test"], rows, notes)


def _plot_weak_to_strong(ax: Any, d: Mapping[str, Any]) -> None:
    vals = d["expert_test"] if d["expert_test"] is not None else d["expert_dev"]
    res = d["result"]["test"] if d["result"]["test"] is not None else d["result"]["dev"]
    names = [*d["experts"], "swarm (weak half)"]
    heights = [np.nan if v is None else float(v) for v in vals] + [float(res)]
    colors = ["tab:orange" if nm in d["weak"] else "tab:gray" for nm in d["experts"]] + ["tab:blue"]
    ax.barh(range(len(names)), heights, color=colors)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel(f"{d['split']} utility")
    ax.set_title(f"weak-to-strong on {d['task']} (orange: starting experts)")


# --------------------------------------------------------------------------------------------
# C-emerge


def emergence(result: np.ndarray, experts: np.ndarray) -> dict[str, Any]:
    """Counts of a result's solved questions against the starting experts'.

    ``result``: [n] booleans; ``experts``: [N, n] booleans. ``c_emerge`` is the share of questions
    solved by the result and by no starting expert; ``lost`` those some expert solves and the
    result does not.
    """
    result = np.asarray(result, dtype=bool)
    experts = np.asarray(experts, dtype=bool)
    if experts.ndim != 2 or experts.shape[1] != result.shape[0] or result.size == 0:
        raise ValueError("emergence needs [n] result and [N, n] expert flags over the same n > 0 questions")
    anyone = experts.any(axis=0)
    n = int(result.size)
    return {"questions": n, "solved_by_result": int(result.sum()), "solved_by_any_expert": int(anyone.sum()),
            "emergent": int((result & ~anyone).sum()), "lost": int((~result & anyone).sum()),
            "c_emerge": float((result & ~anyone).mean()),
            "solved_by_expert": [int(x) for x in experts.sum(axis=1)]}


def read_per_question(path: str | os.PathLike, method: str = "swarm",
                      split: str = "test") -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
    """From a ``per_question.jsonl``: (question ids, the method's solved flags [n], expert names,
    the experts' flags [N, n]). Expert rows are methods named ``expert:<name>``."""
    p = Path(path)
    if p.is_dir():
        p = p / "per_question.jsonl"
    if not p.is_file():
        raise FileNotFoundError(f"no per-question results at {str(p)!r}; run `logit-swarm compare --out-dir DIR` first")
    flags: dict[str, dict[str, bool]] = {}
    for line in p.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        if r.get("split") != split:
            continue
        if r.get("correct") is None:
            raise ValueError(f"{p}: question {r.get('question')!r} of {r.get('method')!r} has no 'correct' "
                             "flag; C-emerge needs tasks whose questions are solved or not")
        flags.setdefault(str(r["method"]), {})[str(r["question"])] = bool(r["correct"])
    if method not in flags:
        raise ValueError(f"{p} has no {split!r} results of method {method!r}; it has {sorted(flags)}")
    names = [m for m in flags if m.startswith(EXPERT_PREFIX)]
    if not names:
        raise ValueError(f"{p} has no starting-expert rows (methods named '{EXPERT_PREFIX}<name>')")
    ids = list(flags[method])
    missing = [m for m in names if set(flags[m]) != set(ids)]
    if missing:
        raise ValueError(f"{p}: {missing[0]!r} does not cover the same {split!r} questions as {method!r}")
    experts = np.array([[flags[m][q] for q in ids] for m in names])
    return ids, np.array([flags[method][q] for q in ids]), [m[len(EXPERT_PREFIX):] for m in names], experts


def c_emerge(experts: Any = None, task: Any = None, *, per_question: str | os.PathLike | None = None,
             method: str = "swarm", seed: int = 0, config: Any = None, mode: str = "probs",
             out_dir: str | os.PathLike | None = None, progress: bool = False, data_dir: Any = None,
             device: str = "cpu", test_split: str = "test", resume: bool = False) -> Analysis:
    """The share of ``test_split`` questions solved by the result and by no starting expert.

    With ``per_question`` (a ``per_question.jsonl`` or the ``compare`` directory holding it) the
    flags are read from it (``method``'s rows against the ``expert:*`` rows); otherwise a search
    runs on dev over ``experts`` and every expert and the result are evaluated per question.
    """
    out = Path(out_dir) if out_dir is not None else None
    if per_question is not None:
        ids, res, names, flags = read_per_question(per_question, method, test_split)
        info = {"task": str(task) if task is not None else "?", "source": str(per_question), "n_evaluations": None}
    else:
        if experts is None or task is None:
            raise ValueError("c-emerge needs experts and a task, or per_question (a compare run's per_question.jsonl)")
        ids, res, names, flags, info = _computed_flags(_setup(experts, task, data_dir, device, test_split, mode,
                                                              resume),
                                                       seed, config, out, progress, test_split)
        method = "swarm"
    counts = emergence(res, flags)
    data = {"analysis": "c-emerge", **info, "split": test_split, "method": method, "experts": list(names), **counts,
            "emergent_ids": [q for q, r, a in zip(ids, res, flags.any(axis=0), strict=True) if r and not a]}
    a = Analysis("c-emerge", _c_emerge_table(data), data)
    if out is not None:
        a.write(out, lambda ax: _plot_c_emerge(ax, data))
    return a


def _computed_flags(s: _Setup, seed: int, config: Any, out: Path | None, progress: bool, split: str):
    """Search on dev over every expert, then per-question solved flags of experts and result."""
    if s.test_split is None:
        raise ValueError(f"c-emerge reports held-out questions; task {s.task.name!r} has no {split!r} split")
    sw = _search(s, s.experts, seed, config, out, "search", progress)
    n = len(s.experts)
    q = s.task.question_results(s.experts, np.vstack([np.eye(n), sw.weights[None, :]]), split=split,
                                mode=s.mode, allow_test=True)
    if q.solved is None:
        raise ValueError(f"c-emerge needs questions that are solved or not (multiple choice, exact match, "
                         f"abstain); task {s.task.name!r} is kind {s.task.kind!r}")
    info = {"task": s.task.name, "source": "computed", "n_evaluations": int(sw.n_evaluations),
            "weights": [_j(w) for w in sw.weights]}
    return q.ids, q.solved[n], s.names, q.solved[:n], info


def _c_emerge_table(d: Mapping[str, Any]) -> str:
    n = d["questions"]
    rows = [[nm, str(c), _u(c / n)] for nm, c in zip(d["experts"], d["solved_by_expert"], strict=True)]
    for label, key in (("any starting expert", "solved_by_any_expert"), (f"result ({d['method']})", "solved_by_result"),
                       ("result and no expert (C-emerge)", "emergent"), ("an expert but not the result", "lost")):
        rows.append([label, str(d[key]), _u(d[key] / n)])
    evals = f", {d['n_evaluations']} dev evaluations" if d.get("n_evaluations") else ""
    header = (f"c-emerge: task {d['task']}, {n} {d['split']} questions, {len(d['experts'])} starting experts, "
              f"result {d['method']!r} ({d['source']}{evals})")
    return _format(header, ["solved by", "questions", "share"], rows)


def _plot_c_emerge(ax: Any, d: Mapping[str, Any]) -> None:
    n = d["questions"]
    names = [*d["experts"], "any expert", "result"]
    vals = [c / n for c in d["solved_by_expert"]] + [d["solved_by_any_expert"] / n, d["solved_by_result"] / n]
    ax.barh(range(len(names)), vals, color=["tab:gray"] * len(d["experts"]) + ["tab:orange", "tab:blue"])
    emergent = d["emergent"] / n
    ax.barh([len(names) - 1], [emergent], color="tab:green", label=f"C-emerge {emergent:.3f}")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel(f"share of {d['split']} questions solved")
    ax.set_title(f"C-emerge on {d['task']}")
    ax.legend(loc="lower right")


# --------------------------------------------------------------------------------------------
# n-experts

ORDERS = ("given", "best-first", "worst-first")


def expert_order(dev: np.ndarray, order: str) -> list[int]:
    """The order in which experts are added: as given, or by dev utility (stable ties)."""
    if order == "given":
        return list(range(len(dev)))
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    ranked = [int(i) for i in np.argsort(dev, kind="stable")]
    return ranked[::-1] if order == "best-first" else ranked


def n_experts(experts: Any, task: Any, *, order: str = "given", seed: int = 0, config: Any = None,
              mode: str = "probs", out_dir: str | os.PathLike | None = None, progress: bool = False,
              data_dir: Any = None, device: str = "cpu", test_split: str | None = "test",
              resume: bool = False) -> Analysis:
    """Utility as experts are added: for k = 1 … N a search over the first k (k = 1: the expert
    alone), beside the best single expert among those k (chosen on dev)."""
    s = _setup(experts, task, data_dir, device, test_split, mode, resume)
    n = len(s.experts)
    dev1 = _utilities(s, s.experts, np.eye(n), "dev")
    test1 = _utilities(s, s.experts, np.eye(n), s.test_split)
    seq = expert_order(dev1, order)
    out = Path(out_dir) if out_dir is not None else None
    steps = []
    for k in range(1, n + 1):
        idx = seq[:k]
        best = max(idx, key=lambda i: (dev1[i], -i))
        step = {"k": k, "added": s.names[idx[-1]], "best_single": s.names[best], "best_single_dev": _j(dev1[best]),
                "best_single_test": None if test1 is None else _j(test1[best])}
        if k == 1:
            step.update(dev=_j(dev1[idx[0]]), test=step["best_single_test"], n_evaluations=1, weights=[1.0])
        else:
            sub = [s.experts[i] for i in idx]
            sw = _search(s, sub, seed, config, out, f"search-k{k}", progress)
            t = _utilities(s, sub, sw.weights[None, :], s.test_split)
            step.update(dev=_j(sw.utility), test=None if t is None else _j(t[0]),
                        n_evaluations=int(sw.n_evaluations), weights=[_j(w) for w in sw.weights])
        steps.append(step)
    split_name = s.test_split or "test"
    rows = [[str(st["k"]), st["added"], _u(st["dev"]), _u(st["test"]), str(st["n_evaluations"]),
             f"{st['best_single']} {_u(st['best_single_test'] if s.test_split else st['best_single_dev'])}"]
            for st in steps]
    header = (f"n-experts: task {s.task.name}, experts added {order} ({', '.join(s.names[i] for i in seq)}), "
              f"mode {mode}, seed {seed}")
    table = _format(header, ["k", "added", "dev", split_name, "evals", "best single so far"], rows)
    data = {"analysis": "n-experts", "task": s.task.name, "mode": mode, "seed": seed, "order": order,
            "split": split_name if s.test_split else "dev", "experts": [s.names[i] for i in seq], "steps": steps}
    a = Analysis("n-experts", table, data)
    if out is not None:
        a.write(out, lambda ax: _plot_n_experts(ax, data))
    return a


def _plot_n_experts(ax: Any, d: Mapping[str, Any]) -> None:
    ks = [st["k"] for st in d["steps"]]
    key = "test" if d["split"] != "dev" else "dev"

    def series(name):
        return [np.nan if st[name] is None else float(st[name]) for st in d["steps"]]

    ax.plot(ks, series(key), "o-", label=f"swarm over the first k ({key})")
    ax.plot(ks, series(f"best_single_{key}"), "s--", color="tab:gray", label=f"best single among them ({key})")
    if key == "test":
        ax.plot(ks, series("dev"), ".:", color="tab:blue", alpha=0.6, label="swarm (dev)")
    ax.set_xticks(ks)
    ax.set_xlabel("number of experts k")
    ax.set_ylabel("utility")
    ax.set_title(f"utility as experts are added on {d['task']}")
    ax.legend()


# --------------------------------------------------------------------------------------------
# Plots (matplotlib is optional: imported when a plot is drawn)


def _save_plot(draw: Callable[[Any], None], path: Path) -> None:
    """Draw one figure and save it atomically."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; never needs a display
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotsUnavailable("plots need matplotlib: pip install 'logit_swarm[plots]'") from None
    fig, ax = plt.subplots(figsize=(7, 4))
    try:
        draw(ax)
        fig.tight_layout()
        save_figure(fig, path)
    finally:
        plt.close(fig)


#: The analyses by command-line name.
ANALYSES: Registry[Callable[..., Analysis]] = Registry("analysis")
ANALYSES.add("weak-to-strong", weak_to_strong)
ANALYSES.add("c-emerge", c_emerge)
ANALYSES.add("n-experts", n_experts)
