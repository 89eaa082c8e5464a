"""Batching policies of the server's engine without HTTP: closed loop, C requests outstanding.

The load test (``load_test.py``) measures the whole server; on a 2-core machine its client
threads and uvicorn's event loop compete with the engine for the CPU (and uvicorn shares the
engine's process, so its GIL). This benchmark drives the
:class:`~logit_swarm.serve.scheduler.Scheduler` directly: the same request mix as the load test
(``load_test.request_mix``), C requests always outstanding (a new one is submitted when one
ends), for each policy and each C. Prints a table and writes
``experiments/results/bench_batching.{json,md}``.

::

    python experiments/bench_batching.py --clients 1 8 32 --duration 12
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_test import RESULTS, pct, request_mix, zoo_pair  # noqa: E402

import logit_swarm as ls  # noqa: E402
from logit_swarm.serve import protocol as P  # noqa: E402
from logit_swarm.serve.scheduler import QueueSink, Scheduler  # noqa: E402


def run(ens, policy: str, clients: int, duration: float, max_tokens: int, seed: int, join_every: int = 8) -> dict:
    """One closed-loop phase; returns throughput and latency percentiles."""
    served = P.ServedModel("m", ens.unit, len(ens.experts), ens.experts[0].vocab_size, list(ens.weights), ens.mode,
                           -1, 512, [e.name for e in ens.experts])
    mix = request_mix(max_tokens, None, ens.unit == "token")
    sch = Scheduler(ens, policy, join_every=join_every)
    sch.start()
    rng = random.Random(seed)
    done: queue.Queue = queue.Queue()

    class Sink(QueueSink):
        def put(self, event):
            if event[0] in ("end", "error"):
                done.put((self, event[0], time.perf_counter()))

    started: dict[int, float] = {}

    def submit():
        _, path, body = rng.choice(mix)
        req = P.parse_chat(body, served) if "chat" in path else P.parse_completion(body, served)
        sink = Sink()
        started[id(sink)] = time.perf_counter()
        sch.submit(req, sink)

    for _ in range(clients):
        submit()
    lat, errors, t0 = [], 0, time.perf_counter()
    while time.perf_counter() - t0 < duration:
        sink, kind, t = done.get()
        lat.append(t - started.pop(id(sink)))
        errors += kind == "error"
        submit()
    wall = time.perf_counter() - t0
    sch.stop(60)
    return {"policy": policy if policy != "continuous" else f"{policy} (join every {join_every})", "clients": clients, "requests": len(lat), "req_per_s": round(len(lat) / wall, 2),
            "p50_s": round(pct(lat, 50), 4), "p99_s": round(pct(lat, 99), 4), "errors": errors,
            "steps": sch.stats["steps"], "max_running_rows": sch.stats["max_running_rows"]}


def main(argv=None) -> int:
    """Run the benchmark; returns 0."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--batching", nargs="+", default=["continuous", "static", "sequential"])
    ap.add_argument("--duration", type=float, default=12.0)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--join-every", type=int, nargs="+", default=[8],
                    help="continuous policy: take new requests every k steps (several values: one phase each)")
    ap.add_argument("--zoo", help="zoo directory (default: the cached zoo)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    ens = ls.Ensemble([ls.load_expert(d) for d in zoo_pair("zoo-token", args.zoo)])
    rows = []
    for c in args.clients:  # interleaved, so machine drift hits every policy alike
        for policy in args.batching:
            for k in args.join_every if policy == "continuous" else [1]:
                r = run(ens, policy, c, args.duration, args.max_tokens, seed=c, join_every=k)
                print(r, file=sys.stderr, flush=True)
                rows.append(r)
    md = ["Engine only (no HTTP), zoo facts_a + facts_b, the load test's request mix, max_tokens "
          f"{args.max_tokens}, {args.duration:.0f} s per phase, one torch thread, {os.cpu_count()} CPUs shared "
          "with other jobs (noisy).", "",
          "| batching | outstanding requests | requests | req/s | p50 s | p99 s | errors | steps | max rows in a step |",
          "|---|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['policy']} | {r['clients']} | {r['requests']} | {r['req_per_s']} | {r['p50_s']} | {r['p99_s']} | "
           f"{r['errors']} | {r['steps']} | {r['max_running_rows']} |" for r in rows]
    text = "\n".join(md)
    print(text)
    out = Path(args.out)
    (out / "bench_batching.json").write_text(json.dumps({"runs": rows, "python": platform.python_version()},
                                                        indent=2) + "\n")
    (out / "bench_batching.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
