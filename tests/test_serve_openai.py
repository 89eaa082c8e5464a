"""The ASGI server's OpenAI conventions, continuous batching, cancellation, queue bound, metrics,
tokenizer endpoints and schema: real HTTP on loopback against tiny experts."""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from serve_helpers import call, one_thread, post, serve_experts, sse_events  # noqa: F401 (fixture)

import logit_swarm as ls

pytest.importorskip("fastapi", reason="the server needs the 'serve' extra (fastapi, uvicorn, prometheus-client)")
from logit_swarm.serve import make_server  # noqa: E402
from logit_swarm.serve import schema as S  # noqa: E402

STORIES = Path(__file__).resolve().parents[1].parent / "shared" / "models" / "stories260K"


@pytest.fixture(scope="module")
def sp():
    """stories260K: a real SentencePiece Llama (token units; its words start with '▁')."""
    if not (STORIES / "config.json").exists():
        pytest.skip(f"{STORIES} is absent (the shared models sit beside the checkout)")
    s = make_server(ls.Ensemble([ls.load_expert(str(STORIES))]), port=0, model_name="sp", max_logprobs=-1).start()
    yield s
    s.shutdown()


@pytest.fixture(scope="module")
def pair(tiny_dirs):
    """Two experts over one byte-level tokenizer (token units), small batches."""
    s = serve_experts(tiny_dirs, ["gpt2_a", "gpt2_b"], model_name="pair", weights=[0.7, 0.3], max_batch_rows=8)
    yield s
    s.shutdown()


@pytest.fixture(scope="module")
def bytes_srv(tiny_dirs):
    s = serve_experts(tiny_dirs, ["gpt2_a", "llama_sp"], model_name="mix")
    yield s
    s.shutdown()


def _leading_space_prompt(sp_srv, tok):
    """A prompt whose first greedy token starts with the SentencePiece space."""
    for p in ("Once upon a time", "Lily saw a", "The dog was"):
        st, body = post(sp_srv, "/completions", {"prompt": p, "max_tokens": 6, "temperature": 0, "logprobs": 0,
                                                 "return_tokens_as_token_ids": True})
        assert st == 200, body
        ids = [int(t.split(":")[1]) for t in body["choices"][0]["logprobs"]["tokens"]]
        if tok.convert_ids_to_tokens(ids[0]).startswith("▁"):
            return p, body, ids
    raise AssertionError("stories260K continues none of the probe prompts with a '▁' word")


# ------------------------------------------------------------------------------ OpenAI conventions
def test_completion_keeps_the_leading_space_and_prompt_plus_text_decodes_whole(sp):
    e = sp.ensemble.experts[0]
    tok = e.tokenizer
    p, body, ids = _leading_space_prompt(sp, tok)
    text = body["choices"][0]["text"]
    prompt_ids = e.encode(p)
    assert text.startswith(" ")  # ' Word', not 'Word'
    kept = [u for u in ids if u not in e.stop_ids]
    whole = tok.decode(prompt_ids + kept, skip_special_tokens=True)
    assert tok.decode(prompt_ids, skip_special_tokens=True) + text == whole
    # Echo joins the same way: prompt + completion is the whole decoded text.
    st, echo = post(sp, "/completions", {"prompt": p, "max_tokens": 6, "temperature": 0, "echo": True})
    assert st == 200 and echo["choices"][0]["text"] == p + text


def test_stop_string_starting_with_the_leading_space_matches(sp):
    e = sp.ensemble.experts[0]
    p, body, _ = _leading_space_prompt(sp, e.tokenizer)
    text = body["choices"][0]["text"]
    stop = text[:2]  # ' X': only matches if the space is part of the completion text
    st, cut = post(sp, "/completions", {"prompt": p, "max_tokens": 6, "temperature": 0, "stop": stop})
    assert st == 200 and cut["choices"][0]["text"] == "" and cut["choices"][0]["finish_reason"] == "stop"
    st, txt, _ = call(sp, "POST", "/v1/completions", {"prompt": p, "max_tokens": 6, "temperature": 0,
                                                       "stop": [stop], "stream": True})
    chunks = [c for c in sse_events(txt) if c != "[DONE]"]
    assert "".join(c["choices"][0]["text"] for c in chunks) == ""
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_text_offset_indexes_into_the_returned_text(sp):
    e = sp.ensemble.experts[0]
    p, _, _ = _leading_space_prompt(sp, e.tokenizer)
    for stream in (False, True):
        req = {"prompt": p, "max_tokens": 6, "temperature": 0, "echo": True, "logprobs": 1, "stream": stream}
        if stream:
            st, txt, _ = call(sp, "POST", "/v1/completions", req)
            chunks = [c["choices"][0] for c in sse_events(txt) if c != "[DONE]"]
            text = "".join(c["text"] for c in chunks)
            offs, units = [], []
            for c in chunks:
                if c["logprobs"]:
                    offs += c["logprobs"]["text_offset"]
                    units += c["logprobs"]["tokens"]
        else:
            st, body = post(sp, "/completions", req)
            lp = body["choices"][0]["logprobs"]
            text, offs, units = body["choices"][0]["text"], lp["text_offset"], lp["tokens"]
        assert st == 200
        assert units[0] == e.tokenizer.bos_token and offs[0] == 0 and offs[1] == 0  # <s> has no text
        assert offs == sorted(offs) and all(0 <= o <= len(text) for o in offs)
        # each unit's text is where its offset says: the text between offsets rebuilds the whole
        pieces = [text[a:b] for a, b in zip(offs, offs[1:] + [len(text)])]
        assert "".join(pieces) == text and text.startswith(p)


def test_empty_prompts_are_400(pair):
    for prompt in ("", ["a", ""]):
        st, body = post(pair, "/completions", {"prompt": prompt, "max_tokens": 2})
        assert st == 400 and body["error"]["param"] == "prompt" and "empty" in body["error"]["message"]


def test_usage_states_its_unit(pair, bytes_srv):
    st, body = post(pair, "/completions", {"prompt": "Hi", "max_tokens": 2, "temperature": 0})
    assert st == 200 and body["usage"]["unit"] == "tokens of gpt2_a's tokenizer"
    st, body = post(bytes_srv, "/completions", {"prompt": "Hé", "max_tokens": 2, "temperature": 0})
    assert st == 200 and body["usage"]["unit"] == "bytes" and body["usage"]["prompt_tokens"] == 3


def test_expert_logprobs_mix_to_the_mixture(pair):
    st, body = post(pair, "/completions", {"prompt": "Hello", "max_tokens": 5, "temperature": 0, "logprobs": 0,
                                           "return_expert_logprobs": True})
    assert st == 200
    ch = body["choices"][0]
    w = np.array([0.7, 0.3])
    for lp, per in zip(ch["logprobs"]["token_logprobs"], ch["expert_logprobs"]):
        assert len(per) == 2
        assert math.isclose(math.log(float(np.exp(per) @ w)), lp, abs_tol=1e-5)


# ------------------------------------------------------------------------------ batching
def _stream_until_first(srv, body):
    """Open a stream, read its first data chunk; returns the socket (still open)."""
    raw = json.dumps({**body, "stream": True}).encode()
    s = socket.create_connection((srv.host, srv.port), timeout=30)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(raw), raw))
    data = b""
    while b"data: " not in data:
        data += s.recv(65536)
    return s


def test_requests_join_the_running_batch_and_answer_as_alone(pair):
    """A short request sent while a long one decodes joins it and finishes first (continuous)."""
    long_req = {"prompt": "Once", "max_tokens": 200, "temperature": 0.9, "seed": 5}
    short_req = {"prompt": "Hello there", "max_tokens": 3, "temperature": 0, "logprobs": 2}
    out, order = {}, []

    def run(name, req):
        out[name] = post(pair, "/completions", req)
        order.append(name)

    t_long = threading.Thread(target=run, args=("long", long_req))
    t_long.start()
    while pair.batcher.stats["steps"] == 0 or not pair.batcher.decoder.rows:
        time.sleep(0.002)
    run("short", short_req)
    t_long.join(120)
    assert order == ["short", "long"]
    assert pair.batcher.stats["max_running_rows"] >= 2
    for name, req in (("long", long_req), ("short", short_req)):
        st, alone = post(pair, "/completions", req)
        assert out[name][0] == st == 200
        a, b = out[name][1]["choices"][0], alone["choices"][0]
        assert a["text"] == b["text"] and a["finish_reason"] == b["finish_reason"]
        if a["logprobs"]:
            np.testing.assert_allclose(a["logprobs"]["token_logprobs"], b["logprobs"]["token_logprobs"], atol=1e-5)


def test_more_rows_than_the_batch_wait_instead_of_failing(pair):
    prompts = [f"p{i}" for i in range(12)]  # 12 rows > max_batch_rows 8
    st, body = post(pair, "/completions", {"prompt": prompts, "max_tokens": 3, "temperature": 0})
    assert st == 200 and len(body["choices"]) == 12
    want = ls.Ensemble(pair.ensemble.experts, weights=[0.7, 0.3])  # only read after the answers
    assert [c["text"] for c in body["choices"]] == want.generate(prompts, max_new_tokens=3)


def test_client_that_hangs_up_is_cancelled(pair):
    before = pair.batcher.stats["cancelled_rows"]
    s = _stream_until_first(pair, {"prompt": "Once", "max_tokens": 400, "temperature": 1.0, "seed": 1})
    s.close()
    deadline = time.time() + 30
    while pair.batcher.stats["cancelled_rows"] == before and time.time() < deadline:
        time.sleep(0.01)
    assert pair.batcher.stats["cancelled_rows"] == before + 1
    while pair.batcher.decoder.rows and time.time() < deadline:
        time.sleep(0.01)
    assert not pair.batcher.decoder.rows and all(len(e.store) == 0 for e in pair.ensemble.experts)
    # non-streamed: the handler notices the hang-up while it waits
    raw = json.dumps({"prompt": "Once", "max_tokens": 400, "temperature": 1.0, "seed": 2}).encode()
    with socket.create_connection((pair.host, pair.port), timeout=30) as s2:
        s2.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n%s" % (len(raw), raw))
        while not pair.batcher.decoder.rows:
            time.sleep(0.002)
    while pair.batcher.stats["cancelled_rows"] == before + 1 and time.time() < deadline:
        time.sleep(0.01)
    assert pair.batcher.stats["cancelled_rows"] == before + 2


def test_full_queue_is_429(tiny_dirs):
    s = serve_experts(tiny_dirs, ["gpt2_a"], model_name="q", max_batch_rows=1, max_queue=1)
    try:
        sock = _stream_until_first(s, {"prompt": "Once", "max_tokens": 300, "temperature": 1.0, "seed": 3})
        res = {}
        t = threading.Thread(target=lambda: res.setdefault("b", post(s, "/completions", {"prompt": "b",
                                                                                          "max_tokens": 2})))
        t.start()
        while s.batcher.queue_length == 0:
            time.sleep(0.002)
        st, body = post(s, "/completions", {"prompt": "c", "max_tokens": 2})
        assert st == 429 and body["error"]["code"] == "queue_full" and "--max-queue" in body["error"]["message"]
        sock.close()
        t.join(60)
        assert res["b"][0] == 200
    finally:
        s.shutdown()


@pytest.mark.parametrize("policy", ["static", "sequential"])
def test_other_policies_answer_the_same(tiny_dirs, pair, policy):
    s = serve_experts(tiny_dirs, ["gpt2_a", "gpt2_b"], weights=[0.7, 0.3], batching=policy, model_name="pair")
    try:
        req = {"prompt": ["Hello", "Once"], "max_tokens": 5, "temperature": 0.7, "seed": 9, "n": 2, "logprobs": 1}
        a, b = post(s, "/completions", req)[1], post(pair, "/completions", req)[1]
        assert [c["text"] for c in a["choices"]] == [c["text"] for c in b["choices"]]
        assert s.batcher.policy == policy
    finally:
        s.shutdown()


# ------------------------------------------------------------------------------ endpoints
def test_metrics_docs_and_schema(pair):
    post(pair, "/completions", {"prompt": "Hi", "max_tokens": 2, "stream": True})
    st, text, headers = call(pair, "GET", "/metrics")
    assert st == 200 and headers["Content-Type"].startswith("text/plain")
    for name in ("logit_swarm_queue_length", "logit_swarm_running_rows", "logit_swarm_generated_units_total",
                 "logit_swarm_units_per_second", "logit_swarm_time_to_first_unit_seconds_bucket",
                 "logit_swarm_request_latency_seconds_count", 'logit_swarm_requests_total{endpoint="/v1/completions"'):
        assert name in text, name
    count = [ln for ln in text.splitlines() if ln.startswith("logit_swarm_request_latency_seconds_count")]
    assert float(count[0].split()[-1]) >= 1
    assert call(pair, "GET", "/docs")[0] == 200
    st, spec, _ = call(pair, "GET", "/openapi.json")
    assert st == 200 and "CompletionRequest" in spec["components"]["schemas"]
    assert "/v1/chat/completions" in spec["paths"] and "/tokenize" in spec["paths"]


def test_responses_follow_the_pydantic_models(pair):
    st, body = post(pair, "/completions", {"prompt": ["Hi", "Yo"], "max_tokens": 3, "logprobs": 2, "echo": True})
    assert st == 200
    S.CompletionResponse.model_validate(body)
    st, models, _ = call(pair, "GET", "/v1/models")
    S.ModelList.model_validate(models)
    assert models["data"][0]["max_model_len"] == 512
    st, err = post(pair, "/completions", {"prompt": "x", "n": "two"})
    assert st == 400 and err["error"]["param"] == "n"
    S.ErrorResponse.model_validate(err)


def test_tokenizer_endpoints(pair, bytes_srv, tmp_path):
    from transformers import AutoTokenizer

    st, info, _ = call(pair, "GET", "/tokenizer_info")
    S.TokenizerInfo.model_validate(info)
    tok = pair.ensemble.experts[0].tokenizer
    assert st == 200 and info["eos_token"] == tok.eos_token and info["model_max_length"] == 512
    st, r = call(pair, "POST", "/tokenize", {"prompt": "Hello world", "add_special_tokens": False})[:2]
    assert st == 200 and r["tokens"] == tok("Hello world", add_special_tokens=False)["input_ids"]
    assert r["count"] == len(r["tokens"]) and r["max_model_len"] == 512
    st, d = call(pair, "POST", "/detokenize", {"tokens": r["tokens"]})[:2]
    assert st == 200 and d["prompt"] == "Hello world"
    # Byte units: the byte tokenizer, remote and as a tokenizer.json that transformers loads.
    st, info, _ = call(bytes_srv, "GET", "/tokenizer_info")
    assert info["eos_token"] == "<|stop|>" and info["unit"] == "byte"
    st, r = call(bytes_srv, "POST", "/tokenize", {"prompt": "hé<|stop|>", "add_special_tokens": False})[:2]
    assert r["tokens"] == [104, 195, 169, 256]
    assert call(bytes_srv, "POST", "/detokenize", {"tokens": [256, 104, 195, 169]})[:2][1]["prompt"] == "<|stop|>hé"
    st, raw, _ = call(bytes_srv, "GET", "/v1/models/mix/tokenizer.json")
    assert st == 200
    st, files, _ = call(bytes_srv, "GET", "/v1/models/mix/tokenizer")
    for name, text in files["files"].items():
        (tmp_path / name).write_text(text)
    local = AutoTokenizer.from_pretrained(str(tmp_path))
    assert local("a é\n", add_special_tokens=False)["input_ids"] == list("a é\n".encode())
    assert local.eos_token_id == 256
