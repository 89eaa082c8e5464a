"""The paper's analyses on the tiny zoo: weak-to-strong, C-emerge and the number of experts.

    python experiments/paper_analyses.py [--task zoo-facts-mc] [--seeds 0 1 2] [--out experiments/results/analyses]

Runs ``logit_swarm.search.analyze`` with the default search settings for every seed, writes each
analysis's table, JSON and PNG under ``OUT/<task>/seed<k>/`` and a summary ``OUT/<task>/summary.md``
(one line per seed and analysis). Needs the built tiny zoo (``logit-swarm zoo build``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from logit_swarm.recipe import atomic_write_text
from logit_swarm.search.analyze import c_emerge, n_experts, weak_to_strong
from logit_swarm.search.plots import matplotlib_available
from logit_swarm.tasks import load_task
from logit_swarm.zoo import zoo_experts

RESULTS = Path(__file__).parent / "results" / "analyses"


def summary_lines(seed: int, w: dict, e: dict, s: dict) -> list[str]:
    """Markdown rows of one seed's three analyses (their JSON data)."""
    steps = " / ".join(f"{st['test']:.3f}" for st in s["steps"])
    return [f"| {seed} | weak-to-strong | weak half {', '.join(w['weak'])}; result test {w['result']['test']:.3f}: "
            f"vs the starting expert best on dev, {w['best_start']}, {w['margin_best_start']:+.3f}; vs the best "
            f"starting expert on test, {w['top_start']}, {w['margin_top_start']:+.3f}; vs the best expert overall, "
            f"{w['best_overall']}, {w['margin_best_overall']:+.3f} |",
            f"| {seed} | c-emerge | {e['emergent']} of {e['questions']} test questions solved by the result and no "
            f"expert (C-emerge {e['c_emerge']:.3f}); result {e['solved_by_result']}, any expert "
            f"{e['solved_by_any_expert']}, lost {e['lost']} |",
            f"| {seed} | n-experts | test utility for k = 1..{len(s['steps'])} ({', '.join(s['experts'])}): {steps} |"]


def drop_search_state(out: Path) -> None:
    """Keep each search's recipe, drop its history/checkpoint (kilobytes per iteration)."""
    for name in ("history.jsonl", "checkpoint.json", "result.json"):
        for f in out.rglob(name):
            f.unlink()


def summary(out: Path, task: str, names: list[str], seconds: dict[int, float]) -> str:
    """The summary of every seed found under ``out`` (earlier runs included)."""
    lines = [f"# Paper analyses on the tiny zoo: {task}", "",
             f"Default search settings; {len(names)} experts ({', '.join(names)}); {platform.machine()} CPU, "
             f"{os.cpu_count()} cores shared with other jobs. Written by `python experiments/paper_analyses.py`.", "",
             "| seed | analysis | result |", "|---|---|---|"]
    for d in sorted(out.glob("seed*"), key=lambda p: int(p.name[4:])):
        seed = int(d.name[4:])
        data = [json.loads((d / a / f"{a}.json").read_text()) for a in ("weak-to-strong", "c-emerge", "n-experts")]
        lines += summary_lines(seed, *data)
        if seed in seconds:
            lines.append(f"| {seed} | time | {seconds[seed]:.0f} s for the three |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="zoo-facts-mc")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if not matplotlib_available():
        print("matplotlib is missing: tables only (pip install 'logit_swarm[plots]')")
    experts = [str(p) for p in zoo_experts(build=False).values()]
    import logit_swarm as ls

    pool = [ls.load_expert(p) for p in experts]
    task = load_task(args.task)
    seconds = {}
    for seed in args.seeds:
        out = args.out / args.task / f"seed{seed}"
        t0 = time.perf_counter()
        w2s = weak_to_strong(pool, task, seed=seed, out_dir=out / "weak-to-strong", progress=False)
        emerge = c_emerge(pool, task, seed=seed, out_dir=out / "c-emerge", progress=False)
        scale = n_experts(pool, task, seed=seed, out_dir=out / "n-experts", progress=False)
        for a in (w2s, emerge, scale):
            print(a.table, "\n", flush=True)
        drop_search_state(out)
        seconds[seed] = time.perf_counter() - t0
    text = summary(args.out / args.task, args.task, [e.name for e in pool], seconds)
    atomic_write_text(args.out / args.task / "summary.md", text)
    print(text)


if __name__ == "__main__":
    main()
