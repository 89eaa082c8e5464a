"""The OpenAI-compatible server: real HTTP on loopback against tiny experts.

Each server loads its own copies of the experts (the worker thread owns them); reference answers
come from separate ``Ensemble`` objects over the session's experts.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from serve_helpers import call, one_thread, post, serve_experts, sse_events  # noqa: F401 (fixture)

import logit_swarm as ls
from logit_swarm.mixing import mix_reference
from logit_swarm.serve import make_server

TOK_W = [0.6, 0.4]
BYTE_W = [0.5, 0.5]
KEY = "sekret"




@pytest.fixture(scope="module")
def tok_dirs(tiny_dirs, tmp_path_factory):
    """mistral_bl2 and a Llama over the very same tokenizer (it has a chat template).

    (qwen2_bl2 is no partner: transformers gives Qwen2 its own normaliser, so its fingerprint
    differs.)
    """
    from helpers import make_model
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dirs["mistral_bl2"])
    other = make_model("llama", tok, tmp_path_factory.mktemp("serve") / "llama_bl2", seed=11)
    return {"mistral_bl2": tiny_dirs["mistral_bl2"], "llama_bl2": str(other)}


@pytest.fixture(scope="module")
def tok(tok_dirs):
    """Token units: two experts over one tokenizer with a chat template."""
    s = serve_experts(tok_dirs, ["mistral_bl2", "llama_bl2"], weights=TOK_W, model_name="tok", batch_window_ms=40)
    yield s
    s.shutdown()


@pytest.fixture(scope="module")
def byte(tiny_dirs):
    """Byte units: two experts with different tokenizers, both with chat templates."""
    s = serve_experts(tiny_dirs, ["mistral_bl2", "llama_sp"], weights=BYTE_W, model_name="byte")
    yield s
    s.shutdown()


@pytest.fixture(scope="module")
def single(tiny_dirs):
    """One expert without a chat template, behind an API key, no logprobs cap."""
    s = serve_experts(tiny_dirs, ["gpt2_a"], model_name="gpt2_a", api_key=KEY, max_logprobs=-1)
    yield s
    s.shutdown()


@pytest.fixture(scope="module")
def tok_pool(tok_dirs):
    """Reference copies of the token server's experts."""
    return [ls.load_expert(tok_dirs["mistral_bl2"]), ls.load_expert(tok_dirs["llama_bl2"])]


@pytest.fixture(scope="module")
def ref_tok(tok_pool):
    return ls.Ensemble(tok_pool, weights=TOK_W)


@pytest.fixture(scope="module")
def ref_byte(experts):
    return ls.Ensemble([experts["mistral_bl2"], experts["llama_sp"]], weights=BYTE_W)


AUTH = {"Authorization": f"Bearer {KEY}"}


def _mixture_reference(pool, ids, w, mode="probs"):
    """float64 mixture log-probs of the next token after ``ids`` (plain forward passes)."""
    dists = []
    for e in pool:
        with torch.no_grad():
            logits = e.model(torch.tensor([ids])).logits[0, -1, : e.vocab_size].double()
        dists.append(torch.log_softmax(logits, -1).numpy())
    return mix_reference(np.stack(dists), np.asarray(w, dtype=np.float64), mode)


# ------------------------------------------------------------------------------------ basics
def test_models_health_and_routes(tok):
    st, body, _ = call(tok, "GET", "/v1/models")
    assert st == 200 and body["object"] == "list"
    card = body["data"][0]
    assert card["id"] == "tok" and card["object"] == "model" and card["unit"] == "token"
    assert card["weights"] == TOK_W and card["experts"] == ["mistral_bl2", "llama_bl2"]
    assert call(tok, "GET", "/v1/models/tok")[0] == 200
    st, body, _ = call(tok, "GET", "/v1/models/nope")
    assert st == 404 and body["error"]["code"] == "model_not_found"
    assert call(tok, "GET", "/health")[:2] == (200, {"status": "ok"})
    st, body = post(tok, "/completions", {"model": "gpt-4", "prompt": "Hi"})
    assert st == 404 and body["error"]["code"] == "model_not_found" and "tok" in body["error"]["message"]
    assert call(tok, "GET", "/v1/nothing")[0] == 404
    assert call(tok, "DELETE", "/v1/models")[0] == 405


def test_completion_greedy_equals_ensemble(tok, ref_tok):
    prompts = ["Hello world", "The quick brown"]
    st, body = post(tok, "/completions", {"model": "tok", "prompt": prompts, "max_tokens": 8, "temperature": 0})
    assert st == 200, body
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-") and body["model"] == "tok"
    want = ref_tok.generate(prompts, max_new_tokens=8, return_details=True)
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert [c["text"] for c in body["choices"]] == [g.text for g in want]
    assert [c["finish_reason"] for c in body["choices"]] == [g.finish_reason for g in want]
    e = ref_tok.experts[0]
    assert body["usage"] == {"prompt_tokens": sum(len(e.encode(p)) for p in prompts),
                             "completion_tokens": sum(len(g.units) for g in want),
                             "total_tokens": sum(len(e.encode(p)) for p in prompts) + sum(len(g.units) for g in want),
                             "unit": "tokens of mistral_bl2's tokenizer"}


def test_completion_logprobs_are_the_mixture(tok, ref_tok):
    st, body = post(tok, "/completions", {"prompt": "Hello world", "max_tokens": 4, "temperature": 0, "logprobs": 3})
    assert st == 200, body
    lp = body["choices"][0]["logprobs"]
    want = ref_tok.generate(["Hello world"], max_new_tokens=4, return_details=True)[0]
    np.testing.assert_allclose(lp["token_logprobs"], want.logprobs, atol=1e-5)
    assert len(lp["tokens"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) == len(want.units)
    # First step against a float64 mixture of plain forward passes.
    ids = ref_tok.experts[0].encode("Hello world")
    ref = _mixture_reference(ref_tok.experts, ids, TOK_W)
    top = lp["top_logprobs"][0]
    vals = list(top.values())
    assert vals == sorted(vals, reverse=True) and len(top) <= 4
    best = np.argsort(-ref)[:3]
    np.testing.assert_allclose(vals[:3], ref[best], atol=1e-4)
    assert math.isclose(lp["token_logprobs"][0], ref.max(), abs_tol=1e-4)  # greedy = argmax
    # text_offset indexes into the returned text: the length of the text of the units before.
    dec = ref_tok.experts[0].tokenizer
    assert lp["text_offset"] == [len(dec.decode(want.units[:i], skip_special_tokens=True))
                                 for i in range(len(want.units))]


def test_echo_scores_equal_ensemble_logprob(tok, ref_tok):
    ctx, cont = "The quick brown", " fox jumps over"
    e = ref_tok.experts[0]
    n_ctx = len(e.encode(ctx))
    assert e.encode(ctx + cont)[:n_ctx] == e.encode(ctx)  # the boundary falls between tokens
    st, body = post(tok, "/completions", {"prompt": ctx + cont, "max_tokens": 0, "echo": True, "logprobs": 2})
    assert st == 200, body
    ch = body["choices"][0]
    assert ch["text"] == ctx + cont and ch["finish_reason"] == "length"
    lp = ch["logprobs"]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert len(lp["tokens"]) == len(e.encode(ctx + cont))
    assert "".join(lp["tokens"]) == ctx + cont
    got = sum(lp["token_logprobs"][n_ctx:])
    assert abs(got - ref_tok.logprob([ctx], [cont])[0]) < 1e-4
    assert body["usage"]["completion_tokens"] == 0


def test_echo_with_generation_and_full_distribution(single):
    # max_tokens 1 + logprobs -1: the whole next-token distribution after the prompt.
    st, body = post(single, "/completions", {"prompt": "Hello world", "max_tokens": 1, "echo": True,
                                             "logprobs": -1, "temperature": 0, "return_tokens_as_token_ids": True},
                    headers=AUTH)
    assert st == 200, body
    lp = body["choices"][0]["logprobs"]
    n_prompt = body["usage"]["prompt_tokens"]
    assert len(lp["tokens"]) == n_prompt + 1
    last = lp["top_logprobs"][-1]
    assert len(last) == 400  # every token of the vocabulary
    assert abs(sum(math.exp(v) for v in last.values()) - 1) < 1e-4
    assert all(k.startswith("token_id:") for k in last)
    assert body["choices"][0]["text"].startswith("Hello world")


def test_token_id_prompts(tok, ref_tok):
    e = ref_tok.experts[0]
    ids = e.encode("Hello world")
    base = {"max_tokens": 5, "temperature": 0, "logprobs": 1}
    st, by_text = post(tok, "/completions", {"prompt": "Hello world", **base})
    st2, by_ids = post(tok, "/completions", {"prompt": ids, **base})
    st3, by_lists = post(tok, "/completions", {"prompt": [ids, ids[:1]], **base, "return_tokens_as_token_ids": True})
    assert st == st2 == st3 == 200
    assert by_ids["choices"][0]["text"] == by_text["choices"][0]["text"]
    assert by_ids["choices"][0]["logprobs"]["token_logprobs"] == pytest.approx(
        by_text["choices"][0]["logprobs"]["token_logprobs"], abs=1e-5)
    c0 = by_lists["choices"][0]
    assert c0["text"] == by_text["choices"][0]["text"]
    unit_ids = [int(t.split(":")[1]) for t in c0["logprobs"]["tokens"]]
    assert e.tokenizer.decode(unit_ids, skip_special_tokens=True) == c0["text"]
    assert all(k.startswith("token_id:") for d in c0["logprobs"]["top_logprobs"] for k in d)
    assert by_lists["choices"][1]["text"] == ref_tok.generate([ids[:1]], max_new_tokens=5)[0]
    st, body = post(tok, "/completions", {"prompt": [5, 10**6]})
    assert st == 400 and "vocabulary" in body["error"]["message"]


def test_weights_override_and_mode(tok, tok_pool):
    pool = tok_pool
    for w, mode in (([1.0, 0.0], "probs"), ([1.2, -0.3], "logits")):
        st, body = post(tok, "/completions", {"prompt": "Hello", "max_tokens": 6, "temperature": 0,
                                              "weights": w, "mode": mode, "logprobs": 0})
        assert st == 200, body
        want = ls.Ensemble(pool, weights=w, mode=mode).generate(["Hello"], max_new_tokens=6, return_details=True)[0]
        assert body["choices"][0]["text"] == want.text
        np.testing.assert_allclose(body["choices"][0]["logprobs"]["token_logprobs"], want.logprobs, atol=1e-5)


def test_seed_and_n(tok, ref_tok):
    req = {"prompt": "Hello", "max_tokens": 8, "temperature": 1.0, "seed": 7, "n": 3}
    a = post(tok, "/completions", req)[1]
    b = post(tok, "/completions", req)[1]
    want = ref_tok.generate(["Hello"] * 3, max_new_tokens=8, temperature=1.0, seed=7)
    assert [c["text"] for c in a["choices"]] == [c["text"] for c in b["choices"]] == want
    c = post(tok, "/completions", {**req, "seed": 8})[1]
    assert [x["text"] for x in c["choices"]] != want
    assert [x["index"] for x in a["choices"]] == [0, 1, 2]


def test_stop_strings(tok, ref_tok):
    full = ref_tok.generate(["Hello"], max_new_tokens=12)[0]
    assert len(full) > 4
    stop = full[2:4]
    st, body = post(tok, "/completions", {"prompt": "Hello", "max_tokens": 12, "temperature": 0, "stop": stop})
    assert st == 200
    assert body["choices"][0]["text"] == full[: full.find(stop)]
    assert body["choices"][0]["finish_reason"] == "stop"
    # Streamed text never shows the stop string either.
    st, text, _ = call(tok, "POST", "/v1/completions", {"prompt": "Hello", "max_tokens": 12, "temperature": 0,
                                                         "stop": [stop, "zzz"], "stream": True})
    chunks = [e for e in sse_events(text) if e != "[DONE]"]
    assert "".join(c["choices"][0]["text"] for c in chunks) == full[: full.find(stop)]


def test_streaming_completion_equals_plain(tok):
    req = {"prompt": ["Hello world", "café"], "max_tokens": 6, "temperature": 0.8, "seed": 3, "logprobs": 2, "n": 2}
    st, plain = post(tok, "/completions", req)
    assert st == 200
    st, text, headers = call(tok, "POST", "/v1/completions", {**req, "stream": True,
                                                              "stream_options": {"include_usage": True}})
    assert st == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]
    for want in plain["choices"]:
        mine = [c["choices"][0] for c in chunks[:-1] if c["choices"][0]["index"] == want["index"]]
        assert "".join(c["text"] for c in mine) == want["text"]
        assert mine[-1]["finish_reason"] == want["finish_reason"]
        toks, lps, offs = [], [], []
        for c in mine:
            if c["logprobs"]:
                toks += c["logprobs"]["tokens"]
                lps += c["logprobs"]["token_logprobs"]
                offs += c["logprobs"]["text_offset"]
        assert toks == want["logprobs"]["tokens"]
        assert lps == pytest.approx(want["logprobs"]["token_logprobs"], abs=1e-5)
        assert offs == want["logprobs"]["text_offset"]


def test_chat_token_units(tok, ref_tok):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    st, body = post(tok, "/chat/completions", {"model": "tok", "messages": msgs, "max_tokens": 6, "temperature": 0,
                                                "logprobs": True, "top_logprobs": 2})
    assert st == 200, body
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    plain = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    want = ref_tok.generate([plain], max_new_tokens=6, return_details=True)[0]
    ch = body["choices"][0]
    assert ch["message"] == {"role": "assistant", "content": want.text}
    content = ch["logprobs"]["content"]
    assert [c["logprob"] for c in content] == pytest.approx(want.logprobs, abs=1e-5)
    table = ref_tok.experts[0].vocab_bytes.token_bytes
    for c, u in zip(content, want.units):
        assert len(c["top_logprobs"]) == 2
        assert c["bytes"] == (list(table[u]) if table[u] is not None else None)
    assert body["usage"]["prompt_tokens"] == len(ref_tok.experts[0].render_chat(plain))
    # Streaming chat: role first, then content deltas, then finish_reason.
    st, text, _ = call(tok, "POST", "/v1/chat/completions", {"messages": plain, "max_tokens": 6, "temperature": 0,
                                                              "stream": True})
    chunks = [e for e in sse_events(text) if e != "[DONE]"]
    assert chunks[0]["object"] == "chat.completion.chunk"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == want.text
    assert chunks[-1]["choices"][0]["finish_reason"] == want.finish_reason


def test_byte_units(byte, ref_byte):
    st, body = post(byte, "/completions", {"prompt": "Hello", "max_tokens": 6, "temperature": 0, "logprobs": 2,
                                           "return_tokens_as_token_ids": True})
    assert st == 200, body
    want = ref_byte.generate(["Hello"], max_new_tokens=6, budget_unit="units", return_details=True)[0]
    ch = body["choices"][0]
    assert ch["text"] == want.text
    assert ch["logprobs"]["tokens"] == [f"token_id:{u}" for u in want.units]
    assert ch["logprobs"]["token_logprobs"] == pytest.approx(want.logprobs, abs=1e-5)
    assert body["usage"]["prompt_tokens"] == 5
    # Chat: each expert renders with its own template; bytes fields are single bytes.
    msgs = [{"role": "user", "content": "Hi"}]
    st, body = post(byte, "/chat/completions", {"messages": msgs, "max_tokens": 4, "temperature": 0,
                                                "logprobs": True, "top_logprobs": 1})
    assert st == 200, body
    want = ref_byte.generate([msgs], max_new_tokens=4, budget_unit="units", return_details=True)[0]
    assert body["choices"][0]["message"]["content"] == want.text
    for c, u in zip(body["choices"][0]["logprobs"]["content"], want.units):
        assert c["bytes"] == ([u] if u < 256 else None)
    # Token ids of byte units are the byte tokenizer's: byte values, 256 (STOP) only first.
    by_text = post(byte, "/completions", {"prompt": "Hi", "max_tokens": 3, "temperature": 0})[1]
    st, by_ids = post(byte, "/completions", {"prompt": [256, 72, 105], "max_tokens": 3, "temperature": 0})
    assert st == 200 and by_ids["choices"][0]["text"] == by_text["choices"][0]["text"]
    st, body = post(byte, "/completions", {"prompt": [72, 256]})
    assert st == 400 and "only be the first" in body["error"]["message"]
    st, body = post(byte, "/completions", {"prompt": [0xFF, 72]})
    assert st == 400 and "UTF-8" in body["error"]["message"]
    # The byte tokenizer is served as tokenizer files.
    st, body, _ = call(byte, "GET", "/v1/models/byte/tokenizer")
    assert st == 200 and body["unit"] == "byte" and body["vocab_size"] == 257 and "tokenizer.json" in body["files"]


def test_byte_echo_equals_table(byte, ref_byte):
    prompt = "Hi café"
    st, body = post(byte, "/completions", {"prompt": prompt, "max_tokens": 0, "echo": True, "logprobs": 1})
    assert st == 200, body
    lp = body["choices"][0]["logprobs"]
    units = list(prompt.encode())
    assert len(lp["tokens"]) == len(units) and lp["token_logprobs"][0] is None
    assert lp["tokens"][:2] == ["H", "i"] and lp["tokens"][3] == "c" and lp["tokens"][-1] == "bytes:\\xa9"
    table = ref_byte.table([""], [prompt])
    want = table.unit_scores(np.array([BYTE_W]), "probs")[0]
    np.testing.assert_allclose(lp["token_logprobs"][1:], want[1:], atol=1e-5)


# ------------------------------------------------------------------------------------ batching
def test_generate_rows_per_row_settings_equal_separate_calls(tok_pool):
    """decode.generate_rows with per-row settings = one call per row; on_step sees every unit."""
    from logit_swarm.decode import generate_rows

    ens = ls.Ensemble(tok_pool, weights=TOK_W)
    rows = [("Hello world", 5, 0.0, 1.0, None, (0, 0)), ("Hello world", 7, 1.0, 0.9, ["e"], (3, 1)),
            ("café", 3, 0.5, 1.0, None, (4, 0)), ("x", 0, 0.0, 1.0, None, (0, 0))]
    W = np.array([[0.6, 0.4], [0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
    seen: dict[int, list] = {}
    finished = []

    def on_step(step):
        assert step.dists.shape == (len(step.rows), tok_pool[0].vocab_size)
        for r, u, lp in zip(step.rows, step.units, step.logprobs):
            seen.setdefault(r, []).append((u, lp))
        finished.extend(step.finished)

    outs = generate_rows(ens.experts, ens.unit, [r[0] for r in rows], W, "probs", [r[1] for r in rows],
                         [r[2] for r in rows], [r[3] for r in rows], [r[5] for r in rows], [r[4] for r in rows],
                         on_step=on_step)
    for i, (p, m, t, tp, stop, (seed, stream)) in enumerate(rows):
        # Row i alone: same seed stream as a lone call's row `stream` (pad with dummy rows before it).
        alone = ls.Ensemble(tok_pool, weights=W[i]).generate([p] * (stream + 1), max_new_tokens=m, temperature=t,
                                                             top_p=tp, seed=seed, stop=stop, return_details=True)
        want = alone[stream]
        assert outs[i].text == want.text and outs[i].units == want.units
        np.testing.assert_allclose(outs[i].logprobs, want.logprobs, atol=1e-5)
        assert [u for u, _ in seen.get(i, [])] == outs[i].units
    assert sorted(finished) == [0, 1, 2]  # row 3 (max_new_tokens 0) never steps


def test_concurrent_requests_are_batched_and_invariant(tok):
    reqs = [
        {"prompt": "Hello world", "max_tokens": 6, "temperature": 0},
        {"prompt": "The quick brown", "max_tokens": 4, "temperature": 0, "logprobs": 2},
        {"prompt": "Hello world", "max_tokens": 7, "temperature": 1.0, "seed": 1, "n": 2},
        {"prompt": "café", "max_tokens": 5, "temperature": 0.7, "top_p": 0.9, "seed": 2},
        {"prompt": "Hello", "max_tokens": 5, "temperature": 0, "weights": [0.1, 0.9]},
        {"prompt": "Numbers: 1 2", "max_tokens": 6, "temperature": 0, "stop": ["3"], "mode": "logits",
         "weights": [1.0, 0.5]},
        {"prompt": "def add", "max_tokens": 3, "echo": True, "logprobs": 1, "temperature": 0},
        {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "temperature": 0},
    ]

    def send(r):
        return post(tok, "/chat/completions" if "messages" in r else "/completions", r)

    before = dict(tok.batcher.stats)
    results = [None] * len(reqs)
    gate = threading.Barrier(len(reqs))

    def worker(i):
        gate.wait()
        results[i] = send(reqs[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(reqs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = dict(tok.batcher.stats)
    calls = after["engine_calls"] - before["engine_calls"]
    assert after["jobs"] - before["jobs"] == len(reqs)
    assert calls < len(reqs), (before, after)  # requests that came together shared engine calls
    for r, (st, body) in zip(reqs, results):
        assert st == 200, body
        st2, alone = send(r)  # the same request on its own
        assert st2 == 200
        for c, a in zip(body["choices"], alone["choices"]):
            assert c.get("text", c.get("message")) == a.get("text", a.get("message"))
            assert c["finish_reason"] == a["finish_reason"]
            if c["logprobs"]:
                assert c["logprobs"]["tokens"] == a["logprobs"]["tokens"]
                np.testing.assert_allclose([x for x in c["logprobs"]["token_logprobs"] if x is not None],
                                           [x for x in a["logprobs"]["token_logprobs"] if x is not None], atol=1e-5)


# ------------------------------------------------------------------------------------ robustness
BAD = [
    ({"prompt": 5}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": "x", "max_tokens": "5"}, "max_tokens"),
    ({"prompt": "x", "max_tokens": -1}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 10**12}, "max_tokens"),
    ({"prompt": "x", "temperature": -1}, "temperature"),
    ({"prompt": "x", "temperature": "hot"}, "temperature"),
    ({"prompt": "x", "top_p": 0}, "top_p"),
    ({"prompt": "x", "n": 0}, "n"),
    ({"prompt": "x", "n": 1000}, "n"),
    ({"prompt": "x", "stop": [1]}, "stop"),
    ({"prompt": "x", "logprobs": 21}, "logprobs"),
    ({"prompt": "x", "logprobs": -1}, "logprobs"),
    ({"prompt": "x", "logprobs": True}, "logprobs"),
    ({"prompt": "x", "weights": [1.0]}, "weights"),
    ({"prompt": "x", "weights": [0.0, -1.0]}, "weights"),
    ({"prompt": "x", "mode": "avg"}, "mode"),
    ({"prompt": "x", "seed": 1.5}, "seed"),
    ({"prompt": "x", "stream": "yes"}, "stream"),
    ({"prompt": "x", "logit_bias": {"5": 10}}, "logit_bias"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    # a prompt longer than the window is served with left truncation by default (issue 11): tests/test_windows.py
]


@pytest.mark.parametrize("body,param", BAD, ids=[p for _, p in BAD])
def test_bad_completion_requests_are_400(tok, body, param):
    st, resp = post(tok, "/completions", body)
    assert st == 400, resp
    err = resp["error"]
    assert err["type"] == "invalid_request_error" and err["message"]
    assert err["param"] == param
    assert set(err) == {"message", "type", "param", "code"}


def test_logprobs_cap_message_names_the_cap(tok):
    st, resp = post(tok, "/completions", {"prompt": "x", "logprobs": 50})
    assert st == 400 and "20" in resp["error"]["message"] and "--max-logprobs" in resp["error"]["message"]
    st, resp = post(tok, "/chat/completions", {"messages": [{"role": "user", "content": "x"}], "logprobs": True,
                                               "top_logprobs": 21})
    assert st == 400 and resp["error"]["param"] == "top_logprobs"


def test_malformed_bodies_and_server_survives(tok):
    for raw in (b"{not json", b"\xff\xfe", b"[1, 2]", b'"text"', b"[" * 100000):
        st, resp, _ = call(tok, "POST", "/v1/completions", raw=raw, headers={"Content-Type": "application/json"})
        assert st == 400, (raw[:10], resp)
    st, resp = post(tok, "/chat/completions", {"messages": "hi"})
    assert st == 400 and resp["error"]["param"] == "messages"
    st, resp = post(tok, "/chat/completions", {"messages": [{"role": "user", "content": "x"}], "tools": [{"a": 1}]})
    assert st == 400 and resp["error"]["code"] == "unsupported_parameter"
    st, resp = post(tok, "/chat/completions", {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2})
    assert st == 400 and "logprobs" in resp["error"]["message"]
    # No Content-Length: 411, and the connection is closed rather than left out of sync.
    import socket

    with socket.create_connection((tok.host, tok.port), timeout=10) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        assert b" 411 " in s.recv(65536).split(b"\r\n")[0] + b" "
    # A client that hangs up mid-stream does not hurt the server.
    with socket.create_connection((tok.host, tok.port), timeout=10) as s:
        body = json.dumps({"prompt": "Hello", "max_tokens": 20, "stream": True, "temperature": 0}).encode()
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        s.recv(10)
    st, resp = post(tok, "/completions", {"prompt": "Hello", "max_tokens": 2, "temperature": 0})
    assert st == 200 and tok.batcher.alive


def test_internal_error_is_500_and_server_keeps_running(tok, monkeypatch):
    from logit_swarm.serve.engine import StepDecoder

    def broken(*a, **k):
        raise RuntimeError("simulated engine failure")

    monkeypatch.setattr(StepDecoder, "step", broken)
    st, resp = post(tok, "/completions", {"prompt": "Hello", "max_tokens": 2})
    assert st == 500 and "simulated engine failure" in resp["error"]["message"]
    assert resp["error"]["type"] == "server_error"
    monkeypatch.undo()
    st, resp = post(tok, "/completions", {"prompt": "Hello", "max_tokens": 2})
    assert st == 200 and tok.batcher.alive


def test_api_key_and_default_chat_template(single, tiny_dirs):
    body = {"prompt": "Hello", "max_tokens": 2}
    assert post(single, "/completions", body)[0] == 401
    st, resp = post(single, "/completions", body, headers={"Authorization": "Bearer wrong"})
    assert st == 401 and resp["error"]["code"] == "invalid_api_key"
    assert call(single, "GET", "/v1/models")[0] == 401
    assert call(single, "GET", "/health")[0] == 200
    assert post(single, "/completions", body, headers=AUTH)[0] == 200
    # gpt2_a has no chat template: the documented default transcript template renders the messages.
    from logit_swarm.serve.chat import DEFAULT_CHAT_TEMPLATE, ChatRenderer

    msgs = [{"role": "user", "content": "hi"}]
    st, resp = post(single, "/chat/completions", {"messages": msgs, "max_tokens": 5, "temperature": 0}, headers=AUTH)
    assert st == 200, resp
    e = ls.load_expert(tiny_dirs["gpt2_a"])
    r = ChatRenderer([e])
    assert r.source == DEFAULT_CHAT_TEMPLATE and r.fallback == ["gpt2_a"] and "no chat template" in r.warning()
    text = r.text(e, msgs)
    assert text == "user: hi\nassistant:"
    want = ls.Ensemble([e]).generate([text], max_new_tokens=5)[0]
    assert resp["choices"][0]["message"]["content"] == want


def test_tokenizer_endpoint(single, tok, tmp_path):
    from transformers import AutoTokenizer

    from logit_swarm.align.vocab import tokenizer_fingerprint

    st, body, _ = call(single, "GET", "/v1/models/gpt2_a/tokenizer", headers=AUTH)
    assert st == 200 and "tokenizer.json" in body["files"]
    assert body["vocab_size"] == 400 and body["stop_ids"] == [0] and body["context_window"] == 512
    for name, text in body["files"].items():
        (tmp_path / name).write_text(text)
    back = AutoTokenizer.from_pretrained(str(tmp_path))
    assert tokenizer_fingerprint(back) == body["fingerprint"]
    assert call(single, "GET", "/v1/models/other/tokenizer", headers=AUTH)[0] == 404
    st, body, _ = call(tok, "GET", "/v1/models/tok/tokenizer")  # two experts, one tokenizer
    assert st == 200 and body["experts"] == ["mistral_bl2", "llama_bl2"]


def test_shutdown_answers_requests_in_flight(tiny_dirs):
    s = serve_experts(tiny_dirs, ["gpt2_a"], batch_window_ms=0)
    out = {}

    def slow():
        out["r"] = post(s, "/completions", {"prompt": "Hello", "max_tokens": 40, "temperature": 0})

    t = threading.Thread(target=slow)
    t.start()
    while s.batcher.stats["jobs"] == 0:  # the request has reached the worker
        threading.Event().wait(0.005)
    s.shutdown()
    t.join(30)
    assert out["r"][0] == 200 and out["r"][1]["usage"]["completion_tokens"] >= 1
    with pytest.raises(OSError):
        post(s, "/completions", {"prompt": "Hello"})


# ------------------------------------------------------------------------------------ command line
def test_cli_argument_errors(tiny_dirs, capsys):
    from logit_swarm.cli import main

    assert main(["serve", "--experts", tiny_dirs["gpt2_a"], "--weights", "1", "2"]) == 2
    assert "one per expert" in capsys.readouterr().err
    assert main(["serve", "--recipe", "nope.json", "--weights", "1"]) == 2


def test_cli_serve_prints_address_and_stops_on_sigterm(tiny_dirs):
    import signal
    import urllib.request

    proc = subprocess.Popen(
        [sys.executable, "-m", "logit_swarm.cli", "serve", "--experts", tiny_dirs["gpt2_a"], "--port", "0",
         "--quiet", "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(Path(__file__).parents[1]),
    )
    try:
        line = proc.stdout.readline()
        assert "http://127.0.0.1:" in line, line + proc.stderr.read()
        url = line.split(" at ")[1].split()[0]
        with urllib.request.urlopen(url + "/models", timeout=30) as r:
            assert json.loads(r.read())["data"][0]["id"] == "gpt2_a"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert "stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


# ------------------------------------------------------------------------------------ openai client
@pytest.fixture(scope="module")
def client(tok):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=tok.url, api_key="unused", max_retries=0, timeout=60)


def test_openai_client_completions(client, ref_tok):
    r = client.completions.create(model="tok", prompt="Hello world", max_tokens=5, temperature=0, logprobs=2,
                                  extra_body={"weights": [0.3, 0.7]})
    want = ls.Ensemble(ref_tok.experts, weights=[0.3, 0.7]).generate(["Hello world"], max_new_tokens=5,
                                                                      return_details=True)[0]
    assert r.choices[0].text == want.text
    assert r.choices[0].logprobs.token_logprobs == pytest.approx(want.logprobs, abs=1e-5)
    assert all(len(d) <= 3 for d in r.choices[0].logprobs.top_logprobs)
    assert r.usage.completion_tokens == len(want.units)
    echo = client.completions.create(model="tok", prompt="Hello world", max_tokens=0, echo=True, logprobs=0)
    assert echo.choices[0].text == "Hello world" and echo.choices[0].logprobs.token_logprobs[0] is None
    stream = client.completions.create(model="tok", prompt="Hello world", max_tokens=5, temperature=0, stream=True,
                                       extra_body={"weights": [0.3, 0.7]})
    assert "".join(c.choices[0].text for c in stream if c.choices) == want.text


def test_openai_client_chat_and_errors(client, ref_tok):
    import openai

    msgs = [{"role": "user", "content": "Hi"}]
    r = client.chat.completions.create(model="tok", messages=msgs, max_tokens=5, temperature=0, logprobs=True,
                                       top_logprobs=3, seed=1)
    want = ref_tok.generate([msgs], max_new_tokens=5, return_details=True)[0]
    assert r.choices[0].message.content == want.text and r.choices[0].message.role == "assistant"
    content = r.choices[0].logprobs.content
    assert [c.logprob for c in content] == pytest.approx(want.logprobs, abs=1e-5)
    assert all(len(c.top_logprobs) == 3 for c in content)
    stream = client.chat.completions.create(model="tok", messages=msgs, max_tokens=5, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want.text
    assert chunks[-1].usage.completion_tokens == len(want.units)
    assert [m.id for m in client.models.list()] == ["tok"]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x", max_tokens=1)
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model="tok", prompt="x", max_tokens=1, logprobs=99)
    assert "cap of 20" in str(exc.value)


# ---------------------------------------------------------------------------------- review fixes
def test_lone_surrogates_and_huge_numbers_are_400_and_leak_nothing(tiny_dirs):
    """JSON allows "\\ud800"; such strings and numbers beyond float range are refused up front,
    and nothing a failed request touched stays in the expert's KV store."""
    e = ls.load_expert(tiny_dirs["gpt2_a"])
    s = make_server(ls.Ensemble([e]), port=0, model_name="m").start()
    try:
        raw = b'{"prompt": "hello", "max_tokens": 3, "stop": "\\ud800", "n": 2, "temperature": 1}'
        status, body, _ = call(s, "POST", "/v1/completions", raw=raw, headers={"Content-Type": "application/json"})
        assert status == 400 and "surrogate" in body["error"]["message"]
        raw = b'{"prompt": "hello", "temperature": 1' + b"0" * 400 + b"}"
        status, body, _ = call(s, "POST", "/v1/completions", raw=raw, headers={"Content-Type": "application/json"})
        assert status == 400 and body["error"]["param"] == "temperature"
        assert post(s, "/completions", {"prompt": "ok", "max_tokens": 2})[0] == 200
        assert len(e.store) == 0
    finally:
        s.shutdown()


def test_failed_decode_releases_every_state(experts):
    """generate_rows releases what it holds when it raises midway (here: a stop check)."""
    e = experts["gpt2_a"]
    before = len(e.store)
    with pytest.raises(UnicodeEncodeError):
        ls.Ensemble([e]).generate(["hello", "world"], max_new_tokens=4, stop=["\ud800"])
    assert len(e.store) == before


def test_streamed_request_the_engine_rejects_gets_its_4xx(tok):
    body = {"prompt": "Hello", "max_tokens": 100000, "stream": True}
    status, data, headers = call(tok, "POST", "/v1/completions", body)
    assert status == 400 and "does not fit" in data["error"]["message"]


def test_get_with_a_body_closes_the_connection(single):
    """A body on a GET is not read, so it must not be parsed as a second request."""
    import socket
    import time

    inner = b"GET /stats HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n\r\n"
    outer = b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(inner) + inner
    with socket.create_connection((single.host, single.port), timeout=5) as sock:
        sock.sendall(outer)
        data, deadline = b"", time.time() + 5
        while time.time() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:  # a keep-alive connection that stays open: all answers are in
                break
            if not chunk:
                break
            data += chunk
    assert data.count(b"HTTP/1.1 ") == 1
