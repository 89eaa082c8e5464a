"""How the byte level's pruning default was chosen: exactness against brute force of the exact
marginal, and cost, for several thresholds (tiny zoo, CPU, one thread; shared machine).

For each ``prune`` (beam 8): max |Δp| of the next-byte distribution after a few prompts against
brute-force enumeration of every tokenization (tests/test_bytes_chain.py's reference) for the
code and math experts, and the expert rows and wall time of 64 greedy bytes at batch 8
(code + math). The chain-rule gap is not a criterion: it is float rounding at every setting.

    python experiments/bytes_default_choice.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

import logit_swarm as ls
from logit_swarm.align.bytes import ByteTrack
from logit_swarm.align.prompt import text_prompt
from logit_swarm.zoo.cache import cache_root

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_bytes_chain import brute_force_next_byte  # noqa: E402  (the tests' reference, one home)

OUT = Path(__file__).resolve().parent / "results"
PROMPTS = ["café au lait", "def f(x):", "12 + 7 =", "The cat"]
PRUNES = [1e-2, 1e-3, 1e-4, 1e-6]


def next_byte(e, prompt: str, prune: float) -> np.ndarray:
    tr = ByteTrack(e, beam=8, prune=prune)
    head, tail = text_prompt(e, prompt)
    st = tr.start([head], [tail])[0]
    d = np.exp(tr.distributions([st])[0])
    tr.release(st)
    return d


def main() -> None:
    torch.set_num_threads(1)
    root = next(iter(sorted(cache_root().glob("tiny-*/zoo.json")))).parent
    ex = {n: ls.load_expert(str(root / n)) for n in ("code", "math")}
    brute = {(n, p): np.exp(brute_force_next_byte(e, *text_prompt(e, p))) for n, e in ex.items() for p in PROMPTS}
    rows = []
    for prune in PRUNES:
        err = max(float(np.abs(next_byte(e, p, prune) - brute[(n, p)]).max()) for n, e in ex.items() for p in PROMPTS)
        for e in ex.values():
            e.forward_rows = 0
        ens = ls.Ensemble(list(ex.values()), byte_prune=prune)
        t = time.perf_counter()
        ens.generate((PROMPTS * 2)[:8], max_new_tokens=64, budget_unit="units")
        wall = time.perf_counter() - t
        rows.append({"prune": prune, "max_abs_dp_vs_brute": err, "expert_rows": sum(e.forward_rows for e in ex.values()),
                     "seconds_64_bytes_batch8": wall})
        print(rows[-1], flush=True)
    lines = ["# Byte-level pruning threshold (beam 8): exactness vs cost (tiny zoo code + math, shared CPU)", "",
             "| prune | max abs dp vs brute force | expert rows (64 bytes, batch 8) | seconds |", "|---|---|---|---|"]
    lines += [f"| {r['prune']:g} | {r['max_abs_dp_vs_brute']:.2e} | {r['expert_rows']} | {r['seconds_64_bytes_batch8']:.2f} |"
              for r in rows]
    OUT.mkdir(exist_ok=True)
    (OUT / "bytes_default_choice.json").write_text(json.dumps(rows, indent=1))
    (OUT / "bytes_default_choice.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
