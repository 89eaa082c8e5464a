"""The race: every search method at equal budget on six task families of the zoo, five seeds each.

    python experiments/search_vs_peers.py            # ~20-40 min on 2 shared CPU cores
    python experiments/search_vs_peers.py --quick    # 2 seeds, 3 families (smoke run)

For each family and seed it runs ``logit_swarm.search.compare`` (the swarm first; its evaluation
count is every budgeted method's budget) and collects dev/test utility and evaluations per method.
Writes ``experiments/results/search_vs_peers.{md,json,png}``; each compare's own output (tables,
histories, per-question results) goes to ``experiments/results/search_vs_peers_runs/`` (not
committed; a rerun resumes every finished or interrupted compare from there).

Families (small splits and small swarms so that the whole race fits a shared 2-core machine):

* ``mc``: zoo-facts-mc, multiple choice by log-likelihood, all six zoo experts (byte level);
* ``exact_match``: zoo arithmetic, greedy generation, experts math + reason + chat (byte level);
* ``reward``: the same prompts, a graded reward 1 / (1 + |answer - truth|) read from the response;
* ``judge``: zoo facts questions answered by facts_a + facts_b + chat (token level), rated 1-10
  by the zoo's chat expert (a named judge that is also in the pool: the run warns about it);
* ``abstain``: zoo facts multiple choice answered by generation with the paper's self-check
  (effective reliability), facts_a + facts_b + chat;
* ``multi``: harmonic mean of zoo-facts-mc and zoo-connectivity (multiple choice), all six.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import logit_swarm as ls  # noqa: E402
from logit_swarm.search.compare import compare  # noqa: E402
from logit_swarm.search.methods import method_names  # noqa: E402
from logit_swarm.tasks.zoo import zoo_spec  # noqa: E402
from logit_swarm.zoo import zoo_experts  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SEEDS = (0, 1, 2, 3, 4)
ALL6 = ("facts_a", "facts_b", "chat", "math", "reason", "code")
FACTS3 = ("facts_a", "facts_b", "chat")
ARITH3 = ("math", "reason", "chat")
#: The paper's N = 20 and patience 10 with K = 20 on the likelihood families; a smaller swarm where
#: every evaluation decodes text. Every budgeted method gets the swarm's evaluation count.
SWARM = {"swarm_size": 20, "max_iter": 20, "patience": 10}
SWARM_GEN = {"swarm_size": 8, "max_iter": 8, "patience": 5}
#: Per-question methods that decode once per example and tau (PackLLM) or per expert (vote) are
#: run on the likelihood families only; on generation families they would cost more than the race.
CHEAP_ONLY = ("packllm", "prediction_merge")


def arithmetic_reward(texts):
    """Graded reward of ``prompt + "\\n\\n" + response`` for "a-b=" prompts: 1 / (1 + |error|)."""
    out = []
    for t in texts:
        prompt, _, response = t.partition("\n\n")
        m = re.match(r"\s*(\d+)\s*([-+*])\s*(\d+)\s*=", prompt)
        got = re.match(r"\s*(-?\d+)", response)
        if not m or not got:
            out.append(0.0)
            continue
        a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
        truth = a + b if op == "+" else a - b if op == "-" else a * b
        out.append(1.0 / (1.0 + abs(int(got.group(1)) - truth)))
    return out


def families(zoo: dict[str, str], dev: int, test: int) -> dict[str, tuple[dict, tuple[str, ...], dict]]:
    """name -> (task spec, expert names, swarm settings)."""
    facts_mc = zoo_spec("facts", "multiple_choice", dev, test)
    gdev, gtest = max(dev // 3, 4), max(test // 3, 8)  # generation families: smaller splits
    arith = zoo_spec("arithmetic", "exact_match", gdev, gtest)
    arith.update(max_new_tokens=4)
    facts_em = zoo_spec("facts", "exact_match", gdev, gtest)
    reward = {"kind": "reward", "name": "zoo-arith-reward", "data": arith["data"],
              "scorer": arithmetic_reward, "normalise": "none", "max_new_tokens": 4, "stop": ["\n"]}
    judge = {"kind": "judge", "name": "zoo-facts-judge", "data": facts_em["data"],
             "judge": {"model": zoo["chat"]}, "max_new_tokens": 8, "stop": ["\n"], "judge_max_new_tokens": 8}
    abstain_data = dict(zoo_spec("facts", "multiple_choice", gdev, gtest)["data"])
    abstain = {"kind": "abstain", "name": "zoo-facts-abstain", "data": abstain_data, "max_new_tokens": 4,
               "check_max_new_tokens": 4}
    multi = {"kind": "multi", "name": "zoo-facts+connectivity", "aggregate": "harmonic",
             "tasks": [dict(facts_mc, name="facts-mc"), dict(zoo_spec("connectivity", "multiple_choice", dev, test),
                                                              name="connectivity")]}
    return {
        "mc": (dict(facts_mc, name="zoo-facts-mc"), ALL6, SWARM),
        "exact_match": (dict(arith, name="zoo-arithmetic"), ARITH3, SWARM_GEN),
        "reward": (reward, ARITH3, SWARM_GEN),
        "judge": (judge, FACTS3, SWARM_GEN),
        "abstain": (abstain, FACTS3, SWARM_GEN),
        "multi": (multi, ALL6, SWARM),
    }


def run_family(name, spec, experts, swarm, seeds, runs_dir, generation):
    """One compare per seed; returns {method: {"dev": [...], "test": [...], "evals": [...]}}."""
    from logit_swarm.search.compare import default_methods

    methods = [m for m in default_methods() if not (generation and m in CHEAP_ONLY)]
    table: dict[str, dict[str, list]] = {}
    for seed in seeds:
        out = runs_dir / name / f"seed{seed}"
        t0 = time.perf_counter()
        task = ls.load_task(spec)
        res = compare(experts, task, seed=seed, config=swarm, methods=methods, out_dir=out,
                      resume=(out / "search" / "checkpoint.json").exists(), progress=False)
        (out / "table.txt").write_text(res.format_table() + "\n")
        for r in res.rows:
            d = table.setdefault(r.label if r.name != "best_single" else "best single expert",
                                 {"name": r.name, "dev": [], "test": [], "evals": []})
            d["dev"].append(r.dev)
            d["test"].append(r.test)
            d["evals"].append(r.n_evaluations)
        print(f"[race] {name} seed {seed}: {time.perf_counter() - t0:.0f}s, swarm test "
              f"{res.row('swarm').test:.3f} ({res.row('swarm').n_evaluations} evals)", file=sys.stderr, flush=True)
    return table


def tables_from_runs(runs_dir: Path, names) -> dict:
    """The race tables rebuilt from the compare.json of every finished (family, seed) run."""
    out = {}
    for name in names:
        table: dict[str, dict[str, list]] = {}
        for f in sorted((runs_dir / name).glob("seed*/compare.json")):
            for r in json.loads(f.read_text())["rows"]:
                label = r["label"] if r["name"] != "best_single" else "best single expert"
                d = table.setdefault(label, {"name": r["name"], "dev": [], "test": [], "evals": []})
                d["dev"].append(r["dev"])
                d["test"].append(r["test"])
                d["evals"].append(r["n_evaluations"])
        if table:
            out[name] = table
    return out


def fmt(xs):
    a = np.array([np.nan if x is None else x for x in xs], dtype=np.float64)
    return f"{np.nanmean(a):.3f} ± {np.nanstd(a):.3f}"


def write_results(all_tables, meta, seeds):
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "search_vs_peers.json").write_text(json.dumps({"meta": meta, "families": all_tables}, indent=1))
    fams = list(all_tables)
    order = {m: i for i, m in enumerate(method_names())}
    methods = sorted(dict.fromkeys(m for t in all_tables.values() for m in t),
                     key=lambda m: order.get(next(t[m]["name"] for t in all_tables.values() if m in t), 99))
    lines = [f"# The race: every method at equal budget ({len(fams)} families x {len(seeds)} seeds)", "",
             "Machine: 2 CPU cores shared with six other agents"
             + (f"; {meta['wall_s']:.0f} s wall. " if np.isfinite(meta["wall_s"]) else ". ") +
             "Command: `python experiments/search_vs_peers.py`. Mean ± sd over seeds of the **test** "
             "utility; evaluations used in brackets (mean). '-' = not run on that family.", "",
             "| method | " + " | ".join(fams) + " |", "|---" * (len(fams) + 1) + "|"]
    for m in methods:
        cells = []
        for f in fams:
            d = all_tables[f].get(m)
            if d is None:
                cells.append("-")
                continue
            ev = [e for e in d["evals"] if e is not None]
            cells.append(fmt(d["test"]) + (f" [{np.mean(ev):.0f}]" if ev else ""))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "Swarm (paper protocol) vs random search and CMA-ES, mean test utility per family:", ""]
    wins = {"random search": 0, "CMA-ES": 0}
    for f in fams:
        t = all_tables[f]
        sw = np.nanmean([np.nan if x is None else x for x in t["model swarms (PSO)"]["test"]])
        parts = []
        for other in wins:
            if other in t:
                o = np.nanmean([np.nan if x is None else x for x in t[other]["test"]])
                wins[other] += int(sw >= o)
                parts.append(f"{other} {o:.3f} ({'swarm >=' if sw >= o else 'swarm <'})")
        lines.append(f"- {f}: swarm {sw:.3f}; " + "; ".join(parts))
    lines += ["", f"Swarm >= random search on {wins['random search']}/{len(fams)} families, "
              f">= CMA-ES on {wins['CMA-ES']}/{len(fams)}."]
    (RESULTS / "search_vs_peers.md").write_text("\n".join(lines) + "\n")
    plot(all_tables, fams, methods)
    print("\n".join(lines))


def plot(all_tables, fams, methods):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot skipped: matplotlib missing", file=sys.stderr)
        return
    fig, axes = plt.subplots(1, len(fams), figsize=(3.2 * len(fams), 4.5), dpi=110, sharey=False)
    for ax, f in zip(np.atleast_1d(axes), fams):
        names = methods  # the same rows in every panel; a method not run on a family has no bar
        vals = [[np.nan if x is None else x for x in all_tables[f][m]["test"]] if m in all_tables[f] else [np.nan]
                for m in names]
        mean = [np.nanmean(v) if np.isfinite(v).any() else np.nan for v in vals]
        sd = [np.nanstd(v) if np.isfinite(v).any() else np.nan for v in vals]
        colors = ["tab:green" if "swarm" in m else "tab:gray" for m in names]
        ax.barh(range(len(names)), mean, xerr=sd, color=colors)
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(names if f == fams[0] else [""] * len(names), fontsize=7)
        ax.set_title(f, fontsize=9)
        ax.invert_yaxis()
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle("test utility, mean ± sd over seeds, equal budget")
    fig.tight_layout()
    fig.savefig(RESULTS / "search_vs_peers.png")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 seeds, 3 families")
    p.add_argument("--families", help="comma-separated subset")
    p.add_argument("--seeds", type=int, help="number of seeds (default 5; 2 with --quick)")
    p.add_argument("--runs-dir", default=str(RESULTS / "search_vs_peers_runs"), help="where each compare writes")
    p.add_argument("--report-only", action="store_true", help="rebuild the tables from the finished runs in "
                   "--runs-dir (e.g. after running families in separate processes)")
    p.add_argument("--dev", type=int, default=30)
    p.add_argument("--test", type=int, default=96)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    seeds = SEEDS[: args.seeds or (2 if args.quick else len(SEEDS))]
    if args.report_only:
        tables = tables_from_runs(Path(args.runs_dir), ["mc", "exact_match", "reward", "judge", "abstain", "multi"])
        n_seeds = max(len(d["test"]) for t in tables.values() for d in t.values())
        write_results(tables, {"wall_s": float("nan"), "seeds": list(SEEDS[:n_seeds]), "dev": args.dev,
                               "test": args.test, "swarm": SWARM, "swarm_generation": SWARM_GEN}, SEEDS[:n_seeds])
        return
    zoo = {k: str(v) for k, v in zoo_experts(build=True).items()}
    fams = families(zoo, args.dev, args.test)
    chosen = args.families.split(",") if args.families else (["mc", "exact_match", "multi"] if args.quick else list(fams))
    loaded: dict[str, object] = {}
    all_tables = {}
    t0 = time.perf_counter()
    for name in chosen:
        spec, names, swarm = fams[name]
        experts = [loaded.setdefault(n, ls.load_expert(zoo[n])) for n in names]
        generation = name not in ("mc", "multi")
        all_tables[name] = run_family(name, spec, experts, swarm, seeds, Path(args.runs_dir), generation)
    meta = {"seeds": list(seeds), "dev": args.dev, "test": args.test, "swarm": SWARM, "swarm_generation": SWARM_GEN,
            "wall_s": time.perf_counter() - t0, "families": {n: {"experts": list(fams[n][1])} for n in chosen}}
    write_results(all_tables, meta, seeds)


if __name__ == "__main__":
    main()
