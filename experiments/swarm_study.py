"""Where the swarm loses: PSO variants and the other optimisers on a smooth utility over the simplex.

    python experiments/swarm_study.py      # ~1 min on 2 shared CPU cores

Utility: ``-||w - target||`` for 8 random targets (Dirichlet(0.5), 6 experts), seeds 0-7. Each
swarm variant runs at its own stopping rule; random search, Nelder-Mead, CMA-ES, DE and NGOpt get
the paper-protocol swarm's evaluation count. Writes ``experiments/results/swarm_study.md``.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from logit_swarm.search import run_method  # noqa: E402
from logit_swarm.search.methods.pso import SwarmConfig  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BASE = SwarmConfig()
VARIANTS = {
    "paper protocol (defaults)": BASE,
    "authors' argparse defaults": BASE.replace(inertia=0.4, cognitive=0.3, social=0.3, repel=0.3, step_length=1.0),
    "restart at a random mixture": BASE.replace(restart_to="random"),
    "r ~ U(-0.2, 1)": BASE.replace(r_low=-0.2),
    "both": BASE.replace(restart_to="random", r_low=-0.2),
}
OTHERS = ("random", "nelder_mead", "cma_es", "differential_evolution", "ngopt")


def main() -> None:
    warnings.filterwarnings("ignore")
    rng = np.random.default_rng(0)
    targets = [rng.dirichlet(np.ones(6) * 0.5) for _ in range(8)]
    rows = []
    budgets = []
    for name, cfg in VARIANTS.items():
        us, ev = [], []
        for s, t in enumerate(targets):
            r = run_method("swarm", lambda W, t=t: -np.linalg.norm(W - t, axis=1), 6, seed=s,
                           options={"config": cfg}, progress=False)
            us.append(r.utility)
            ev.append(r.n_evaluations)
        if name.startswith("paper"):
            budgets = ev
        rows.append((f"swarm: {name}", np.mean(us), np.std(us), np.mean(ev)))
    for m in OTHERS:
        us = [run_method(m, lambda W, t=t: -np.linalg.norm(W - t, axis=1), 6, seed=s, budget=b, progress=False).utility
              for s, (t, b) in enumerate(zip(targets, budgets))]
        rows.append((m, np.mean(us), np.std(us), np.mean(budgets)))
    lines = ["# Swarm study: smooth utility -||w - target|| over the simplex (6 experts, 8 targets)", "",
             "Machine: 2 CPU cores shared with other agents. Command: `python experiments/swarm_study.py`.", "",
             "| method | mean utility | sd | evaluations |", "|---|---|---|---|"]
    lines += [f"| {n} | {m:.4f} | {s:.4f} | {e:.0f} |" for n, m, s, e in rows]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "swarm_study.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
