"""Remote (OpenAI-compatible) and vLLM experts: reading top-k answers, HTTP failures, equality
with local experts when k covers the vocabulary, recipes.

Servers here are local stand-ins (tests/fake_openai.py) or the project's own server
(logit_swarm.serve), all on 127.0.0.1; every network wait is bounded by small timeouts.
"""

from __future__ import annotations

import math
import socket
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fake_openai import FakeServer, ModelResponder, tokenizer_files

import logit_swarm as ls
from logit_swarm.experts.remote import (
    HTTPClient,
    RemoteExpert,
    RemoteExpertError,
    TokenResolver,
    load_remote_expert,
    parse_k_cap,
    parse_logprobs,
)

FAST = dict(timeout=5.0, retries=0, backoff=0.0)


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def remote_of(e, tiny_dirs, tok_of, server, **kw):
    """A remote expert over ``server`` with the tokenizer of tiny expert ``tok_of``."""
    opts = dict(FAST, top_k=-1, tokenizer=tiny_dirs[tok_of])
    opts.update(kw)
    return load_remote_expert(server.url, model="tiny", **opts)


# ============================================================================================
# Reading answers: hand-written payloads in the shapes servers send
# ============================================================================================


def test_parse_vllm_token_ids_echo(experts):
    tok = experts["gpt2_a"].tokenizer
    res = TokenResolver(tok)
    lp = {"tokens": ["token_id:5", "token_id:7", "token_id:9"],
          "token_logprobs": [None, -2.5, -0.1],
          "top_logprobs": [None, {"token_id:3": -0.5, "token_id:7": -2.5}, {"token_id:9": -0.1}],
          "text_offset": [0, 1, 2]}
    pos = parse_logprobs(lp, res, prompt_ids=[5, 7])
    assert pos[0] is None  # first echoed token: nothing
    ids, lps = pos[1]
    assert sorted(set(ids.tolist())) == [3, 7] and -2.5 in lps.tolist()
    ids, lps = pos[2]  # the generated position: the sampled token's own entry is added
    assert set(ids.tolist()) == {9}


def test_parse_string_keys_bytes_and_sentinels(experts):
    e = experts["gpt2_a"]  # byte-level BPE
    tok = e.tokenizer
    the = tok(" the", add_special_tokens=False)["input_ids"]
    assert len(the) == 1
    res = TokenResolver(tok, lambda: e.vocab_bytes)
    lp = {"tokens": [" the"], "token_logprobs": [-0.7],
          "top_logprobs": [{" the": -0.7, "<|endoftext|>": -1.5, "zzz-not-a-token": -3.0, "x": -9999.0}]}
    (ids, lps), = parse_logprobs(lp, res)
    got = dict(zip(ids.tolist(), lps.tolist()))
    assert got[the[0]] == -0.7
    assert got[tok.eos_token_id] == -1.5
    assert res.unresolved == 1  # the unknown key is dropped (its mass joins the leftover)
    x = tok.convert_tokens_to_ids("x")
    assert got[x] == -9999.0  # kept here; the leftover rule treats it as not listed


def test_parse_chat_content_with_bytes_and_llamacpp_ids(experts):
    e = experts["gpt2_a"]
    tok = e.tokenizer
    res = TokenResolver(tok, lambda: e.vocab_bytes)
    # OpenAI chat-like shape: entries carry bytes; "bytes:\\x.." keys for invalid UTF-8.
    emoji = "😀".encode()
    first = next(i for i, b in enumerate(e.vocab_bytes.token_bytes) if b is not None and b == emoji[:1])
    lp = {"content": [{"token": "bytes:\\xf0", "logprob": -0.2, "bytes": list(emoji[:1]),
                       "top_logprobs": [{"token": "bytes:\\xf0", "logprob": -0.2, "bytes": [0xF0]},
                                        {"token": " the", "logprob": -2.0, "bytes": list(b" the")},
                                        {"token": "?", "logprob": -3.0, "id": 17}]}]}
    (ids, lps), = parse_logprobs(lp, res)
    got = dict(zip(ids.tolist(), lps.tolist()))
    assert got[first] == -0.2
    assert got[17] == -3.0  # an explicit id wins over the text
    assert got[tok(" the", add_special_tokens=False)["input_ids"][0]] == -2.0
    # the same "bytes:" spelling as a completions dict key
    (ids, _), = parse_logprobs({"top_logprobs": [{"bytes:\\xf0": -0.1}]}, res)
    assert ids.tolist() == [first]


def test_string_collisions_go_to_the_canonical_token(experts):
    e = experts["llama_sp"]  # SentencePiece with byte fallback: "<0x20>" and "▁" are both b" "
    tok = e.tokenizer
    res = TokenResolver(tok, lambda: e.vocab_bytes)
    cands = [i for i, b in enumerate(e.vocab_bytes.token_bytes) if b == b" "]
    assert len(cands) >= 2
    i = res(" ")
    enc = tok(" ", add_special_tokens=False)["input_ids"]
    assert i == (enc[0] if len(enc) == 1 and enc[0] in cands else min(cands))
    # text that only the tokenizer's decoded view knows: special tokens
    assert res("</s>") == tok.eos_token_id


def test_parse_errors_are_clear(experts):
    res = TokenResolver(experts["gpt2_a"].tokenizer)
    with pytest.raises(RemoteExpertError, match="no logprobs"):
        parse_logprobs(None, res)
    with pytest.raises(RemoteExpertError, match="top_logprobs"):
        parse_logprobs({"tokens": ["a"]}, res)


def test_parse_k_cap_messages():
    assert parse_k_cap("Requested sample logprobs of -1, which is greater than max allowed: 20") == 20
    assert parse_k_cap("Invalid value for 'logprobs': must be less than or equal to 5.") == 5
    assert parse_k_cap("'logprobs' = 50 is more than this server's cap of 8 (--max-logprobs 8)") == 8
    assert parse_k_cap("prompt is too long: maximum context length is 2048") is None


# ============================================================================================
# HTTP: retries, backoff, timeouts, clear errors
# ============================================================================================


def test_retries_with_exponential_backoff_then_success():
    state = {"n": 0}

    def handler(method, path, body):
        state["n"] += 1
        if state["n"] <= 2:
            return 503, {"error": {"message": "busy"}}, None
        return 200, {"ok": True}, None

    slept = []
    with FakeServer(handler) as srv:
        c = HTTPClient(srv.url, timeout=5, retries=3, backoff=0.5, max_backoff=8, sleep=slept.append)
        status, data, _ = c.json("GET", "/models")
    assert status == 200 and data == {"ok": True}
    assert c.retried == 2 and c.attempts == 3
    assert len(slept) == 2 and 0.5 <= slept[0] <= 0.55 and 1.0 <= slept[1] <= 1.1


def test_429_honours_retry_after_and_4xx_is_not_retried():
    state = {"n": 0}

    def handler(method, path, body):
        state["n"] += 1
        if path.endswith("/bad"):
            return 400, {"error": {"message": "no"}}, None
        if state["n"] == 1:
            return 429, {"error": {"message": "slow down"}}, {"Retry-After": "3"}
        return 200, {}, None

    slept = []
    with FakeServer(handler) as srv:
        c = HTTPClient(srv.url, timeout=5, retries=2, backoff=0.1, max_backoff=5, sleep=slept.append)
        assert c.json("GET", "/x")[0] == 200
        assert slept and slept[0] >= 3
        assert c.json("GET", "/bad")[0] == 400
    assert c.retried == 1


def test_unreachable_server_fails_fast_and_names_the_url():
    url = f"http://127.0.0.1:{_free_port()}/v1"
    t0 = time.perf_counter()
    with pytest.raises(RemoteExpertError) as ei:
        load_remote_expert(url, model="m", tokenizer="/nonexistent", timeout=1, retries=2, backoff=0.01)
    msg = str(ei.value)
    assert url in msg and "3 attempt" in msg and "running" in msg
    assert time.perf_counter() - t0 < 5


def test_hanging_server_times_out():
    with FakeServer(lambda m, p, b: (None, None, None)) as srv:
        c = HTTPClient(srv.url, timeout=0.3, retries=1, backoff=0.01)
        t0 = time.perf_counter()
        with pytest.raises(RemoteExpertError, match="timeout"):
            c.request("GET", "/models")
        assert time.perf_counter() - t0 < 3


def test_client_validates_arguments():
    with pytest.raises(ValueError):
        HTTPClient("localhost:8000")
    with pytest.raises(ValueError):
        HTTPClient("http://x/v1", timeout=0)
    with pytest.raises(ValueError):
        HTTPClient("http://x/v1", retries=-1)


# ============================================================================================
# The expert against a vLLM-shaped stand-in: equality with the local model, caching, batching
# ============================================================================================


def test_remote_equals_local_when_k_covers_vocabulary(experts, tiny_dirs):
    e = experts["gpt2_a"]
    with FakeServer(ModelResponder(e)) as srv:
        r = remote_of(e, tiny_dirs, "gpt2_a", srv)
        assert r.fingerprint == e.fingerprint and r.vocab_size == e.vocab_size
        assert r.stop_ids == e.stop_ids and r.start_id == e.start_id
        seqs = [e.encode("Hello world"), e.encode("The quick brown")]
        n_r, lp_r = r.prefill(seqs)
        n_l, lp_l = e.prefill(seqs)
        assert (lp_r - lp_l).abs().max() < 1e-4
        tok = [5, 9]
        c_r, x_r = r.extend(n_r, tok)
        c_l, x_l = e.extend(n_l, tok)
        assert (x_r - x_l).abs().max() < 1e-4
        chunks = [[3, 4, 5], [7]]
        for a, b in zip(r.score_chunks(n_r, chunks), e.score_chunks(n_l, chunks)):
            assert a.shape == b.shape and (a - b).abs().max() < 1e-4
        for n in n_r + c_r:
            r.store.release(n)
        for n in n_l + c_l:
            e.store.release(n)
        assert len(r.store) == 0
        # One remote expert and its local twin share a tokenizer: token-level mixing.
        ens = ls.Ensemble([r, e], weights=[0.5, 0.5])
        assert ens.unit == "token"
        ctx, cont = ["Hello", "The quick brown", ""], [" world", " fox jumps", "Numbers: 1 2"]
        one_r = ls.Ensemble([r]).logprob(ctx, cont)
        one_l = ls.Ensemble([e]).logprob(ctx, cont)
        assert np.allclose(one_r, one_l, atol=1e-4)
        prompts = ["Hello world", "The quick brown fox"]
        want_text = ls.Ensemble([e]).generate(prompts, max_new_tokens=8)
        assert ls.Ensemble([r]).generate(prompts, max_new_tokens=8) == want_text
        mixed = ens.logprob(ctx, cont)
        assert np.allclose(mixed, one_l, atol=1e-4)  # the same model twice


def test_cache_batching_and_cost_accounting(experts, tiny_dirs):
    e = experts["gpt2_a"]
    with FakeServer(ModelResponder(e)) as srv:
        r = remote_of(e, tiny_dirs, "gpt2_a", srv, max_batch=3)
        seqs = [e.encode(t) for t in ["a", "b", "c", "d", "a"]]
        nodes, _ = r.prefill(seqs)
        assert nodes[0] == nodes[4]  # identical sequences share one node
        bodies = srv.completions()
        assert len(bodies) == 2 and len(bodies[0]["prompt"]) == 3  # 4 unique sequences, batches of 3
        assert bodies[0]["return_tokens_as_token_ids"] is True and bodies[0]["max_tokens"] == 1
        assert r.forward_calls == 2 and r.forward_rows == 4
        r.prefill(seqs)  # all cached: no request
        assert len(srv.completions()) == 2 and r.cache_hits == 5
        st = r.stats()
        assert st["forward_calls"] == 2 and st["http_requests"] >= 3  # + GET /models at load


def test_small_k_is_approximate_but_forced_tokens_are_exact(experts, tiny_dirs):
    e = experts["gpt2_a"]
    with FakeServer(ModelResponder(e)) as srv:
        r = remote_of(e, tiny_dirs, "gpt2_a", srv, top_k=3, score_mode="echo")
        assert not r.covers_vocab()
        ids = e.encode("The quick brown fox jumps")
        (n,), lp = r.prefill([ids[:2]])
        full = ModelResponder(e).logprobs(ids)
        top = torch.topk(full[1], 3).indices
        assert torch.allclose(lp[0, top].double(), full[1, top], atol=1e-5)  # listed: exact
        assert math.isclose(float(lp[0].double().exp().sum()), 1.0, rel_tol=1e-5)
        rows = r.score_chunks([n], [ids[2:]])[0]
        for t in range(len(ids) - 3):  # row t predicts ids[3 + t]: the echoed token's own entry
            assert abs(float(rows[t, ids[3 + t]]) - float(full[2 + t, ids[3 + t]])) < 1e-5
        body = srv.completions()[-1]
        assert body["echo"] is True and body["logprobs"] == 3


def test_row_limit_of_the_server_splits_requests(experts, tiny_dirs):
    e = experts["gpt2_a"]
    inner = ModelResponder(e)

    def handler(method, path, body):
        if method == "POST" and isinstance(body["prompt"][0], list) and len(body["prompt"]) > 2:
            n = len(body["prompt"])
            return 400, {"error": {"message": f"this request asks for {n} rows (prompts × n) but the server "
                                              "takes at most 2 per request; split it"}}, None
        return inner(method, path, body)

    with FakeServer(handler) as srv:
        r = remote_of(e, tiny_dirs, "gpt2_a", srv)
        seqs = [e.encode(t) for t in ["a", "b", "c", "d", "e"]]
        _, lp = r.prefill(seqs)
        _, want = e.prefill(seqs)
        assert (lp - want).abs().max() < 1e-4
        assert r.max_batch == 2
        assert [len(b["prompt"]) for b in srv.completions()] == [5, 2, 2, 1]


def test_memo_wrapper_over_remote_expert(experts, tiny_dirs):
    from logit_swarm.search.memo import memoize

    e = experts["gpt2_a"]
    with FakeServer(ModelResponder(e)) as srv:
        (m,) = memoize([remote_of(e, tiny_dirs, "gpt2_a", srv)])
        prompts = ["Hello world", "The quick"]
        want = ls.Ensemble([e]).generate(prompts, max_new_tokens=6)
        assert ls.Ensemble([m]).generate(prompts, max_new_tokens=6) == want
        n = len(srv.completions())
        assert ls.Ensemble([m]).generate(prompts, max_new_tokens=6) == want
        assert len(srv.completions()) == n and m.hits > 0  # the second pass is answered by the memo
        got = ls.Ensemble([m]).logprob(["Hello"], [" world again"])
        assert np.allclose(got, ls.Ensemble([e]).logprob(["Hello"], [" world again"]), atol=1e-4)


def test_server_cap_is_learned(experts, tiny_dirs, capsys):
    e = experts["gpt2_a"]
    with FakeServer(ModelResponder(e, cap=5)) as srv:
        r = remote_of(e, tiny_dirs, "gpt2_a", srv, top_k=-1)
        r.prefill([e.encode("Hello")])
        r.prefill([e.encode("World")])
        ks = [b["logprobs"] for b in srv.completions()]
        assert ks == [-1, 5, 5]  # refused once, then the cap is used at once
        assert r.stats()["k_cap"] == 5
        assert "at most 5" in capsys.readouterr().err


def test_cap_from_model_card(experts, tiny_dirs):
    e = experts["gpt2_a"]
    with FakeServer(ModelResponder(e, card={"max_logprobs": 7})) as srv:
        r = remote_of(e, tiny_dirs, "gpt2_a", srv, top_k=20)
        r.prefill([e.encode("Hello")])
        assert [b["logprobs"] for b in srv.completions()] == [7]


def test_echo_unsupported_falls_back_to_prefixes(experts, tiny_dirs):
    e = experts["gpt2_a"]
    with FakeServer(ModelResponder(e, echo_supported=False)) as srv:
        r = remote_of(e, tiny_dirs, "gpt2_a", srv, score_mode="echo")
        (n,), _ = r.prefill([e.encode("Hello")])
        (m,), _ = e.prefill([e.encode("Hello")])
        got = r.score_chunks([n], [[5, 6, 7]])[0]
        want = e.score_chunks([m], [[5, 6, 7]])[0]
        assert (got - want).abs().max() < 1e-4
        assert r.score_mode == "prefixes"


def test_string_keyed_server_matches_local(experts, tiny_dirs):
    # A server that ignores return_tokens_as_token_ids: keys are decoded strings.
    e = experts["gpt2_a"]
    with FakeServer(ModelResponder(e, token_ids=False)) as srv:
        r = remote_of(e, tiny_dirs, "gpt2_a", srv)
        ids = e.encode("Hello world")
        _, lp_r = r.prefill([ids])
        _, lp_l = e.prefill([ids])
        # Tokens whose text collides with another's lose their own value to the canonical one
        # (their mass is spread with the leftover); all others are exact.
        decoded = e.tokenizer.batch_decode([[i] for i in range(e.vocab_size)])
        unique = np.array([decoded.count(s) == 1 for s in decoded])
        diff = (lp_r - lp_l)[0].abs().numpy()
        assert diff[unique].max() < 1e-3
        assert r.resolve.unresolved == 0


def test_errors_auth_model_and_tokenizer(experts, tiny_dirs):
    e = experts["gpt2_a"]

    def auth(method, path, body):
        return 401, {"error": {"message": "bad key"}}, None

    with FakeServer(auth) as srv:
        with pytest.raises(RemoteExpertError, match="LOGIT_SWARM_API_KEY"):
            load_remote_expert(srv.url, model="tiny", tokenizer=tiny_dirs["gpt2_a"], **FAST)
    with FakeServer(ModelResponder(e)) as srv:
        with pytest.raises(ValueError, match="does not serve model 'other'"):
            load_remote_expert(srv.url, model="other", tokenizer=tiny_dirs["gpt2_a"], **FAST)
        with pytest.raises(ValueError, match="tokenizer=DIR"):  # no tokenizer endpoint: 404
            load_remote_expert(srv.url, model="tiny", **FAST)
        r = load_remote_expert(srv.url, tokenizer=tiny_dirs["gpt2_a"], **FAST)  # the only model
        assert r.model == "tiny" and r.name == "tiny"


def test_api_key_from_env_never_in_recipe(experts, tiny_dirs, monkeypatch, tmp_path):
    e = experts["gpt2_a"]
    monkeypatch.setenv("LOGIT_SWARM_API_KEY", "sekret-123")
    with FakeServer(ModelResponder(e)) as srv:
        r = remote_of(e, tiny_dirs, "gpt2_a", srv, name="far")
        r.prefill([e.encode("Hi")])
        assert srv.calls[-1][3].get("Authorization") == "Bearer sekret-123"
        d = r.describe()
        assert d["kind"] == "remote" and d["url"] == srv.url and d["model"] == "tiny"
        assert d["top_k"] == -1 and d["name"] == "far"
        ens = ls.Ensemble([r, e], weights=[0.25, 0.75])
        path = ens.save(tmp_path / "recipe.json")
        assert "sekret" not in path.read_text()
        back = ls.Ensemble.load(path)
        assert isinstance(back.experts[0], RemoteExpert) and back.experts[0].top_k == -1
        assert np.allclose(back.logprob(["Hello"], [" world"]), ens.logprob(["Hello"], [" world"]), atol=1e-5)


def test_tokenizer_fetched_from_server(experts, tiny_dirs, tmp_path):
    e = experts["llama_sp"]
    files = tokenizer_files(tiny_dirs["llama_sp"])
    with FakeServer(ModelResponder(e, tokenizer_files=files)) as srv:
        r = load_remote_expert(srv.url, model="tiny", top_k=-1, tokenizer_cache=tmp_path, **FAST)
        assert r.fingerprint == e.fingerprint and r.stop_ids == e.stop_ids
        assert r.context_window == e.context_window  # from the config.json sent along
        again = load_remote_expert(srv.url, model="tiny", tokenizer_cache=tmp_path, **FAST)
        assert again.fingerprint == r.fingerprint
        assert len(list(tmp_path.iterdir())) == 1  # stored once, by content
        assert "tokenizer" not in r.describe()  # fetched again on load, nothing local to record


def test_unsafe_tokenizer_file_names_are_refused(tmp_path):
    def handler(method, path, body):
        if path.endswith("/models"):
            return 200, {"data": [{"id": "m"}]}, None
        return 200, {"files": {"../evil.json": "{}"}}, None

    with FakeServer(handler) as srv:
        with pytest.raises(RemoteExpertError, match="unusable entry"):
            load_remote_expert(srv.url, model="m", tokenizer_cache=tmp_path, **FAST)


def test_two_remote_experts_with_different_tokenizers_mix_at_byte_level(experts, tiny_dirs):
    a, b = experts["gpt2_a"], experts["llama_sp"]
    with FakeServer(ModelResponder(a)) as sa, FakeServer(ModelResponder(b)) as sb:
        ra = remote_of(a, tiny_dirs, "gpt2_a", sa)
        rb = remote_of(b, tiny_dirs, "llama_sp", sb)
        remote = ls.Ensemble([ra, rb], weights=[0.6, 0.4])
        local = ls.Ensemble([a, b], weights=[0.6, 0.4])
        assert remote.unit == local.unit == "byte"
        ctx, cont = ["Hello", "The quick"], [" world", " brown fox"]
        assert np.allclose(remote.logprob(ctx, cont), local.logprob(ctx, cont), atol=1e-3)
        assert remote.generate(["Hello"], max_new_tokens=6) == local.generate(["Hello"], max_new_tokens=6)


def test_load_expert_dispatch(tiny_dirs):
    with pytest.raises(ValueError, match="is a URL"):
        ls.load_expert("http://127.0.0.1:1/v1", backend="vllm")
    with pytest.raises(ValueError, match="unknown backend"):
        ls.load_expert(tiny_dirs["gpt2_a"], backend="onnx")
    e = ls.load_expert(tiny_dirs["gpt2_a"], backend="hf")
    assert e.describe()["kind"] == "hf"


# ============================================================================================
# vLLM: what can be checked without vLLM
# ============================================================================================


class _Logprob:
    def __init__(self, logprob):
        self.logprob = logprob
        self.rank = None
        self.decoded_token = None


class FakeLLM:
    """Answers ``generate`` in vLLM's output shapes from a local model (dict[int, Logprob] rows,
    prompt_logprobs with a leading None, the prompt token as the k+1 entry)."""

    def __init__(self, expert):
        self.e = expert
        self.calls = []

    def generate(self, prompts, params, use_tqdm=False):
        self.calls.append((len(prompts), dict(params)))
        outs = []
        V = self.e.vocab_size
        k = params["logprobs"]
        for p in prompts:
            ids = p["prompt_token_ids"]
            with torch.no_grad():
                lp = torch.log_softmax(self.e.model(torch.tensor([ids])).logits[0, :, :V].double(), -1)

            def row(r, extra):
                kk = V if k == -1 else k
                v, i = torch.topk(r, kk)
                d = {int(a): _Logprob(float(b)) for a, b in zip(i, v)}
                d.setdefault(int(extra), _Logprob(float(r[extra])))
                return d

            gen = int(lp[-1].argmax())
            plp = None
            if params.get("prompt_logprobs") is not None:
                plp = [None] + [row(lp[i - 1], ids[i]) for i in range(1, len(ids))]
            outs.append(SimpleNamespace(prompt_logprobs=plp, outputs=[SimpleNamespace(
                token_ids=[gen], logprobs=[row(lp[-1], gen)])]))
        return outs


FAKE_API = SimpleNamespace(SamplingParams=lambda **kw: kw, TokensPrompt=lambda **kw: kw)


def test_vllm_expert_equals_local_with_stand_in_engine(experts):
    from logit_swarm.experts.vllm import VLLMExpert

    e = experts["llama_sp"]
    llm = FakeLLM(e)
    v = VLLMExpert(llm, e.tokenizer, name="v", path="/x", top_k=-1, api=FAKE_API,
                   engine_options={"tensor_parallel_size": 2, "distributed_executor_backend": "ray"})
    assert v.fingerprint == e.fingerprint
    ctx, cont = ["Hello", "The quick brown", ""], [" world", " fox jumps", "Numbers: 1 2"]
    assert np.allclose(ls.Ensemble([v]).logprob(ctx, cont), ls.Ensemble([e]).logprob(ctx, cont), atol=1e-4)
    prompts = ["Hello world", "café"]
    assert ls.Ensemble([v]).generate(prompts, max_new_tokens=6) == ls.Ensemble([e]).generate(prompts, max_new_tokens=6)
    params = llm.calls[0][1]
    assert params["max_tokens"] == 1 and params["detokenize"] is False and params["flat_logprobs"] is True
    d = v.describe()
    assert d == {"kind": "vllm", "name": "v", "path": "/x", "top_k": -1, "tensor_parallel_size": 2,
                 "distributed_executor_backend": "ray"}


def test_vllm_position_shapes():
    from logit_swarm.experts.vllm import position_topk

    assert position_topk(None) is None
    ids, lps = position_topk({3: _Logprob(-0.5), 9: _Logprob(-1.0)})
    assert ids.tolist() == [3, 9] and lps.tolist() == [-0.5, -1.0]
    ids, lps = position_topk({4: -0.25})
    assert ids.tolist() == [4] and lps.tolist() == [-0.25]
    with pytest.raises(TypeError):
        position_topk([1, 2])


def test_vllm_missing_gives_install_hint(tiny_dirs, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(ImportError, match=r"logit_swarm\[vllm\]"):
        ls.load_expert(tiny_dirs["gpt2_a"], backend="vllm")


@pytest.mark.parametrize("kw,match", [
    ({"tensor_parallel_size": 0}, "tensor_parallel_size"),
    ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
    ({"distributed_executor_backend": "slurm"}, "distributed_executor_backend"),
    ({"top_k": 0}, "top_k"),
    ({"max_model_len": -3}, "max_model_len"),
])
def test_vllm_arguments_are_checked_before_import(tiny_dirs, monkeypatch, kw, match):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ValueError, match=match):
        ls.load_expert(tiny_dirs["gpt2_a"], backend="vllm", **kw)


def test_vllm_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        ls.load_expert(tmp_path / "nope", backend="vllm")


# ============================================================================================
# End to end against the project's own server (logit_swarm.serve)
# ============================================================================================


@pytest.fixture(scope="module")
def served(experts):
    """The project's server over gpt2_a and llama_sp (no cap) and gpt2_b (cap 20), on free ports."""
    from logit_swarm.serve import make_server

    caps = {"gpt2_a": -1, "llama_sp": -1, "gpt2_b": 20}
    servers = {k: make_server(ls.Ensemble([experts[k]]), port=0, max_logprobs=c).start() for k, c in caps.items()}
    yield servers
    for s in servers.values():
        s.shutdown(timeout=5)


def test_project_server_remote_equals_local(experts, served, tmp_path):
    e = experts["gpt2_a"]
    r = load_remote_expert(served["gpt2_a"].url, top_k=-1, tokenizer_cache=tmp_path, **FAST)
    assert r.model == "gpt2_a" and r.fingerprint == e.fingerprint  # tokenizer fetched from the server
    assert r.stop_ids == e.stop_ids and r.context_window == e.context_window
    ctx = ["Hello", "The quick brown", "", "def add(a, b):\n   "]
    cont = [" world", " fox jumps", "Numbers: 1 2", " return a + b"]
    got = ls.Ensemble([r]).logprob(ctx, cont)
    want = ls.Ensemble([e]).logprob(ctx, cont)
    assert np.abs(np.array(got) - np.array(want)).max() < 1e-4
    prompts = ["Hello world", "The quick brown fox"]
    want_text = ls.Ensemble([e]).generate(prompts, max_new_tokens=10)
    assert ls.Ensemble([r]).generate(prompts, max_new_tokens=10) == want_text
    # remote + its local twin: token level, and the same numbers as the twin alone
    assert ls.Ensemble([r, e]).unit == "token"
    assert np.allclose(ls.Ensemble([r, e], weights=[0.3, 0.7]).logprob(ctx, cont), want, atol=1e-4)


def test_token_level_scores_exact_at_small_k(experts, served, tmp_path):
    """Scoring reads each continuation token's own echoed log-probability, so one-hot scores
    and mode-"probs" mixture scores at token level are exact even with k = 1."""
    e = experts["gpt2_a"]
    r = load_remote_expert(served["gpt2_a"].url, top_k=1, tokenizer_cache=tmp_path, **FAST)
    ctx = ["Hello", "The quick brown", "", "def add(a, b):\n   "]
    cont = [" world", " fox jumps", "Numbers: 1 2", " return a + b"]
    want = np.array(ls.Ensemble([e]).logprob(ctx, cont))
    assert np.abs(np.array(ls.Ensemble([r]).logprob(ctx, cont)) - want).max() < 1e-4
    mixed = ls.Ensemble([r, e], weights=[0.3, 0.7]).logprob(ctx, cont)
    assert np.abs(np.array(mixed) - want).max() < 1e-4  # a twin mixed with itself


def test_project_server_two_tokenizers_mix_at_byte_level(experts, served, tmp_path):
    a, b = experts["gpt2_a"], experts["llama_sp"]
    ra = load_remote_expert(served["gpt2_a"].url, top_k=-1, tokenizer_cache=tmp_path, **FAST)
    rb = load_remote_expert(served["llama_sp"].url, top_k=-1, tokenizer_cache=tmp_path, **FAST)
    remote = ls.Ensemble([ra, rb], weights=[0.4, 0.6])
    local = ls.Ensemble([a, b], weights=[0.4, 0.6])
    assert remote.unit == local.unit == "byte"
    ctx, cont = ["Hello", "café"], [" world", " naïve"]
    assert np.allclose(remote.logprob(ctx, cont), local.logprob(ctx, cont), atol=1e-3)
    assert remote.generate(["The quick"], max_new_tokens=6) == local.generate(["The quick"], max_new_tokens=6)


def test_project_server_cap_is_read_from_model_card(experts, served, tmp_path):
    r = load_remote_expert(served["gpt2_b"].url, top_k=-1, tokenizer_cache=tmp_path, **FAST)
    assert r.k_cap == 20 and not r.covers_vocab()
    (n,), lp = r.prefill([experts["gpt2_b"].encode("Hello")])
    assert math.isclose(float(lp[0].double().exp().sum()), 1.0, rel_tol=1e-5)
    (m,), want = experts["gpt2_b"].prefill([experts["gpt2_b"].encode("Hello")])
    top = torch.topk(want[0], 20).indices
    assert (lp[0, top] - want[0, top]).abs().max() < 1e-4  # the listed 20 are exact
    experts["gpt2_b"].store.release(m)


def test_redirects_are_refused_and_the_key_stays_home():
    """urllib would resend Authorization to wherever a 302 points; the client refuses."""
    import http.server
    import threading

    seen = []

    class Other(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a):
            pass

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Other)

    class Redirect(Other):
        def do_GET(self):  # noqa: N802
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{other.server_port}/v1/models")
            self.send_header("Content-Length", "0")
            self.end_headers()

    first = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    for srv in (other, first):
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        client = HTTPClient(f"http://127.0.0.1:{first.server_port}/v1", api_key="SECRET", timeout=5, retries=0)
        status, _ = client.request("GET", "/models")
        assert status == 302 and seen == []
    finally:
        for srv in (other, first):
            srv.shutdown()
            srv.server_close()
