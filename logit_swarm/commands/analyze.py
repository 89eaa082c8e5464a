"""``logit-swarm analyze``: the Model Swarms paper's analyses, each a table and a PNG.

::

    logit-swarm analyze weak-to-strong --experts zoo --task zoo-facts-mc --out-dir runs/w2s
    logit-swarm analyze c-emerge --experts zoo --task zoo-facts-mc --out-dir runs/emerge
    logit-swarm analyze c-emerge --per-question runs/compare/per_question.jsonl --out-dir runs/emerge
    logit-swarm analyze n-experts --experts zoo --task zoo-facts-mc --order best-first --out-dir runs/n

Each writes ``<analysis>.txt``, ``<analysis>.json`` and ``<analysis>.png`` into ``--out-dir``
(searches keep their run directories below it) and prints the table. Searches use the same
settings as ``logit-swarm search`` (``--config``, ``--set``, ``--seed``, ``--mode``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from logit_swarm.search.cli import add_pool_arguments, expert_dirs, plan_from_args


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``analyze`` sub-command and its three analyses."""
    p = subparsers.add_parser(
        "analyze", help="the paper's analyses: weak-to-strong, c-emerge, n-experts (table + PNG)",
        description="Run one of the Model Swarms paper's analyses on a pool of experts and a task; "
        "searches run on dev, results are reported on test.")
    sub = p.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)
    w = sub.add_parser("weak-to-strong", help="search from the weakest half of the experts; does the "
                       "result beat the best starting expert?")
    c = sub.add_parser("c-emerge", help="share of test questions solved by the result and by no "
                       "starting expert")
    n = sub.add_parser("n-experts", help="utility as experts are added (a search over the first k)")
    for q in (w, c, n):
        add_pool_arguments(q)
        q.add_argument("--out-dir", required=True, metavar="DIR", help="where the table, JSON, PNG and "
                       "search runs go")
        q.add_argument("--quiet", action="store_true", help="no progress output")
        q.add_argument("--resume", action="store_true", help="continue (or reuse, when finished) the "
                       "searches an interrupted run left in --out-dir")
        q.set_defaults(func=run)
    # With --per-question the pool is not needed: the flags come from a compare run's file.
    for action in c._actions:
        if action.dest in ("experts", "task"):
            action.required = False
    c.add_argument("--per-question", metavar="FILE", help="read per-question results (per_question.jsonl "
                   "of `logit-swarm compare --out-dir`, or that directory) instead of searching")
    c.add_argument("--method", default="swarm", help="with --per-question: the method whose result is "
                   "compared with the experts (default: swarm)")
    n.add_argument("--order", default="given", choices=("given", "best-first", "worst-first"),
                   help="order in which experts are added (by dev utility for best/worst-first)")
    return p


def run(args: argparse.Namespace) -> int:
    """Run one analysis; returns the exit code."""
    from logit_swarm.search.analyze import ANALYSES

    out = Path(args.out_dir).expanduser()
    kwargs: dict[str, Any] = {"out_dir": out, "progress": not args.quiet, "seed": args.seed, "mode": args.mode,
                              "data_dir": args.data, "device": args.device}
    if args.analysis == "c-emerge" and args.per_question:
        kwargs.update(per_question=args.per_question, method=args.method, task=args.task)
    else:
        if not args.experts or not args.task:
            raise ValueError(f"analyze {args.analysis} needs --experts and --task"
                             + (" (or --per-question FILE)" if args.analysis == "c-emerge" else ""))
        kwargs.update(experts=expert_dirs(args.experts), task=args.task, config=plan_from_args(args),
                      resume=args.resume)
        if args.analysis == "n-experts":
            kwargs["order"] = args.order
    result = ANALYSES.get(args.analysis)(**kwargs)
    print(result.table)
    for f in result.files:
        print(f"wrote {f}", file=sys.stderr)
    return 0
