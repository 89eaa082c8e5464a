"""``logit-swarm bench``: run the engine benchmark (experiments/bench_engine.py) from a checkout."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


def register(sub) -> None:
    """Add the ``bench`` sub-command."""
    p = sub.add_parser("bench", help="engine benchmark: decode overhead, byte vs token, tables",
                       description="Runs experiments/bench_engine.py (needs a source checkout); extra "
                       "arguments are passed through, e.g. `logit-swarm bench -- --quick`.")
    p.add_argument("rest", nargs="*", help="arguments for the benchmark script (--experts, --device, --quick)")
    p.set_defaults(func=run)


def run(args) -> int:
    """Entry point of ``logit-swarm bench``."""
    script = Path(__file__).resolve().parents[2] / "experiments" / "bench_engine.py"
    if not script.exists():
        raise FileNotFoundError(
            "experiments/bench_engine.py is not here; run `logit-swarm bench` from a source checkout")
    sys.argv = [str(script), *args.rest]
    runpy.run_path(str(script), run_name="__main__")
    return 0
