"""Byte-level alignment: the implementation against brute-force enumeration of the definition
in align/bytes.py (all tokenizations, no pruning), plus mixing properties at byte level."""

import math

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA

import logit_swarm as ls
from logit_swarm.align.bytes import STOP, ByteTrack


def _seq_logprob(e, ids):
    """log P of every next token after each prefix of ids (float64, no cache)."""
    with torch.no_grad():
        logits = e.model(torch.tensor([ids])).logits[0].double()
    return torch.log_softmax(logits[:, : e.vocab_size], -1).numpy()


def brute_next_byte(e, head, y: bytes) -> np.ndarray:
    """p(u | y) over 257 units by enumerating every token sequence in cover(y·u)."""
    tb = e.vocab_bytes.token_bytes
    ordinary = [i for i, b in enumerate(tb) if b]
    stops = list(e.vocab_bytes.stop_ids)
    mass = np.zeros(257)
    cache = {}

    def lp_after(seq):
        key = tuple(seq)
        if key not in cache:
            cache[key] = _seq_logprob(e, head + list(seq))[-1]
        return cache[key]

    def segs(prefix: bytes):
        """All (token seq, log P) whose bytes equal ``prefix`` exactly."""
        if not prefix:
            return [((), 0.0)]
        out = []
        for j in range(len(prefix)):
            for s, lp in segs(prefix[:j]):
                rest = prefix[j:]
                for t in ordinary:
                    if tb[t] == rest:
                        out.append((s + (t,), lp + lp_after(s)[t]))
        return out

    n = len(y)
    for j in range(n + 1):
        for s, lp in segs(y[:j]):
            d = lp_after(s)
            pend = y[j:]
            for t in ordinary:
                b = tb[t]
                if len(b) > len(pend) and b.startswith(pend):
                    mass[b[len(pend)]] += math.exp(lp + d[t])
            if j == n:
                mass[STOP] += sum(math.exp(lp + d[t]) for t in stops)
    with np.errstate(divide="ignore"):
        return np.log(mass / mass.sum())


def check_against_brute_force(e, text: bytes, check_at=None):
    """Walk ``text`` byte by byte with the exact tracker; at each position in ``check_at``
    (default: all) its distribution must equal brute-force enumeration to 1e-9."""
    head = [e.start_id]
    tr = ByteTrack(e, beam=None, prune=0.0)
    st = tr.start([head], [b""])[0]
    for k in range(len(text) + 1):
        if check_at is None or k in check_at:
            got = tr.distributions([st])[0]
            want = brute_next_byte(e, head, text[:k])
            fin = np.isfinite(want)
            assert np.array_equal(fin, np.isfinite(got))
            assert np.max(np.abs(got[fin] - want[fin])) < 1e-9
        if k < len(text):
            new = tr.advance([st], [text[k]])[0]
            tr.release(st)
            st = new
    tr.release(st)


@pytest.fixture(scope="module")
def e64(tiny_dirs):
    return {k: ls.load_expert(tiny_dirs[k], dtype=torch.float64) for k in ("gpt2_a", "llama_sp")}


@pytest.mark.parametrize("name", ["gpt2_a", "llama_sp"])
@pytest.mark.parametrize("text", [b"Hel", b"the q", b"\xc3\xa9 1", b"  x"])
def test_exact_against_brute_force(e64, name, text):
    e = e64[name]
    check_against_brute_force(e, text)
    assert len(e.store) == 0  # every node freed


def test_pruned_is_close_to_exact(e64):
    e = e64["llama_sp"]
    # The exact marginal covers the whole text from the start (every tokenization of it), so
    # the text stays short.
    ctx, cont = ["The q"], ["uick"]
    exact = ls.Ensemble([e], unit="byte", byte_beam=None, byte_prune=0.0).logprob(ctx, cont)[0]
    pruned = ls.Ensemble([e], unit="byte", byte_beam=8, byte_prune=1e-4).logprob(ctx, cont)[0]
    loose = ls.Ensemble([e], unit="byte", byte_beam=1, byte_prune=1.0).logprob(ctx, cont)[0]
    assert abs(exact - pruned) < 0.05
    # Per-step renormalisation means pruning is not monotone; a single path is still a proper score.
    assert np.isfinite(loose) and loose < 0


def test_byte_distributions_normalised_and_stop(experts):
    e = experts["llama_sp"]
    tr = ByteTrack(e)
    st = tr.start([[e.start_id]], [b" Hello"])[0]
    d = tr.distributions([st])[0]
    assert abs(np.exp(d).sum() - 1) < 1e-9
    assert np.isfinite(d[STOP])  # EOS maps to STOP
    tr.release(st)


@pytest.mark.parametrize("mode", ["probs", "logits"])
def test_byte_mixture_matches_reference(experts, mode):
    from logit_swarm.mixing import mix_reference

    pool = [experts["gpt2_a"], experts["llama_sp"], experts["mistral_bl2"]]
    w = np.array([0.5, 0.3, 0.2]) if mode == "probs" else np.array([1.0, 0.6, -0.3])
    ens = ls.Ensemble(pool, weights=w, mode=mode)
    assert ens.unit == "byte"
    ctx, cont = ["Hello"], [" wor"]
    got = ens.logprob(ctx, cont)[0]
    table = ens.table(ctx, cont, keep_full=True)  # [T, N, 257] per-expert distributions
    ref = 0.0
    for t, b in enumerate(cont[0].encode()):
        ref += mix_reference(table.full[t], w, mode)[b]
    assert abs(got - ref) < 1e-9


def test_jensen_byte(experts):
    pool = [experts["gpt2_a"], experts["llama_sp"], experts["qwen2_bl2"]]
    w = np.array([0.3, 0.3, 0.4])
    ctx = ["Hello", "", "def add"]
    cont = [" world", "The quick", "(a, b):"]
    mix = ls.Ensemble(pool, weights=w).logprob(ctx, cont)
    singles = np.array([ls.Ensemble(pool, weights=np.eye(3)[i]).logprob(ctx, cont) for i in range(3)])
    assert np.all(np.array(mix) >= w @ singles - 1e-9)


def test_byte_generation_batch_invariance_and_seeds(experts):
    ens = ls.Ensemble([experts["gpt2_a"], experts["llama_sp"]], weights=[0.5, 0.5])
    alone = ens.generate(["The quick"], max_new_tokens=12)[0]
    batch = ens.generate(["Hello", "The quick", "def f(x):"], max_new_tokens=12)
    assert batch[1] == alone
    a = ens.generate(["Hi"] * 2, max_new_tokens=10, temperature=1.0, seed=1)
    assert a == ens.generate(["Hi"] * 2, max_new_tokens=10, temperature=1.0, seed=1)
    assert a != ens.generate(["Hi"] * 2, max_new_tokens=10, temperature=1.0, seed=2)


def test_byte_one_hot_greedy_close_to_token_greedy(experts):
    """At byte level one-hot greedy follows the marginal over tokenizations; the first bytes
    agree with the expert's own greedy token when that token dominates."""
    e = experts["gpt2_a"]
    byte_ens = ls.Ensemble([e, experts["llama_sp"]], weights=[1.0, 0.0])
    out = byte_ens.generate(["Hello world"], max_new_tokens=8, budget_unit="units", return_details=True)[0]
    assert len(out.units) <= 8 and all(0 <= u <= 256 for u in out.units)


def test_chat_prompt_across_tokenizers(experts):
    ens = ls.Ensemble([experts["mistral_bl2"], experts["llama_sp"]])
    out = ens.generate([[{"role": "user", "content": "Hi"}]], max_new_tokens=6)
    assert isinstance(out[0], str)


# ------------------------------------------------------------------------- real vocabularies
REAL = ["gpt2", "llama2", "llama3", "qwen2", "phi3"]
TEXTS = ["Hello wörld 😀", "x = 12345\n\tif x:  pass", "日本語  spaces   end", "🚀🚀 a"]


@pytest.fixture(scope="module")
def real_experts(tmp_path_factory):
    if not (SHARED_DATA / "tokenizers").exists():
        pytest.skip("../shared/data/tokenizers is not present")
    from helpers import random_lm_for_tokenizer

    root = tmp_path_factory.mktemp("real")
    out = {}
    for k, name in enumerate(REAL):
        d = random_lm_for_tokenizer(str(SHARED_DATA / "tokenizers" / name), root / name, seed=10 + k)
        out[name] = ls.load_expert(d, dtype=torch.float64)
    return out


@pytest.mark.real_vocab
@pytest.mark.parametrize("name", REAL)
def test_real_vocab_byte_view(real_experts, name):
    e = real_experts[name]
    vb = e.vocab_bytes
    for text in TEXTS:
        ids = e.tokenizer(text, add_special_tokens=False)["input_ids"]
        got = b"".join(vb.token_bytes[i] or b"" for i in ids)
        assert got in (text.encode(), b" " + text.encode())
    assert vb.stop_ids, "every real tokenizer has an end-of-text token"


@pytest.mark.real_vocab
@pytest.mark.parametrize("name", ["llama2", "llama3"])
def test_real_vocab_exact_against_brute_force(real_experts, name):
    # inside a 4-byte character: byte fallback / byte-level pieces
    check_against_brute_force(real_experts[name], "😀1".encode()[:3], check_at=(0, 3))


@pytest.mark.real_vocab
def test_real_vocab_mixing_llama2_with_llama3(real_experts):
    pool = [real_experts["llama2"], real_experts["llama3"], real_experts["qwen2"]]
    ens = ls.Ensemble(pool, weights=[0.4, 0.4, 0.2])
    assert ens.unit == "byte"
    lp = ens.logprob(TEXTS[:2], [" 😀 ok", "\n  return 7"])
    assert all(np.isfinite(lp)) and all(x < 0 for x in lp)
    w = np.array([0.4, 0.4, 0.2])
    singles = np.array([ls.Ensemble(pool, weights=np.eye(3)[i]).logprob(TEXTS[:2], [" 😀 ok", "\n  return 7"])
                        for i in range(3)])
    assert np.all(np.array(lp) >= w @ singles - 1e-9)
    out = ens.generate(TEXTS, max_new_tokens=6)
    assert len(out) == len(TEXTS)


@pytest.mark.parametrize("text", [b" the quick brown fox", b" xyzzy q!", b"\xc3\xa9t\xc3\xa9 42"])
def test_heavy_pruning_revives_dormant_paths(e64, text):
    """With a harsh threshold most new paths stay dormant; a byte the live paths cannot explain
    revives them, so no byte the exact marginal allows gets probability zero."""
    from logit_swarm.align.bytes import ByteTrack

    e = e64["llama_sp"]
    tr = ByteTrack(e, beam=8, prune=0.5)
    st = tr.start([[e.start_id]], [b""])[0]
    total = 0.0
    for b in text:
        d = tr.distributions([st], require=[b])[0]
        assert np.isfinite(d[b])
        total += d[b]
        new = tr.advance([st], [b])[0]
        tr.release(st)
        st = new
    tr.release(st)
    assert tr.revived > 0
    assert len(e.store) == 0  # dormant parents were released too
    assert np.isfinite(total) and total < 0


def test_pruning_runs_fewer_forwards_than_bytes(tiny_dirs):
    """Mass-relative pruning runs the model for fewer paths than keeping the best paths ending at
    every byte (beam 8, no threshold), and the score stays close."""
    e = ls.load_expert(tiny_dirs["llama_sp"])
    text = " the quick brown fox jumps"
    rows, scores = [], []
    # An untrained model spreads its mass over many tokenizations of the whole text (covered
    # from the start), so the threshold that visibly prunes here is 1e-3.
    for prune in (0.0, 1e-3):
        e.forward_rows = 0
        scores.append(ls.Ensemble([e], unit="byte", byte_beam=8, byte_prune=prune).logprob(["x"], [text])[0])
        rows.append(e.forward_rows)
    assert rows[1] < rows[0]
    assert abs(scores[1] - scores[0]) < 0.05


@pytest.mark.parametrize("text", [b"x = {\n        'a':   1,\n\n    }\n", b"  \t\t  \n\n  ok"])
def test_harsh_pruning_never_gives_a_byte_zero_probability(experts, text):
    """beam 1 and a threshold no candidate can reach: dormant revival and, failing that,
    re-anchoring keep every byte of the text possible; every node is freed afterwards."""
    from logit_swarm.align.bytes import ByteTrack

    for name in ("gpt2_a", "llama_sp"):
        e = experts[name]
        tr = ByteTrack(e, beam=1, prune=0.999)
        st = tr.start([[e.start_id]], [b""])[0]
        for b in text:
            d = tr.distributions([st], require=[b])[0]
            assert np.isfinite(d[b])
            new = tr.advance([st], [b])[0]
            tr.release(st)
            st = new
        tr.release(st)
        assert len(e.store) == 0
