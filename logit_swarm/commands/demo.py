"""``logit-swarm demo``: the main job, end to end on the embedded default.

1. builds the tiny zoo if it is not cached yet (``logit_swarm.zoo.zoo_experts``; minutes);
2. runs the swarm search and every baseline on ``zoo-facts-mc`` with all zoo experts: four-way
   questions about an invented world, where ``facts_a`` knows half A of the facts and
   ``facts_b`` the disjoint half B, so no single expert can answer everything; the other experts
   (chat, math, reason, code) know nothing of it and are distractors the search must turn down;
3. evaluates everything once on the test split and prints the table;
4. writes ``recipe.json`` (serve it with ``logit-swarm generate --recipe``), ``table.txt``,
   ``compare.json``, the search's history and ``utility.png`` / ``weights.png`` into ``--out``.

Why multiple choice scored by log-likelihood: the experts score each split's (question, option)
pairs once into a table; every particle of every iteration after that is arithmetic on the
table, so a full search (20 particles, up to 50 iterations) costs little more than one scoring
pass, and the whole demo fits in a few minutes on 2 CPU cores once the zoo exists.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_TASK = "zoo-facts-mc"
DEFAULT_OUT = "demo_out"
#: Settings of ``--quick`` (a smoke run: smaller swarm, fewer iterations).
QUICK = {"swarm_size": 10, "max_iter": 8, "patience": 5}


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``demo`` sub-command."""
    p = subparsers.add_parser(
        "demo", help="build the zoo, search, compare with every baseline, print the test table",
        description="The main job on the embedded default: build the tiny zoo if needed, search the "
        f"mixing weights of all zoo experts on {DEFAULT_TASK} (two experts know disjoint halves of "
        "the facts), run every baseline, and print dev and test utility. Writes the recipe, the "
        "table and plots into --out.",
    )
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"output directory (default: ./{DEFAULT_OUT})")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: swarm of 10, at most 8 iterations (the table is still measured)")
    p.add_argument("--seed", type=int, default=0, help="seed of the search (default 0)")
    p.add_argument("--task", default=DEFAULT_TASK, help=f"zoo task to run (default {DEFAULT_TASK})")
    p.add_argument("--zoo", metavar="DIR", help="use the zoo in DIR (default: the cached tiny zoo)")
    p.add_argument("--device", default="cpu", help="device (default: cpu)")
    p.add_argument("--fresh", action="store_true", help="delete a previous demo run in --out first")
    p.set_defaults(func=run)
    return p


def _say(step: str) -> None:
    print(f"[demo] {step}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Run the demo; returns the exit code."""
    from logit_swarm.ensemble import load_expert
    from logit_swarm.recipe import atomic_write_text
    from logit_swarm.search.api import count_examples, resolve_task
    from logit_swarm.search.cli import check_run_dir, write_plots
    from logit_swarm.search.compare import compare
    from logit_swarm.zoo import zoo_cards, zoo_experts

    t_start = time.perf_counter()
    out = Path(args.out).expanduser()
    task, task_ref = resolve_task(args.task)  # an unknown task fails before the zoo is built
    run_dir = out / "search"
    if args.fresh and run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    # A previous demo in --out is continued (resume), never silently overwritten: a finished
    # search is returned as it was, so re-running the demo reprints the same table.
    resume = run_dir.exists()
    if resume:
        _say(f"continuing the search saved in {run_dir} (pass --fresh to start over)")
    check_run_dir(run_dir, resume)

    _say("step 1/4: the zoo of tiny experts (built on first use, a few minutes on 2 CPU cores)")
    t0 = time.perf_counter()
    if args.zoo:  # whatever complete zoo is there (any size), as its marker lists it
        paths = {name: Path(card["path"]) for name, card in zoo_cards(args.zoo).items()}
    else:
        paths = zoo_experts(device=args.device)
    _say(f"zoo ready in {time.perf_counter() - t0:.0f}s: {', '.join(paths)}")
    experts = [load_expert(p, device=args.device) for p in paths.values()]

    cfg = dict(QUICK) if args.quick else None
    _say(f"step 2/4: swarm search + baselines on {task.name} (dev {count_examples(task, 'dev')} questions)")
    try:
        res = compare(experts, task_ref or task, seed=args.seed, config=cfg, out_dir=out, resume=resume, progress=True,
                      device=args.device)
    except ValueError as exc:
        if resume and "checkpoint" in str(exc):
            raise ValueError(f"{run_dir} holds a demo search with other settings (--quick or --seed "
                             "differ); pass --fresh to start over") from None
        raise

    _say("step 3/4: writing the recipe, the table and the plots")
    recipe = res.swarm.ensemble.save(out / "recipe.json")
    table = res.format_table()
    atomic_write_text(out / "table.txt", table + "\n")
    write_plots(res.swarm.history, out, res.experts, res.swarm.ensemble.mode, res.task_name)

    _say("step 4/4: results")
    wall = time.perf_counter() - t_start
    print(table)
    swarm, best, uni = res.row("swarm"), res.rows[1] if len(res.rows) > 1 else None, None
    for r in res.rows:
        if r.name == "uniform":
            uni = r
        if r.name == "best_single":
            best = r
    if swarm.test is not None and best is not None and uni is not None:
        print(f"\nswarm test {swarm.test:.3f} vs best single {best.test:.3f} and uniform {uni.test:.3f} "
              f"(test split, measured in this run)")
    print(f"\nrecipe: {recipe}   (demo wall time {wall:.0f}s)")
    if "test" in task.splits:
        _try_it(res.swarm.ensemble, task.examples("test")[:8], recipe)
    return 0


def _try_it(ensemble, examples, recipe) -> None:
    """Print a ready-to-run `generate` command on a test question, with what the recipe itself
    answers there (greedy), preferring a question it answers right. The task scores choices by
    likelihood, so free generation can differ from the scored answer; say which is which."""
    if not examples:
        return
    prompts = [ex["prompt"] for ex in examples]
    outs = ensemble.generate(prompts, max_new_tokens=16, temperature=0.0, stop=["\n"])
    golds = [ex["choices"][ex["answer"]] if "choices" in ex else str(ex.get("answer", "")) for ex in examples]
    k = next((i for i, (o, g) in enumerate(zip(outs, golds)) if o.strip().startswith(g.strip())), 0)
    shown = prompts[k].replace("\n", "\\n")
    print(f'try it: logit-swarm generate --recipe {recipe} --prompt "{shown}" --max-new-tokens 16')
    print(f"        the recipe answers {outs[k].strip()!r}; the test answer is {golds[k].strip()!r}")
