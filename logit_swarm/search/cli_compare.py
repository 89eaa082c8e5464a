"""``logit-swarm compare``: the swarm search against every baseline, a table of dev and test.

::

    logit-swarm compare --experts zoo --task zoo-facts-mc --out-dir runs/facts
    logit-swarm compare --experts m1/ m2/ --task t.yaml --budget 400 --methods best_single,uniform,cma_es

Everything that decides (search, baselines, PackLLM's τ, vote tie-breaks) sees only dev; the
test split is evaluated once at the end for the report (``--no-test`` skips it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..windows import truncation_run
from .cli import add_pool_arguments, check_run_dir, load_pool, plan_from_args, write_plots


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``compare`` sub-command."""
    from .compare import default_methods

    p = subparsers.add_parser(
        "compare", help="run the search and every other method at equal budget; print dev and test utility",
        description="Run the swarm search and the other methods (" + ", ".join(default_methods()[1:]) + ") on "
        "the task's dev split, every budgeted one with as many utility evaluations as the swarm used, then "
        "evaluate every result once on the test split and print a table with evaluations per method.",
    )
    add_pool_arguments(p)
    p.add_argument("--budget", type=int, help="dev evaluations for the budgeted methods (random, DE, "
                   "Nelder-Mead, CMA-ES, NGOpt; default: as many as the swarm used)")
    p.add_argument("--methods", "--baselines", dest="methods", metavar="A,B,...",
                   help="comma-separated subset of methods to run (the swarm always runs)")
    p.add_argument("--out-dir", metavar="DIR", help="write compare.json, table.txt, per_question.jsonl, the "
                   "recipe, every method's history and the plots here")
    p.add_argument("--resume", action="store_true", help="continue the search saved in --out-dir")
    p.add_argument("--no-test", action="store_true", help="report dev only")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``compare``; returns the exit code."""
    from logit_swarm.recipe import atomic_write_text

    from .compare import compare

    methods = None
    if args.methods is not None:
        methods = [b.strip() for b in args.methods.split(",") if b.strip()]
    out_dir = Path(args.out_dir).expanduser() if args.out_dir else None
    if args.resume and out_dir is None:
        raise ValueError("--resume needs --out-dir (where the interrupted search was saved)")
    plan = plan_from_args(args)
    if out_dir is not None:
        check_run_dir(out_dir / "search", args.resume)
    task, ref, experts = load_pool(args)
    with truncation_run(args.truncation):  # one truncation report for every method compared
        res = compare(experts, ref if ref is not None else task, seed=args.seed, config=plan, mode=args.mode,
                      budget=args.budget, methods=methods, out_dir=out_dir, resume=args.resume,
                      progress=not args.quiet, data_dir=args.data, test_split=None if args.no_test else "test",
                      memo=False if args.no_memo else None)
    table = res.format_table()
    print(table)
    if out_dir is not None:
        atomic_write_text(out_dir / "table.txt", table + "\n")
        res.swarm.ensemble.save(out_dir / "recipe.json")
        write_plots(res.swarm.history, out_dir, res.experts, args.mode, res.task_name)
        print(f"wrote {out_dir / 'table.txt'}, {out_dir / 'compare.json'}, {out_dir / 'recipe.json'}",
              file=sys.stderr)
    return 0
