"""The same swarm search with remote experts (each zoo expert behind its own `logit-swarm serve`
process) and with the local ones: equal when k covers the vocabulary, and the gap at small k.

1. Token level: facts_a + facts_b (one tokenizer) on ``zoo-facts-mc``. The local search, then
   remote searches with k = all (-1), 1, 5, 20, 100: weights, dev/test utility, and per-example
   log-probability deviation from the local experts on the dev (prompt, choice) pairs (each
   expert alone, and the mixture at the local search's weights).
2. Byte level: facts_a + facts_b + reason (two tokenizers), same task, local vs k = all and 20.
3. Fault: a generation task (``zoo-facts``, exact match), remote experts with their caches off
   (so every iteration needs the servers), one server killed when iteration 1 starts: the search
   fails with a clear error and a valid checkpoint; the server is restarted on the same port and
   the search resumes from the checkpoint to the same recipe as an uninterrupted local search.

    python experiments/remote_search.py [--ks -1 1 5 20 100] [--byte-ks -1 20] [--no-byte]

Writes experiments/results/remote_search.{json,md}. CPU-only; about a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import logit_swarm as ls  # noqa: E402
from logit_swarm.experts.remote import RemoteExpertError  # noqa: E402
from logit_swarm.recipe import recipe_dict  # noqa: E402
from logit_swarm.zoo import zoo_experts  # noqa: E402

MC_CONFIG = {"swarm_size": 6, "max_iter": 6}
EM_CONFIG = {"swarm_size": 4, "max_iter": 3}
SEED = 0


# ------------------------------------------------------------------------------------ servers
def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Server:
    """One `logit-swarm serve --experts DIR` process on a fixed local port (restartable)."""

    def __init__(self, directory: Path, port: int, max_logprobs: int = -1):
        self.directory, self.port, self.max_logprobs = directory, port, max_logprobs
        self.url = f"http://127.0.0.1:{port}/v1"
        self.proc: subprocess.Popen | None = None
        self.log = tempfile.NamedTemporaryFile(prefix=f"serve-{directory.name}-", suffix=".log", delete=False)

    def start(self, wait: float = 120.0) -> Server:
        cmd = [sys.executable, "-m", "logit_swarm.cli", "serve", "--experts", str(self.directory),
               "--port", str(self.port), "--max-logprobs", str(self.max_logprobs), "--threads", "1", "--quiet"]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log, cwd=ROOT)
        deadline = time.time() + wait
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server for {self.directory.name} exited; see {self.log.name}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"server for {self.directory.name} did not start within {wait:.0f} s; see {self.log.name}")

    def kill(self) -> None:
        """SIGKILL: the crash case (no graceful shutdown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


# ------------------------------------------------------------------------------------ measures
def pairs(task, split):
    ctx, cont = [], []
    for ex in task.examples(split):
        for c in ex["choices"]:
            ctx.append(ex["prompt"])
            cont.append(c)
    return ctx, cont


def deviation(remote, local, ctx, cont, weights=None):
    """Per-pair |log P_remote - log P_local| (nats): mean, max, and the mean signed gap."""
    w = None if weights is None else list(weights)
    r = np.array(ls.Ensemble(remote, weights=w).logprob(ctx, cont))
    l_ = np.array(ls.Ensemble(local, weights=w).logprob(ctx, cont))
    d = r - l_
    return {"mean_abs": float(np.abs(d).mean()), "max_abs": float(np.abs(d).max()), "mean": float(d.mean())}


def search(experts, task, config, **kw):
    """Search on dev, then evaluate the result on test; also the experts' backend calls
    (forward passes or HTTP requests) made by the search itself."""
    before = sum(e.forward_calls for e in experts)
    t0 = time.perf_counter()
    res = ls.swarm_search(experts, task, seed=SEED, config=config, progress=False, **kw)
    secs = time.perf_counter() - t0
    calls = sum(e.forward_calls for e in experts) - before
    test = float(task.evaluate(experts, res.weights[None], split="test", allow_test=True)[0])
    return res, secs, test, calls


def mixture(w):
    c = np.clip(np.asarray(w, dtype=np.float64), 0, None)
    return (c / c.sum()).tolist()


def remote_stats(experts):
    return {e.name: {k: e.stats()[k] for k in ("forward_calls", "forward_rows", "cache_hits", "k_cap")}
            for e in experts}


def run_pool(names, servers, local, task, ks, label):
    """Local search, then one remote search per k; returns rows for the table."""
    print(f"[{label}] local search ...", file=sys.stderr, flush=True)
    lres, lsecs, ltest, lcalls = search(local, task, MC_CONFIG)
    base_recipe = {k: v for k, v in recipe_dict(lres.ensemble).items() if k != "experts"}
    ctx, cont = pairs(task, "dev")
    rows = [{"pool": label, "k": "local", "weights": mixture(lres.weights), "raw_weights": lres.weights.tolist(),
             "dev": lres.utility, "test": ltest, "search_seconds": lsecs, "search_calls": lcalls,
             "unit": lres.ensemble.unit}]
    for k in ks:
        print(f"[{label}] remote search, k={k} ...", file=sys.stderr, flush=True)
        remote = [ls.load_expert(servers[n].url, top_k=k, name=n, timeout=60, retries=2) for n in names]
        rres, rsecs, rtest, rcalls = search(remote, task, MC_CONFIG)
        recipe = {kk: v for kk, v in recipe_dict(rres.ensemble).items() if kk != "experts"}
        row = {"pool": label, "k": "all" if k == -1 else k, "weights": mixture(rres.weights),
               "raw_weights": rres.weights.tolist(), "dev": rres.utility, "test": rtest, "search_seconds": rsecs,
               "search_calls": rcalls, "unit": rres.ensemble.unit,
               "same_weights_as_local": bool(np.array_equal(rres.weights, lres.weights)),
               "same_recipe_as_local": recipe == base_recipe,
               "max_abs_weight_diff": float(np.abs(np.asarray(mixture(rres.weights)) - np.asarray(mixture(lres.weights))).max())}
        row["deviation_one_hot"] = {n: deviation([r], [l_], ctx, cont) for n, r, l_ in zip(names, remote, local)}
        row["deviation_mixture_at_local_weights"] = deviation(remote, local, ctx, cont, mixture(lres.weights))
        row["expert_stats_after_all_measures"] = remote_stats(remote)
        rows.append(row)
    return rows


def fault_case(servers, local, names, workdir: Path):
    """Kill one server when iteration 1 starts; resume after restarting it."""
    task = ls.load_task("zoo-facts")
    print("[fault] local reference search ...", file=sys.stderr, flush=True)
    ref = ls.swarm_search(local, task, seed=SEED, config=EM_CONFIG, progress=False, memo=False)
    remote = [ls.load_expert(servers[n].url, top_k=-1, name=n, timeout=10, retries=2, backoff=0.2,
                             cache_bytes=0) for n in names]
    victim = servers[names[1]]
    calls = {"n": 0}
    original = task.evaluate

    def evaluate(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # iteration 1 is about to be evaluated: the crash
            victim.kill()
            calls["killed_at"] = time.perf_counter()
        return original(*a, **kw)

    task.evaluate = evaluate  # instance attribute: only this experiment's task object
    out = workdir / "fault-run"
    t0 = time.perf_counter()
    error = None
    try:
        ls.swarm_search(remote, task, seed=SEED, config=EM_CONFIG, progress=False, memo=False, out_dir=out)
    except RemoteExpertError as exc:
        error = str(exc)
    fail_secs = time.perf_counter() - calls.get("killed_at", t0)
    hist = out / "history.jsonl"
    done_before = len(hist.read_text().splitlines()) if hist.exists() else 0
    ckpt_ok = (out / "checkpoint.json").exists()
    print("[fault] restarting the server, resuming ...", file=sys.stderr, flush=True)
    victim.start()
    task.evaluate = original
    t0 = time.perf_counter()
    res = ls.swarm_search(remote, task, seed=SEED, progress=False, memo=False, out_dir=out, resume=True)
    resume_secs = time.perf_counter() - t0
    return {"task": "zoo-facts", "config": EM_CONFIG, "killed": names[1], "killed_at": "start of iteration 1",
            "error": error, "seconds_to_error": fail_secs,
            "checkpoint_written": ckpt_ok, "iterations_saved_before_crash": done_before,
            "resumed_iterations": len(res.history) - 1, "resume_seconds": resume_secs,
            "resumed_weights": res.weights.tolist(), "resumed_dev": res.utility,
            "local_weights": ref.weights.tolist(), "local_dev": ref.utility,
            "same_weights_as_uninterrupted_local": bool(np.array_equal(res.weights, ref.weights))}


# ------------------------------------------------------------------------------------ report
def fmt(x, nd=3):
    return "-" if x is None else (f"{x:.{nd}g}" if isinstance(x, float) else str(x))


def markdown(result) -> str:
    L = ["# Remote experts vs local experts in a swarm search", "",
         f"Machine: {result['machine']}; seed {SEED}; search config {MC_CONFIG} (multiple choice), "
         f"{EM_CONFIG} (fault case). Each zoo expert runs in its own `logit-swarm serve --max-logprobs -1` "
         "process on 127.0.0.1; the client asks for k log-probabilities per position and fills the rest by "
         "the leftover-mass rule (spread uniformly over the unlisted tokens). Deviation = |log P_remote − "
         "log P_local| per dev (prompt, choice) pair, in nats. \"weights = local\": the searched raw weights are "
         "bit-identical; \"recipe = local\": the whole recipe (weights, mode, decoding, provenance including the "
         "per-iteration best/mean utilities) is identical apart from the expert references. Backend calls: what the "
         "search itself cost, summed over experts: forward passes (local) or HTTP completions requests "
         "(remote). Generated by `experiments/remote_search.py`.", ""]
    for pool in result["pools"]:
        rows = pool["rows"]
        L += [f"## {pool['label']} ({rows[0]['unit']} units): task {pool['task']}, "
              f"{pool['n_dev_pairs']} dev pairs", "",
              "| k | mixture weights | dev | test | weights = local | recipe = local | one-hot deviation mean / max "
              "(per expert) | mixture deviation mean / max | backend calls | search s |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            w = ", ".join(f"{x:.3f}" for x in r["weights"])
            if r["k"] == "local":
                L.append(f"| local | {w} | {r['dev']:.3f} | {r['test']:.3f} | — | — | — | — | "
                         f"{r['search_calls']} | {r['search_seconds']:.1f} |")
                continue
            one = "; ".join(f"{n} {d['mean_abs']:.2g} / {d['max_abs']:.2g}" for n, d in r["deviation_one_hot"].items())
            mx = r["deviation_mixture_at_local_weights"]
            req = r["search_calls"]
            same_w = "yes" if r["same_weights_as_local"] else f"no (max Δw {r['max_abs_weight_diff']:.2g})"
            same_r = "yes" if r["same_recipe_as_local"] else "no"
            L.append(f"| {r['k']} | {w} | {r['dev']:.3f} | {r['test']:.3f} | {same_w} | {same_r} | {one} | "
                     f"{mx['mean_abs']:.2g} / {mx['max_abs']:.2g} | {req} | {r['search_seconds']:.1f} |")
        L.append("")
    f = result.get("fault")
    if f:
        L += ["## Fault: a server killed mid-search", "",
              f"Task {f['task']} (generation), config {f['config']}, remote caches off so that every iteration "
              f"needs the servers. Server `{f['killed']}` was SIGKILLed at the {f['killed_at']}.", "",
              f"* error {f['seconds_to_error']:.1f} s after the kill (retries=2, backoff 0.2 s): `{f['error']}`",
              f"* checkpoint kept with {f['iterations_saved_before_crash']} evaluated iteration(s) (iteration 0); the "
              f"server was restarted on the same port and the search resumed from it: {f['resumed_iterations']} "
              f"update iterations in the finished history, {f['resume_seconds']:.1f} s after the restart",
              f"* resumed weights {['%.4f' % x for x in f['resumed_weights']]}, dev {f['resumed_dev']:.3f}; "
              f"uninterrupted local search {['%.4f' % x for x in f['local_weights']]}, dev {f['local_dev']:.3f}; "
              f"identical: {'yes' if f['same_weights_as_uninterrupted_local'] else 'no'}", ""]
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ks", nargs="+", type=int, default=[-1, 1, 5, 20, 100])
    ap.add_argument("--byte-ks", nargs="+", type=int, default=[-1, 20])
    ap.add_argument("--no-byte", action="store_true", help="skip the byte-level pool")
    ap.add_argument("--no-fault", action="store_true", help="skip the fault case")
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t_all = time.perf_counter()
    z = zoo_experts(build=False)
    names_all = ["facts_a", "facts_b", "reason"]
    servers = {n: Server(Path(z[n]), free_port()) for n in names_all}
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                         f"python {platform.python_version()}",
              "seed": SEED, "mc_config": MC_CONFIG, "pools": []}
    try:
        for s in servers.values():
            s.start()
        local = {n: ls.load_expert(z[n]) for n in names_all}
        task = ls.load_task("zoo-facts-mc")
        n_pairs = len(pairs(task, "dev")[0])
        names = ["facts_a", "facts_b"]
        rows = run_pool(names, servers, [local[n] for n in names], task, args.ks, "token")
        result["pools"].append({"label": "facts_a + facts_b", "task": "zoo-facts-mc", "n_dev_pairs": n_pairs,
                                "rows": rows})
        if not args.no_byte:
            rows = run_pool(names_all, servers, [local[n] for n in names_all], task, args.byte_ks, "byte")
            result["pools"].append({"label": "facts_a + facts_b + reason", "task": "zoo-facts-mc",
                                    "n_dev_pairs": n_pairs, "rows": rows})
        if not args.no_fault:
            with tempfile.TemporaryDirectory() as tmp:
                result["fault"] = fault_case(servers, [local[n] for n in names], names, Path(tmp))
    finally:
        for s in servers.values():
            s.stop()
    result["seconds"] = time.perf_counter() - t_all
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "remote_search.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "remote_search.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
