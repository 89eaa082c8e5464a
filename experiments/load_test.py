"""Load and fault test of ``logit-swarm serve`` (a script, not a unit test).

Starts the server as a subprocess (``logit-swarm serve --experts ...``) on loopback, then:

1. *solo phase*: sends every request of a fixed mix once, alone, and keeps the answers;
2. *load phase*: N client threads send requests from the mix for a bounded time; every answer
   is compared with the solo answer of the same request (texts and units exactly, log-probs to
   1e-4), so a lost, mixed-up or batch-dependent response shows up as a mismatch. A fraction of
   the requests are faults (malformed JSON, wrong types, unknown model, max_tokens beyond the
   context window, a client that hangs up mid-stream), which must get a 4xx (or nothing, for the
   hang-up) and must not disturb anything else;
3. stops the server with SIGTERM and checks it exits cleanly.

Reports p50/p90/p99 latency, throughput, status counts, mismatches, the server's RSS before and
after the load, and its engine counters (``GET /stats``); prints a markdown table and writes
``experiments/results/<name>.{json,md}``. With several ``--batching`` policies and ``--clients``
counts it compares them: one server per policy, one load phase per client count.

::

    python experiments/load_test.py                          # tiny random test experts, 8 clients x 30 s
    python experiments/load_test.py --experts zoo-token      # zoo facts_a + facts_b (shared tokenizer)
    python experiments/load_test.py --experts zoo-token --batching continuous static sequential \
        --clients 1 8 32 --duration 15 --fault-rate 0 --max-tokens 32 --name load_test_batching
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
LP_TOL = 1e-4


# ---------------------------------------------------------------------------------------- experts
def tiny_experts(kind: str, out: Path) -> list[str]:
    """Two random tiny experts built like the tests' (seconds): a shared byte-level BPE with a chat
    template (token units) or two different tokenizers (byte units)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import make_model, train_tokenizer  # noqa: E402

    tok = train_tokenizer("bytelevel", 320, out / "tok_bl2", chat=True)
    a = make_model("mistral", tok, out / "mistral_bl2", seed=5)
    if kind == "tiny":
        b = make_model("llama", tok, out / "llama_bl2", seed=11)
    else:
        sp = train_tokenizer("sentencepiece", 420, out / "tok_sp", chat=True)
        b = make_model("llama", sp, out / "llama_sp", seed=4)
    return [str(a), str(b)]


def zoo_pair(kind: str, zoo: str | None) -> list[str]:
    """facts_a + facts_b (one tokenizer: token units) or facts_a + code (byte units) of a built zoo."""
    from logit_swarm.zoo import cache_root, zoo_cards, zoo_experts

    names = ["facts_a", "facts_b"] if kind == "zoo-token" else ["facts_a", "code"]
    if zoo:
        paths = {n: Path(c["path"]) for n, c in zoo_cards(zoo).items()}
    else:
        try:
            paths = zoo_experts(build=False)
        except FileNotFoundError:  # the recipe moved on: any complete zoo in the cache will do
            paths = {}
            for d in sorted(cache_root().glob("*"), key=lambda p: p.stat().st_mtime, reverse=True):
                try:
                    paths = {n: Path(c["path"]) for n, c in zoo_cards(d).items()}
                    break
                except (FileNotFoundError, ValueError):
                    continue
    missing = [n for n in names if n not in paths]
    if missing:
        raise SystemExit(f"no built zoo with {', '.join(missing)}; run `logit-swarm zoo build` or pass --zoo DIR")
    return [str(paths[n]) for n in names]


# ---------------------------------------------------------------------------------------- HTTP
def request(url: str, method: str, path: str, body=None, raw: bytes | None = None, timeout: float = 300):
    """(status, text, content type) of one request on a fresh connection."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, r.read().decode("utf-8", errors="replace"), r.getheader("Content-Type") or ""
    finally:
        conn.close()


def normalise(status: int, text: str, ctype: str):
    """What must be identical between the solo answer and any other answer of a request."""
    if status != 200:
        return {"status": status}
    if ctype.startswith("text/event-stream"):
        per: dict[int, dict] = {}
        usage = None
        for block in text.split("\n\n"):
            block = block.strip()
            if not block.startswith("data: ") or block == "data: [DONE]":
                continue
            ev = json.loads(block[6:])
            if "error" in ev:
                return {"status": "stream-error", "error": ev["error"]["message"]}
            if ev.get("usage"):
                usage = ev["usage"]
            for c in ev["choices"]:
                d = per.setdefault(c["index"], {"text": "", "finish_reason": None, "tokens": [], "lps": []})
                d["text"] += c.get("text") or (c.get("delta") or {}).get("content") or ""
                d["finish_reason"] = c.get("finish_reason") or d["finish_reason"]
                lp = c.get("logprobs")
                if lp and "tokens" in lp:
                    d["tokens"] += lp["tokens"]
                    d["lps"] += lp["token_logprobs"]
        return {"status": 200, "choices": [per[i] for i in sorted(per)], "usage": usage}
    body = json.loads(text)
    choices = []
    for c in body["choices"]:
        d = {"text": c.get("text", (c.get("message") or {}).get("content")), "finish_reason": c["finish_reason"],
             "tokens": [], "lps": []}
        lp = c.get("logprobs")
        if lp and "tokens" in lp:
            d["tokens"], d["lps"] = lp["tokens"], lp["token_logprobs"]
        elif lp and "content" in lp:
            d["tokens"] = [x["token"] for x in lp["content"]]
            d["lps"] = [x["logprob"] for x in lp["content"]]
        choices.append(d)
    return {"status": 200, "choices": choices, "usage": body["usage"]}


def same(a, b) -> bool:
    """Solo and loaded answers agree (log-probs to LP_TOL)."""
    if a.get("status") != b.get("status"):
        return False
    if a["status"] != 200:
        return True
    if a["usage"] != b["usage"] or len(a["choices"]) != len(b["choices"]):
        return False
    for x, y in zip(a["choices"], b["choices"]):
        if x["text"] != y["text"] or x["finish_reason"] != y["finish_reason"] or x["tokens"] != y["tokens"]:
            return False
        for p, q in zip(x["lps"], y["lps"]):
            if (p is None) != (q is None) or (p is not None and abs(p - q) > LP_TOL):
                return False
    return True


def rss_kb(pid: int) -> int:
    """Resident set size of a process in kB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


# ---------------------------------------------------------------------------------------- the mix
def request_mix(max_tokens: int, ids: list[int] | None, token_units: bool) -> list[tuple[str, str, dict]]:
    """(name, path, body) of the normal requests."""
    m = max_tokens
    mix = [
        ("greedy", "/v1/completions", {"prompt": "The capital of", "max_tokens": m, "temperature": 0}),
        ("sample-n2", "/v1/completions", {"prompt": "Once upon a time", "max_tokens": m, "temperature": 0.9,
                                          "seed": 5, "n": 2}),
        ("logprobs5", "/v1/completions", {"prompt": "Q: What is 2 + 3?\nA:", "max_tokens": m, "temperature": 0,
                                          "logprobs": 5}),
        ("echo-score", "/v1/completions", {"prompt": "The river rose in 1999 and fell in 2024.", "max_tokens": 0,
                                           "echo": True, "logprobs": 5}),
        ("stream", "/v1/completions", {"prompt": "Hello there", "max_tokens": m, "temperature": 0.7, "seed": 9,
                                       "stream": True, "logprobs": 1}),
        ("weights", "/v1/completions", {"prompt": "The capital of", "max_tokens": m, "temperature": 0,
                                        "weights": [0.9, 0.1], "stop": ["\n"]}),
        ("chat", "/v1/chat/completions", {"messages": [{"role": "user", "content": "Who are you?"}],
                                          "max_tokens": m, "temperature": 0, "logprobs": True, "top_logprobs": 2}),
        ("chat-stream", "/v1/chat/completions", {"messages": [{"role": "user", "content": "Tell me more."}],
                                                 "max_tokens": m, "temperature": 1.0, "seed": 3, "stream": True}),
    ]
    if token_units and ids:
        mix.append(("token-ids", "/v1/completions", {"prompt": ids, "max_tokens": 1, "echo": True, "logprobs": -1,
                                                     "return_tokens_as_token_ids": True, "temperature": 0}))
    return mix


FAULTS = [
    ("bad-json", "/v1/completions", b"{\"prompt\": \"x\", "),
    ("bad-type", "/v1/completions", {"prompt": 12, "max_tokens": "many"}),
    ("unknown-model", "/v1/completions", {"model": "gpt-17", "prompt": "x"}),
    ("too-long", "/v1/completions", {"prompt": "x", "max_tokens": 10**9}),
    ("bad-weights", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "weights": [1, 2, 3]}),
    ("hang-up", "/v1/completions", {"prompt": "Hello", "max_tokens": 32, "stream": True, "temperature": 0}),
]


def send_fault(url: str, name: str, path: str, body) -> int | None:
    """Send one faulty request; returns its status (None for the hang-up, which reads nothing)."""
    if name == "hang-up":
        u = urlsplit(url)
        data = json.dumps(body).encode()
        with socket.create_connection((u.hostname, u.port), timeout=30) as s:
            s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                      % (path.encode(), len(data), data))
            s.recv(64)  # the headers start arriving; then we vanish
        return None
    raw = body if isinstance(body, bytes) else None
    st, _, _ = request(url, "POST", path, None if raw else body, raw=raw)
    return st


# ---------------------------------------------------------------------------------------- phases
def start_server(dirs: list[str], policy: str, threads: int):
    """Start ``logit-swarm serve`` with a batching policy; returns (process, base url, stderr lines)."""
    cmd = [sys.executable, "-m", "logit_swarm.cli", "serve", "--experts", *dirs, "--port", "0", "--quiet",
           "--max-logprobs", "-1", "--threads", str(threads), "--batching", policy]
    print("starting:", " ".join(cmd), file=sys.stderr, flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT))
    stderr_lines: list[str] = []
    threading.Thread(target=lambda: stderr_lines.extend(proc.stderr), daemon=True).start()
    line = proc.stdout.readline()
    if " at http://" not in line:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}\n{''.join(stderr_lines)}")
    print(line.strip(), file=sys.stderr, flush=True)
    return proc, line.split(" at ")[1].split()[0].rsplit("/v1", 1)[0], stderr_lines


def solo_answers(url: str, max_tokens: int):
    """The request mix and every request's answer sent alone."""
    model = json.loads(request(url, "GET", "/v1/models")[1])["data"][0]
    token_units = model["unit"] == "token"
    ids = None
    if token_units:  # a token-id prompt taken from the server's own echo of a text
        st, text, _ = request(url, "POST", "/v1/completions", {"prompt": "The capital of", "max_tokens": 0,
                                                               "echo": True, "logprobs": 0,
                                                               "return_tokens_as_token_ids": True})
        ids = [int(t.split(":")[1]) for t in json.loads(text)["choices"][0]["logprobs"]["tokens"]]
    mix, expected = [], {}
    for name, path, body in request_mix(max_tokens, ids, token_units):
        st, text, ctype = request(url, "POST", path, body)
        if st != 200:
            raise SystemExit(f"solo request {name} failed: {st} {text[:300]}")
        expected[name] = normalise(st, text, ctype)
        mix.append((name, path, body))
    return model, mix, expected


def load_phase(url: str, mix, expected, clients: int, duration: float, fault_rate: float, seed: int) -> dict:
    """``clients`` threads send requests from the mix for ``duration`` s; every answer is checked."""
    lock = threading.Lock()
    rec = {"latency": {}, "status": {}, "mismatch": [], "lost": 0, "units": 0, "faults": {}, "fault_5xx": 0,
           "requests": 0}
    deadline = time.monotonic() + duration

    def client(k: int) -> None:
        rng = random.Random(seed * 1000 + k)
        while time.monotonic() < deadline:
            if rng.random() < fault_rate:
                name, path, body = rng.choice(FAULTS)
                try:
                    st = send_fault(url, name, path, body)
                except OSError as exc:
                    st = f"conn-error: {exc}"
                with lock:
                    rec["faults"][f"{name}:{st}"] = rec["faults"].get(f"{name}:{st}", 0) + 1
                    if isinstance(st, int) and st >= 500:
                        rec["fault_5xx"] += 1
                continue
            name, path, body = rng.choice(mix)
            t = time.perf_counter()
            try:
                st, text, ctype = request(url, "POST", path, body)
            except OSError:
                with lock:
                    rec["lost"] += 1
                continue
            dt = time.perf_counter() - t
            got = normalise(st, text, ctype)
            with lock:
                rec["requests"] += 1
                rec["status"][str(st)] = rec["status"].get(str(st), 0) + 1
                rec["latency"].setdefault(name, []).append(dt)
                if not same(got, expected[name]):
                    rec["mismatch"].append({"request": name, "got": got, "want": expected[name]})
                elif st == 200 and got.get("usage"):
                    rec["units"] += got["usage"]["completion_tokens"]

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rec["wall"] = time.perf_counter() - t0
    return rec


def pct(xs, q):
    """The q-th percentile (nearest rank) of xs."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] if xs else float("nan")


def summarise(rec: dict) -> dict:
    """Throughput, latency percentiles and error counts of one load phase."""
    all_lat = [x for v in rec["latency"].values() for x in v]
    wall = rec["wall"]
    return {
        "requests": rec["requests"], "wall_s": round(wall, 2), "throughput_rps": round(rec["requests"] / wall, 2),
        "generated_units_per_s": round(rec["units"] / wall, 1),
        "latency_s": {"p50": round(pct(all_lat, 50), 4), "p90": round(pct(all_lat, 90), 4),
                      "p99": round(pct(all_lat, 99), 4), "max": round(max(all_lat), 4) if all_lat else None},
        "latency_p50_by_request": {k: round(pct(v, 50), 4) for k, v in sorted(rec["latency"].items())},
        "status": rec["status"], "errors": sum(v for k, v in rec["status"].items() if k != "200") + rec["fault_5xx"],
        "http_5xx": sum(v for k, v in rec["status"].items() if k.startswith("5")) + rec["fault_5xx"],
        "mismatches": len(rec["mismatch"]), "lost": rec["lost"], "faults": rec["faults"],
        "mismatch_examples": rec["mismatch"][:2],
    }


def stop_server(proc) -> int | str:
    """SIGTERM, then the exit code (or a note when it had to be killed)."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return "killed after 60 s"


def experts_for(args, tmp: str) -> list[str]:
    """Expert directories of ``--experts``."""
    if args.experts.startswith("tiny"):
        return tiny_experts(args.experts, Path(tmp))
    return zoo_pair(args.experts, args.zoo)


# ---------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    """Run the load test; returns 0 when there were no errors, mismatches or lost responses."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experts", choices=["tiny", "tiny-byte", "zoo-token", "zoo-byte"], default="tiny",
                    help="tiny random test experts (token or byte units) or a zoo pair (default tiny)")
    ap.add_argument("--zoo", help="zoo directory (default: the cached zoo)")
    ap.add_argument("--clients", type=int, nargs="+", default=[8], help="concurrent clients (default 8; several "
                    "values = one load phase each)")
    ap.add_argument("--batching", nargs="+", default=["continuous"], choices=["continuous", "static", "sequential"],
                    help="server batching policies to compare (default continuous)")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of load per phase (default 30)")
    ap.add_argument("--max-tokens", type=int, default=16, help="max_tokens of the generating requests (default 16)")
    ap.add_argument("--fault-rate", type=float, default=0.1, help="fraction of faulty requests (default 0.1)")
    ap.add_argument("--threads", type=int, default=1, help="server torch threads (default 1)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the clients' choices")
    ap.add_argument("--out", default=str(RESULTS), help="directory for the results")
    ap.add_argument("--name", default="load_test", help="results file stem (default load_test)")
    args = ap.parse_args(argv)

    tmp = tempfile.TemporaryDirectory(prefix="logit_swarm_load_")
    dirs = experts_for(args, tmp.name)
    runs, ok, servers = [], True, {}
    for policy in args.batching:  # all servers up first; phases interleave so machine drift hits all alike
        t0 = time.perf_counter()
        proc, url, _ = start_server(dirs, policy, args.threads)
        startup = time.perf_counter() - t0
        model, mix, expected = solo_answers(url, args.max_tokens)
        servers[policy] = (proc, url, mix, expected, startup, rss_kb(proc.pid))
    for clients in args.clients:
        for policy in args.batching:
            proc, url, mix, expected, startup, _ = servers[policy]
            stats0 = json.loads(request(url, "GET", "/stats")[1])
            r = summarise(load_phase(url, mix, expected, clients, args.duration, args.fault_rate, args.seed))
            stats1 = json.loads(request(url, "GET", "/stats")[1])
            r.update({"policy": policy, "clients": clients, "startup_s": round(startup, 2),
                      "engine": {k: stats1[k] - stats0[k] for k in ("jobs", "steps", "engine_calls", "rows")}
                      | {"max_running_rows": stats1["max_running_rows"]}})
            print(f"{policy:>10} × {clients:>2} clients: {r['throughput_rps']} req/s, p50 {r['latency_s']['p50']} s, "
                  f"p99 {r['latency_s']['p99']} s, errors {r['errors']}, mismatches {r['mismatches']}",
                  file=sys.stderr, flush=True)
            runs.append(r)
            ok = ok and r["http_5xx"] == 0 and r["mismatches"] == 0 and r["lost"] == 0
    for policy, (proc, _, _, _, _, rss_before) in servers.items():
        rss_after = rss_kb(proc.pid)
        alive = proc.poll() is None
        code = stop_server(proc)
        for r in runs:
            if r["policy"] == policy:
                r.update({"rss_mb": [round(rss_before / 1024, 1), round(rss_after / 1024, 1)],
                          "server_alive_after_load": alive, "exit_code_after_sigterm": code})
        ok = ok and alive and code == 0
    tmp.cleanup()
    result = {"experts": args.experts, "expert_dirs": [Path(d).name for d in dirs], "unit": model["unit"],
              "duration_s": args.duration, "max_tokens": args.max_tokens, "fault_rate": args.fault_rate,
              "server_threads": args.threads, "runs": runs,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "platform": platform.platform(), "note": "shared by several jobs; timings are noisy"}}
    md = render_md(result)
    print(md)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{args.name}.md").write_text(md + "\n")
    print(f"wrote {out / (args.name + '.json')} and {out / (args.name + '.md')}", file=sys.stderr)
    return 0 if ok else 1


def render_md(r: dict) -> str:
    """The markdown report: one row per (policy, clients)."""
    out = [f"Experts {r['experts']} ({', '.join(r['expert_dirs'])}; {r['unit']} units), {r['duration_s']:.0f} s per "
           f"phase, max_tokens {r['max_tokens']}, fault rate {r['fault_rate']}, server torch threads "
           f"{r['server_threads']}. Machine: {r['machine']['cpus']} CPUs ({r['machine']['note']}).", "",
           "| batching | clients | requests | req/s | units/s | p50 s | p99 s | errors (non-200) | 5xx | mismatches "
           "| lost | max rows in a step | steps | exit on SIGTERM |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in r["runs"]:
        lat = x["latency_s"]
        out.append(f"| {x['policy']} | {x['clients']} | {x['requests']} | {x['throughput_rps']} | "
                   f"{x['generated_units_per_s']} | {lat['p50']} | {lat['p99']} | {x['errors']} | {x['http_5xx']} | "
                   f"{x['mismatches']} | {x['lost']} | {x['engine']['max_running_rows']} | {x['engine']['steps']} | "
                   f"{x.get('exit_code_after_sigterm')} |")
    faults = {}
    for x in r["runs"]:
        for k, v in x["faults"].items():
            faults[k] = faults.get(k, 0) + v
    if faults:
        out += ["", "Faults injected → status: " + ", ".join(f"{k} ×{v}" for k, v in sorted(faults.items()))]
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
