"""``logit-swarm search``: search mixing weights for a pool of experts on a task, write a recipe.

::

    logit-swarm search --experts zoo --task zoo-facts-mc --out facts.json
    logit-swarm search --experts m1/ m2/ m3/ --task my_task.yaml --out best.json \\
        --seed 1 --config swarm.yaml --set max_iter=20 --run-dir runs/best
    logit-swarm search ... --resume          # continue an interrupted search (same result)

The run directory (default: the recipe's path without ``.json`` plus ``.run``) holds the
append-only ``history.jsonl``, the atomic ``checkpoint.json`` and ``result.json``. The helpers
here (expert/task/config arguments) are shared with ``compare`` and ``demo``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..windows import add_truncation_argument, truncation_run

RUN_FILES = ("checkpoint.json", "history.jsonl", "result.json")


# --------------------------------------------------------------------------------------------
# Shared arguments
# --------------------------------------------------------------------------------------------


def add_pool_arguments(p: argparse.ArgumentParser) -> None:
    """--experts, --task, --data, --device, --mode, --seed, --config, --set."""
    p.add_argument("--experts", nargs="+", required=True, metavar="DIR",
                   help="expert model directories (Hugging Face format), at least 2; 'zoo' = every "
                   "expert of the built tiny zoo, 'zoo:facts_a,facts_b' = some of them")
    p.add_argument("--task", required=True, metavar="SPEC",
                   help="task spec file (.yaml/.json) or registered name (logit-swarm eval --list)")
    p.add_argument("--data", metavar="DIR", help="data directory for named tasks that need files "
                   "(default: $LOGIT_SWARM_DATA)")
    p.add_argument("--mode", default="probs", choices=("probs", "logits"),
                   help="mixing mode: probs (linear mixture, default) or logits (product of experts)")
    p.add_argument("--seed", type=int, default=0, help="seed of the swarm (default 0)")
    p.add_argument("--config", metavar="FILE", help="search settings, YAML or JSON (swarm_size, max_iter, "
                   "inertia, ...; optional grid/grid_samples/seeds)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one search setting (value read as YAML), e.g. --set max_iter=20")
    p.add_argument("--device", default="cpu", help="device for the experts (default: cpu)")
    add_truncation_argument(p)
    p.add_argument("--no-memo", action="store_true", help="do not remember the experts' distributions "
                   "across iterations (on by default for tasks that generate text; results are the same)")


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``["a=1", "b=[x, y]"]`` -> ``{"a": 1, "b": ["x", "y"]}`` (values parsed as YAML)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            raise ValueError(f"--set {key.strip()}: cannot read value {value!r}") from None
    return out


def expert_dirs(items: list[str]) -> list[Path | str]:
    """Experts from --experts: directories (checked to exist, before any model is loaded),
    ``zoo``/``zoo:a,b``, or remote endpoint URLs (``http://host:port/v1[#model]``, kept as text)."""
    dirs: list[Path | str] = []
    for item in items:
        if item.startswith(("http://", "https://")):
            dirs.append(item)
            continue
        p = Path(item).expanduser()
        if (item == "zoo" or item.startswith("zoo:")) and not p.exists():
            from logit_swarm.zoo import zoo_experts

            paths = zoo_experts(build=False)
            if item == "zoo":
                dirs.extend(Path(v) for v in paths.values())
                continue
            for name in filter(None, item[4:].split(",")):
                if name not in paths:
                    raise ValueError(f"the zoo has no expert {name!r}; it has {', '.join(paths)}")
                dirs.append(Path(paths[name]))
            continue
        if not p.is_dir():
            raise FileNotFoundError(f"expert directory {item!r} does not exist; pass model directories "
                                    "(e.g. built by `logit-swarm zoo build`), 'zoo', or endpoint URLs")
        dirs.append(p)
    if len(dirs) < 2:
        raise ValueError(f"--experts needs at least 2 experts, got {len(dirs)}")
    return dirs


def load_pool(args: argparse.Namespace) -> tuple[Any, str | None, list]:
    """(task, the reference that reloads it, experts) from the shared arguments; the task is
    read first, since a typo there fails faster than loading models."""
    from .api import resolve_experts, resolve_task

    dirs = expert_dirs(args.experts)
    task, ref = resolve_task(args.task, args.data)
    print(f"loading {len(dirs)} experts ...", file=sys.stderr)
    experts = resolve_experts(dirs, device=args.device)  # directories and endpoint URLs alike
    return task, ref, experts


def plan_from_args(args: argparse.Namespace):
    """The search plan from --config and --set (None when resuming with neither)."""
    from .api import load_search_config

    sets = parse_sets(args.set)
    if getattr(args, "resume", False) and args.config is None and not sets:
        return None
    return load_search_config(args.config, sets)


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse to overwrite a previous search unless resuming (one actionable line)."""
    if not resume and any((run_dir / f).exists() for f in RUN_FILES):
        raise ValueError(f"run directory {str(run_dir)!r} already holds a search; add --resume to continue "
                         "it, or pass another --run-dir")


def write_plots(history: Any, out_dir: Path, names: list[str], mode: str, title: str) -> list[Path]:
    """Plots of a search, or a one-line note on stderr when matplotlib is missing."""
    from .plots import PlotsUnavailable, plot_history

    try:
        paths = plot_history(history, out_dir, names, mode=mode, title=title)
    except PlotsUnavailable as exc:
        print(f"plots skipped: {exc}", file=sys.stderr)
        return []
    for p in paths:
        print(f"wrote {p}", file=sys.stderr)
    return paths


# --------------------------------------------------------------------------------------------
# search
# --------------------------------------------------------------------------------------------


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``search`` sub-command."""
    p = subparsers.add_parser(
        "search", help="search mixing weights with a particle swarm and write a recipe",
        description="Run Model Swarms PSO over the experts' mixing weights, maximising the task's "
        "utility on its dev split, and write the best mixture as a recipe JSON. Progress goes to "
        "stderr; the run directory keeps a history and a checkpoint so --resume can finish an "
        "interrupted search with exactly the same result.",
    )
    add_pool_arguments(p)
    p.add_argument("--out", required=True, metavar="RECIPE", help="recipe JSON to write")
    p.add_argument("--run-dir", metavar="DIR", help="history/checkpoint directory (default: RECIPE "
                   "without .json, plus .run)")
    p.add_argument("--resume", action="store_true", help="continue the search saved in the run directory")
    p.add_argument("--plots", action="store_true", help="also write utility.png and weights.png "
                   "into the run directory (needs matplotlib)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def default_run_dir(out: Path) -> Path:
    """``best.json`` -> ``best.run``."""
    return out.with_name((out.stem if out.suffix.lower() == ".json" else out.name) + ".run")


def run(args: argparse.Namespace) -> int:
    """Run ``search``; returns the exit code."""
    from .api import _search, count_examples

    out = Path(args.out).expanduser()
    run_dir = Path(args.run_dir).expanduser() if args.run_dir else default_run_dir(out)
    plan = plan_from_args(args)
    check_run_dir(run_dir, args.resume)
    from logit_swarm.mixing import check_mode

    check_mode(args.mode)
    task, ref, experts = load_pool(args)
    if plan is not None and plan.config.swarm_size < len(experts):
        raise ValueError(f"swarm_size {plan.config.swarm_size} < {len(experts)} experts; every expert must "
                         f"start as a particle: --set swarm_size={max(len(experts), 2)}")
    n_dev = count_examples(task, "dev")
    print(f"searching on task {task.name!r} (dev" + (f", {n_dev} examples" if n_dev else "")
          + f"), run directory {run_dir}", file=sys.stderr)
    with truncation_run(args.truncation):  # one truncation report for the whole search
        res = _search(experts, task, ref, args.seed, plan, args.mode, run_dir, args.resume,
                      progress=not args.quiet, split="dev", memo=False if args.no_memo else None)
    res.ensemble.save(out)
    if args.plots:
        write_plots(res.history, run_dir, [e.name for e in experts], args.mode, task.name)
    print(f"dev utility {res.utility:.6g} after {res.n_evaluations} evaluations "
          f"({len(res.history)} iterations, initial swarm included)")
    if res.memo is not None and res.memo["hits"] + res.memo["misses"]:
        print(f"memo: {res.memo['hit_rate']:.1%} of expert rows answered without a forward pass")
    for e, w in zip(experts, res.ensemble.weights):
        print(f"  {e.name:24s} {w: .4f}")
    print(f"recipe: {out}")
    return 0
