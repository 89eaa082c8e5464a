"""Search benchmark: what a whole swarm search costs in expert work, against the issue's targets.

1. Likelihood utility (multiple choice by log-likelihood): a whole search of 20 particles and 50
   iterations (patience disabled so all 50 run) vs ONE scoring pass of the experts over the dev set
   (building the per-expert table). Target: at most 1.3x.
2. Generated-text utility (exact match by greedy generation): the experts' forward work over a
   whole search (rows run by the experts, with the cross-iteration memo and the shared batches)
   vs the naive count (every evaluated particle decoding the dev set on its own: particles x
   iterations x generated tokens x experts, measured by running exactly that), and the wall time
   of the search's evaluations vs a straightforward per-particle loop over the same particles
   with the same ensemble code. Targets: at most 20% of the naive work, at least 10x faster. The
   utilities of both ways must be identical.

    python experiments/bench_search.py [--iters-lik 50] [--iters-gen 50] [--loop-evals N]

Uses the tiny zoo (built on first use). Writes experiments/results/bench_search_<device>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import logit_swarm as ls  # noqa: E402
from logit_swarm.search.driver import run_method  # noqa: E402
from logit_swarm.search.memo import memoize  # noqa: E402
from logit_swarm.search.methods.pso import SwarmConfig  # noqa: E402


def forward_rows(experts) -> int:
    return sum(e.forward_rows for e in experts)


def reset(experts) -> None:
    for e in experts:
        e.forward_calls = e.forward_rows = 0


def loaded(zoo, names):
    """Experts loaded and warmed up (first forward passes pay one-off costs), counters at zero."""
    experts = [ls.load_expert(zoo[n], name=n) for n in names]
    for e in experts:
        ls.Ensemble([e]).generate(["warm up"], max_new_tokens=2)
    reset(experts)
    return experts


class Recorder:
    """A utility that records every weight matrix it is asked about (and its wall time)."""

    def __init__(self, task, experts, split="dev"):
        self.task, self.experts, self.split = task, experts, split
        self.calls: list[tuple[np.ndarray, np.ndarray, float]] = []

    def __call__(self, W):
        t0 = time.perf_counter()
        u = self.task.evaluate(self.experts, W, split=self.split)
        self.calls.append((np.array(W), np.asarray(u, dtype=float), time.perf_counter() - t0))
        return np.asarray(u, dtype=float)


def likelihood_part(zoo, names, task_name, iters, repeats=3):
    """Best of ``repeats`` for both sides (fresh task and experts each time, so every search
    builds its table itself): a scoring pass of the tiny token pool takes ~0.1 s, where a
    neighbour's noise would otherwise decide the ratio."""
    t_pass = t_search = float("inf")
    for _ in range(repeats):
        task = ls.load_task(task_name)
        experts = loaded(zoo, names)
        # One scoring pass: what the experts say about every (question, choice) of dev, once.
        t0 = time.perf_counter()
        task.evaluate(experts, np.eye(len(experts))[:1], split="dev")
        t_pass = min(t_pass, time.perf_counter() - t0)
        rows_pass = forward_rows(experts)
        # A whole search on fresh experts and a fresh task (so the table is built inside it).
        task = ls.load_task(task_name)
        experts = loaded(zoo, names)
        rec = Recorder(task, experts)
        cfg = SwarmConfig(swarm_size=20, max_iter=iters, patience=iters + 1)
        t0 = time.perf_counter()
        res = run_method("swarm", rec, len(experts), options={"config": cfg}, batch=20, progress=False, seed=0)
        t_search = min(t_search, time.perf_counter() - t0)
    n_evals = sum(len(w) for w, _, _ in rec.calls)
    r = {"task": task_name, "experts": names, "unit": ls.choose_unit(experts), "iterations": len(res.history) - 1,
         "evaluations": n_evals, "scoring_pass_s": t_pass, "scoring_pass_rows": rows_pass,
         "search_s": t_search, "search_rows": forward_rows(experts), "ratio": t_search / t_pass,
         "best_dev": float(res.utility), "timing": f"best of {repeats}"}
    print(f"  likelihood: one scoring pass {t_pass:.2f}s ({rows_pass} rows); search of {n_evals} evaluations "
          f"{t_search:.2f}s ({r['search_rows']} rows); ratio {r['ratio']:.3f} (target <= 1.3)", flush=True)
    return r


def generation_part(zoo, names, task_name, iters, loop_evals, repeats=2):
    """Best of ``repeats`` for both sides (each search with fresh experts and an empty memo)."""
    t_search = t_loop_k = float("inf")
    for _ in range(repeats):
        task = ls.load_task(task_name)
        experts = loaded(zoo, names)
        rec = Recorder(task, memoize(experts))
        # A whole search as a user runs it: default settings (patience 10), at most ``iters`` iterations.
        cfg = SwarmConfig(swarm_size=20, max_iter=iters)
        res = run_method("swarm", rec, len(experts), options={"config": cfg}, batch=20, progress=False, seed=0)
        t_search = min(t_search, sum(t for _, _, t in rec.calls))
        rows_search = forward_rows(experts)
        W_all = np.concatenate([w for w, _, _ in rec.calls])
        u_all = np.concatenate([u for _, u, _ in rec.calls])
        # The straightforward way: each particle alone, fresh experts (no memo), same ensemble code.
        task2 = ls.load_task(task_name)
        plain = loaded(zoo, names)
        k = min(loop_evals or len(W_all), len(W_all))
        t0 = time.perf_counter()
        u_loop = np.array([task2.evaluate(plain, W_all[i:i + 1], split="dev")[0] for i in range(k)])
        t_loop_k = min(t_loop_k, time.perf_counter() - t0)
        rows_loop_k = forward_rows(plain)
    same = bool(np.array_equal(np.nan_to_num(u_loop, nan=-9), np.nan_to_num(u_all[:k], nan=-9)))
    scale = len(W_all) / k  # the loop's cost per particle does not depend on the order
    r = {"task": task_name, "experts": names, "unit": ls.choose_unit(experts), "iterations": len(res.history) - 1,
         "evaluations": int(len(W_all)), "search_eval_s": t_search, "search_rows": rows_search,
         "loop_particles_run": k, "loop_s_measured": t_loop_k, "loop_rows_measured": rows_loop_k,
         "loop_s": t_loop_k * scale, "naive_rows": rows_loop_k * scale,
         "work_fraction": rows_search / (rows_loop_k * scale), "speedup": t_loop_k * scale / t_search,
         "same_utilities": same, "best_dev": float(res.utility)}
    print(f"  generation: search {len(W_all)} evaluations {t_search:.2f}s, {rows_search} expert rows; "
          f"per-particle loop ({k} run{'' if k == len(W_all) else ', scaled'}) {r['loop_s']:.1f}s, "
          f"{r['naive_rows']:.0f} rows -> work {100 * r['work_fraction']:.1f}% (target <= 20%), "
          f"speed-up {r['speedup']:.1f}x (target >= 10x), same utilities: {same}", flush=True)
    return r


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters-lik", type=int, default=50)
    ap.add_argument("--iters-gen", type=int, default=50)
    ap.add_argument("--loop-evals", type=int, default=0,
                    help="run the per-particle loop on this many particles only and scale (0 = all)")
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results"))
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    from logit_swarm.zoo import zoo_experts

    zoo = zoo_experts()
    print(f"torch threads {torch.get_num_threads()}", flush=True)
    lik = [likelihood_part(zoo, ["facts_a", "facts_b", "chat"], "zoo-facts-mc", args.iters_lik),
           likelihood_part(zoo, sorted(zoo), "zoo-facts-mc", args.iters_lik)]
    gen = [generation_part(zoo, ["facts_a", "facts_b", "chat"], "zoo-facts", args.iters_gen, args.loop_evals)]
    result = {"device": "cpu", "cpu_threads": torch.get_num_threads(), "platform": platform.platform(),
              "torch": torch.__version__, "likelihood": lik, "generation": gen,
              "targets": {"likelihood_ratio": 1.3, "generation_work_fraction": 0.2, "generation_speedup": 10}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_search_cpu.json").write_text(json.dumps(result, indent=2) + "\n")
    md = ["# Search benchmark (cpu, %d threads)" % result["cpu_threads"], "",
          "Likelihood utility: whole search (20 particles) vs one scoring pass over dev (target ≤ 1.3×).", "",
          "| task | experts | unit | iterations | evaluations | scoring pass s | search s | ratio | best dev |",
          "|---|---|---|---|---|---|---|---|---|"]
    for r in lik:
        md.append(f"| {r['task']} | {len(r['experts'])} | {r['unit']} | {r['iterations']} | {r['evaluations']} | "
                  f"{r['scoring_pass_s']:.2f} | {r['search_s']:.2f} | {r['ratio']:.3f} | {r['best_dev']:.3f} |")
    md += ["", "Generated-text utility: expert rows over the whole search vs every particle decoding alone "
           "(target ≤ 20%), wall time vs a per-particle loop (target ≥ 10×).", "",
           "| task | experts | unit | iterations | evaluations | search rows | naive rows | work | search s | loop s | speed-up | same utilities |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in gen:
        md.append(f"| {r['task']} | {len(r['experts'])} | {r['unit']} | {r['iterations']} | {r['evaluations']} | "
                  f"{r['search_rows']} | {r['naive_rows']:.0f} | {100 * r['work_fraction']:.1f}% | "
                  f"{r['search_eval_s']:.1f} | {r['loop_s']:.1f} | {r['speedup']:.1f}× | {r['same_utilities']} |")
    md += ["", "Command: `python experiments/bench_search.py " + " ".join(argv or sys.argv[1:]) + "`"]
    (out / "bench_search_cpu.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
