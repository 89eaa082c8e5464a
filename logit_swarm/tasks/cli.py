"""``logit-swarm eval``: the utility of a saved recipe on a task (and its parts).

::

    logit-swarm eval --recipe best.json --task mmlu --data ../shared/data            # dev
    logit-swarm eval --recipe best.json --task mmlu --split test --allow-test        # held out
    logit-swarm eval --recipe best.json --task my_task.yaml --set limit=20 --json
    logit-swarm eval --list --data ../shared/data                                    # task names
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import yaml

from ..windows import add_truncation_argument, truncation_run


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``eval`` sub-command to the top-level parser."""
    p = subparsers.add_parser(
        "eval", help="evaluate a recipe on a task (utility and its parts)",
        description="Evaluate a saved recipe (an ensemble) on a task given by a spec file or a "
        "registered name, and print the utility and its parts. Decoding settings come from the "
        "task (they are part of its utility), not from the recipe. Test splits need --allow-test.",
    )
    p.add_argument("--recipe", help="recipe JSON written by a search or Ensemble.save")
    p.add_argument("--task", help="task spec (.yaml/.json) or registered name; default: the task "
                   "named in the recipe's provenance")
    p.add_argument("--split", default="dev", help="split to evaluate (default: dev)")
    p.add_argument("--data", metavar="DIR", help="data directory for named paper tasks "
                   "(default: $LOGIT_SWARM_DATA)")
    p.add_argument("--allow-test", action="store_true",
                   help="allow evaluating a test split (final held-out numbers only)")
    p.add_argument("--limit", type=int, help="use only the first N examples of the split")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a task spec option (value read as YAML), e.g. --set max_new_tokens=4")
    p.add_argument("--device", default="cpu", help="device for the experts (default: cpu)")
    add_truncation_argument(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--list", action="store_true", help="list task names (available ones with --data)")
    p.set_defaults(func=run)
    return p


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["a=1", "b=[x, y]"]`` -> ``{"a": 1, "b": ["x", "y"]}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return out


def _list(args: argparse.Namespace) -> int:
    from . import TASKS, list_tasks

    names = list_tasks(args.data, available=args.data is not None)
    for n in names:
        print(f"{n:40s} {TASKS.get(n).description}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``eval``; returns the exit code (errors propagate as ValueError/FileNotFoundError)."""
    if args.list:
        return _list(args)
    from .base import check_split
    from .spec import load_task

    if not args.recipe:
        raise ValueError("--recipe is required (a recipe JSON written by a search or Ensemble.save)")
    # Refuse a test split before any model is loaded.
    check_split(args.split, args.allow_test)
    overrides = parse_overrides(args.set)
    if args.limit is not None:
        overrides["limit"] = args.limit

    import logit_swarm as ls

    print(f"loading recipe {args.recipe} ...", file=sys.stderr)
    ens = ls.Ensemble.load(args.recipe, device=args.device)
    task_ref = args.task or (getattr(ens, "provenance", {}) or {}).get("task")
    if not task_ref:
        raise ValueError("--task is required: the recipe does not name the task it was searched on")
    task = load_task(task_ref, data_dir=args.data, **overrides)
    print(f"evaluating on task {task.name!r}, split {args.split!r} ...", file=sys.stderr)
    with truncation_run(args.truncation):
        result = task.evaluate_detailed(ens, split=args.split, allow_test=args.allow_test)
    row = result.row(0)
    if args.json:
        print(json.dumps({"task": task.name, "split": args.split, "n": result.n, **row}))
        return 0
    print(f"task {task.name}  split {args.split}  examples {result.n}")
    print(f"utility  {row.pop('utility'):.6g}")
    for key, value in row.items():
        print(f"  {key:28s} {value:.6g}")
    return 0
