"""Engine benchmark: ensemble decoding overhead, byte vs token decoding, row scaling, tables.

Everything is measured side by side in one run, so the ratios are meaningful on any machine;
absolute times are only worth quoting from a GPU run.

    python experiments/bench_engine.py [--experts DIR ...] [--device cpu|cuda] [--quick]

Without --experts it uses the embedded zoo (built on first use). Results go to
experiments/results/bench_engine_<device>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import logit_swarm as ls  # noqa: E402

SNIPPETS = [
    "The capital of", "def main():\n    ", "Once upon a time", "12 + 7 =", "import os\nimport",
    "The river", "Q: What is", "for i in range(", "She said that", "Sorting the list",
    "class Node:\n", "In the morning", "return x +", "A: The answer", "The quick brown", "print(",
]


REPEATS = 3  # timings are the best of this many runs


def prompts_for(n: int) -> list[str]:
    """n distinct prompts (distinct so that no row shares a state with another)."""
    return [f"{SNIPPETS[i % len(SNIPPETS)]}" + (f" {i // len(SNIPPETS)}" if i >= len(SNIPPETS) else "")
            for i in range(n)]


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def floor_decode(e, prompts: list[str], steps: int, active: list[int] | None = None) -> float:
    """The expert's own batched forward passes alone: left-padded prefill + greedy decode steps
    with a DynamicCache (what any decoder has to do at the least). Returns seconds.

    ``active[s]``: how many rows still decode at step s (rows finish at different steps in the
    ensemble run; the floor then drops the same number of rows from its batch, so both sides do
    the same number of row-steps). Default: every row for every step."""
    from transformers import DynamicCache

    tok = e.tokenizer
    seqs = [e.encode(p) for p in prompts]
    L = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), L, dtype=torch.long)
    mask = torch.zeros(len(seqs), L, dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, L - len(s):] = torch.tensor(s)
        mask[r, L - len(s):] = 1
    ids, mask = ids.to(e.device), mask.to(e.device)
    active = active or [len(prompts)] * steps
    sync(e.device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        out = e.model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True)
        nxt = torch.log_softmax(out.logits[:, -1, : len(tok)].float(), -1).argmax(-1)
        p = pos[:, -1]
        for s in range(1, steps):
            n = active[s] if s < len(active) else 0
            if n == 0:
                break
            if n < nxt.shape[0]:  # finished rows leave the batch
                keep = torch.arange(n, device=nxt.device)
                out.past_key_values.batch_select_indices(keep)
                nxt, mask, p = nxt[:n], mask[:n], p[:n]
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
            p = p + 1
            out = e.model(input_ids=nxt[:, None], attention_mask=mask, position_ids=p[:, None],
                          past_key_values=out.past_key_values, use_cache=True)
            nxt = torch.log_softmax(out.logits[:, -1, : len(tok)].float(), -1).argmax(-1)
    sync(e.device)
    return time.perf_counter() - t0


def timed(fn, device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def bench_overhead(pool, rows_list, steps, device):
    """Shared-token ensemble decode vs the sum of the experts' floors, per generated token."""
    ens = ls.Ensemble(pool)
    res = []
    for rows in rows_list:
        prompts = prompts_for(rows)
        floor_decode(pool[0], prompts[:2], 2)  # warm-up
        ens.generate(prompts[:2], max_new_tokens=2)
        # Best of REPEATS, alternating the two sides, so a noisy neighbour hurts both alike.
        t_ens = t_floor = float("inf")
        for _ in range(REPEATS):
            t, outs = timed(lambda prompts=prompts: ens.generate(prompts, max_new_tokens=steps, return_details=True), device)
            t_ens = min(t_ens, t)
            # Row-steps per step of the ensemble run (rows stop at EOS); the floor does the same.
            active = [sum(len(o.units) > s for o in outs) for s in range(steps)]
            t_floor = min(t_floor, sum(floor_decode(e, prompts, steps, active) for e in pool))
        n_ens = sum(len(o.units) for o in outs)
        n_floor = sum(active)
        per_ens, per_floor = t_ens / n_ens, t_floor / n_floor
        res.append({"rows": rows, "steps": steps, "ensemble_s": t_ens, "ensemble_tokens": n_ens,
                    "floor_s": t_floor, "floor_tokens": n_floor,
                    "ensemble_tok_per_s": n_ens / t_ens, "floor_tok_per_s": n_floor / t_floor,
                    "overhead": per_ens / per_floor - 1})
        print(f"  rows {rows:4d}: ensemble {n_ens / t_ens:9.1f} tok/s   floor {n_floor / t_floor:9.1f} tok/s"
              f"   overhead {100 * (per_ens / per_floor - 1):6.1f}%", flush=True)
    return res


def bench_byte_vs_token(pool, rows, steps, device):
    """Same experts, same prompts: time per generated byte of text, token units vs byte units."""
    prompts = prompts_for(rows)
    tok_ens = ls.Ensemble(pool)
    byte_ens = ls.Ensemble(pool, unit="byte")
    t_tok, out_tok = timed(lambda: tok_ens.generate(prompts, max_new_tokens=steps), device)
    b_tok = sum(len(o.encode()) for o in out_tok)
    # budget_unit="units": a budget in bytes, the unit this benchmark compares per.
    t_byte, out_byte = timed(lambda: byte_ens.generate(prompts, max_new_tokens=max(1, b_tok // rows),
                                                       budget_unit="units"), device)
    b_byte = sum(len(o.encode()) for o in out_byte)
    r = {"rows": rows, "token_s": t_tok, "token_bytes": b_tok, "byte_s": t_byte, "byte_bytes": b_byte,
         "token_bytes_per_s": b_tok / t_tok, "byte_bytes_per_s": b_byte / t_byte,
         "slowdown": (t_byte / max(b_byte, 1)) / (t_tok / max(b_tok, 1)),
         "same_text_fraction": float(np.mean([a[:20] == b[:20] for a, b in zip(out_tok, out_byte)]))}
    print(f"  token {r['token_bytes_per_s']:8.1f} B/s   byte {r['byte_bytes_per_s']:8.1f} B/s   "
          f"slowdown {r['slowdown']:.2f}x", flush=True)
    return r


def bench_table(pool, n_pairs, n_vectors, device):
    """Time of one forward pass over the pairs (building the table) vs evaluating many vectors."""
    ctx = [prompts_for(n_pairs)[i] for i in range(n_pairs)]
    cont = [" and then it was done." if i % 2 else " 42" for i in range(n_pairs)]
    t_build, table = timed(lambda: ls.build_table(pool, ctx, cont), device)
    W = np.random.default_rng(0).dirichlet(np.ones(len(pool)), size=n_vectors)
    t_eval, _ = timed(lambda: table.logprob(W, "probs"), device)
    r = {"pairs": n_pairs, "vectors": n_vectors, "unit": table.unit, "build_s": t_build, "eval_s": t_eval,
         "eval_over_build": t_eval / t_build}
    print(f"  {table.unit}: build (one pass) {t_build:.3f}s   {n_vectors} vectors {t_eval:.3f}s   "
          f"ratio {t_eval / t_build:.3f}", flush=True)
    return r


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experts", nargs="*", help="expert directories (default: the zoo)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="fewer rows and steps")
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results"))
    args = ap.parse_args(argv)

    if args.experts:
        paths = {Path(p).name: p for p in args.experts}
    else:
        from logit_swarm.zoo import zoo_experts

        paths = zoo_experts()
    experts = [ls.load_expert(p, device=args.device, name=n) for n, p in sorted(paths.items())]
    groups = defaultdict(list)
    for e in experts:
        groups[e.fingerprint].append(e)
    shared = max(groups.values(), key=len)
    if len(shared) < 2:
        raise SystemExit("need at least two experts that share a tokenizer for the shared-token benchmark")
    shared = shared[:4]
    hetero = [g[0] for g in groups.values()][:4]

    rows_list = [1, 4, 16, 64] if args.quick else [1, 4, 16, 64, 128, 256]
    steps = 16 if args.quick else 32
    print(f"device {args.device}; shared-token pool: {[e.name for e in shared]}; "
          f"byte pool: {[e.name for e in hetero]}", flush=True)
    print("shared-token decode vs the experts' own forward passes (floor):", flush=True)
    overhead = bench_overhead(shared, rows_list, steps, args.device)
    print("byte-level vs shared-token decode on the same experts:", flush=True)
    bvt = bench_byte_vs_token(shared[:2], 16, steps, args.device)
    print("byte-level decode, heterogeneous pool (rows 16):", flush=True)
    hetero_prompts = prompts_for(16)
    t_h, out_h = timed(lambda: ls.Ensemble(hetero).generate(hetero_prompts, max_new_tokens=4 * steps, budget_unit="units"),
                       args.device)
    het = {"pool": [e.name for e in hetero], "rows": 16, "s": t_h,
           "bytes_per_s": sum(len(o.encode()) for o in out_h) / t_h}
    print(f"  {het['bytes_per_s']:.1f} B/s", flush=True)
    print("table evaluation:", flush=True)
    tables = [bench_table(shared, 200, 1000, args.device), bench_table(hetero, 100, 1000, args.device)]

    result = {
        "device": args.device,
        "gpu": torch.cuda.get_device_name(0) if str(args.device).startswith("cuda") else None,
        "cpu_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "shared_pool": [e.name for e in shared],
        "overhead": overhead,
        "byte_vs_token": bvt,
        "hetero_byte_decode": het,
        "tables": tables,
        "targets": {"overhead_at_64_plus_rows": 0.25, "byte_slowdown": 3.0},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = "cuda" if str(args.device).startswith("cuda") else "cpu"
    (out / f"bench_engine_{dev}.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [f"# Engine benchmark ({dev}, {result['gpu'] or str(result['cpu_threads']) + ' CPU threads'})", "",
          "| rows | ensemble tok/s | floor tok/s | overhead (target ≤ 25% at 64+ rows) |", "|---|---|---|---|"]
    for r in overhead:
        md.append(f"| {r['rows']} | {r['ensemble_tok_per_s']:.1f} | {r['floor_tok_per_s']:.1f} | {100 * r['overhead']:.1f}% |")
    md += ["", f"Byte-level vs shared-token decode (same experts, 16 rows): {bvt['slowdown']:.2f}× slower per "
           "generated byte (target ≤ 3×).", "",
           f"Heterogeneous byte-level pool {het['pool']}: {het['bytes_per_s']:.1f} bytes/s at 16 rows.", "",
           "| table | pairs | build (one forward pass) s | 1,000 vectors s | ratio |", "|---|---|---|---|---|"]
    for t in tables:
        md.append(f"| {t['unit']} | {t['pairs']} | {t['build_s']:.3f} | {t['eval_s']:.3f} | {t['eval_over_build']:.3f} |")
    (out / f"bench_engine_{dev}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
