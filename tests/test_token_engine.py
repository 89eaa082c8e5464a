"""Shared-tokenizer engine: one-hot reproduces the expert, mixtures match a float64 loop,
batching, sharing, seeding, tables, recipes."""

import numpy as np
import pytest
import torch

import logit_swarm as ls

ARCHS = ["gpt2_a", "llama_bl", "mistral_bl2", "qwen2_bl2", "gemma_sp", "llama_sp"]
CTX = ["Hello", "The quick brown", "", "def add(a, b):\n   ", "café"]
CONT = [" world", " fox jumps", "Numbers: 1 2", " return a + b", " naïve 😀"]


def own_loglik(e, ctx, cont, dtype=torch.float32):
    """The model's own canonical log-likelihood: one forward of the canonical tokens."""
    enc = e.tokenizer(ctx + cont, return_offsets_mapping=True)
    ids, offs = enc["input_ids"], enc["offset_mapping"]
    n = 0
    while n < len(ids) and offs[n][1] <= len(ctx):
        n += 1
    if n == 0:
        ids, n = [e.start_id] + ids, 1
    with torch.no_grad():
        logits = e.model.to(dtype)(torch.tensor([ids])).logits[0].to(torch.float64)
    e.model.to(torch.float32)
    lp = torch.log_softmax(logits, -1)
    return sum(lp[t - 1, ids[t]].item() for t in range(n, len(ids)))


@pytest.mark.parametrize("name", ARCHS)
def test_one_hot_logprob_equals_model(experts, name):
    e = experts[name]
    ens = ls.Ensemble([e], weights=[1.0])
    got = ens.logprob(CTX, CONT)
    for g, c, x in zip(got, CTX, CONT):
        assert abs(g - own_loglik(e, c, x)) < 1e-3, (c, x)


@pytest.mark.parametrize("name", ARCHS)
def test_one_hot_greedy_equals_model_generate(experts, name):
    e = experts[name]
    other = experts["gpt2_b"] if e.fingerprint == experts["gpt2_a"].fingerprint else None
    pool = [e] if other is None or other is e else [e, other]
    ens = ls.Ensemble(pool, weights=[1.0] + [0.0] * (len(pool) - 1))
    prompts = ["Hello world", "The quick brown fox"]
    got = ens.generate(prompts, max_new_tokens=12)
    for p, g in zip(prompts, got):
        enc = e.tokenizer(p, return_tensors="pt")
        out = e.model.generate(**enc, max_new_tokens=12, do_sample=False,
                               pad_token_id=e.tokenizer.pad_token_id)
        want = e.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        assert g == want


def _full_dists(e, ids):
    with torch.no_grad():
        e.model.to(torch.float64)
        lp = torch.log_softmax(e.model(torch.tensor([ids])).logits[0], -1)
        e.model.to(torch.float32)
    return lp.numpy()


@pytest.mark.parametrize("mode", ["probs", "logits"])
def test_mixture_matches_float64_loop(experts, mode):
    pool = [experts["gpt2_a"], experts["gpt2_b"], experts["llama_bl"]]
    w = np.array([0.5, 0.3, 0.2]) if mode == "probs" else np.array([1.2, -0.4, 0.5])
    ens = ls.Ensemble(pool, weights=w, mode=mode)
    assert ens.unit == "token"
    got = ens.logprob(CTX, CONT)
    from logit_swarm.mixing import mix_reference
    from logit_swarm.score import _token_pairs

    for k, (c, x) in enumerate(zip(CTX, CONT)):
        prefix, cont = _token_pairs(pool[0], [c], [x])[0]
        ids = prefix + cont
        dists = [_full_dists(e, ids) for e in pool]
        ref = 0.0
        for t in range(len(prefix), len(ids)):
            m = mix_reference(np.stack([d[t - 1] for d in dists]), w, mode)
            ref += m[ids[t]]
        assert abs(got[k] - ref) < 1e-3


def test_jensen_token(experts):
    pool = [experts["gpt2_a"], experts["gpt2_b"], experts["llama_bl"]]
    w = np.array([0.2, 0.5, 0.3])
    mix = ls.Ensemble(pool, weights=w).logprob(CTX, CONT)
    singles = np.array([ls.Ensemble(pool, weights=np.eye(3)[i]).logprob(CTX, CONT) for i in range(3)])
    assert np.all(np.array(mix) >= w @ singles - 1e-6)


def test_table_equals_logprob_and_costs_no_forward(experts):
    pool = [experts["gpt2_a"], experts["gpt2_b"], experts["llama_bl"]]
    for mode in ("probs", "logits"):
        ens = ls.Ensemble(pool, mode=mode)
        table = ens.table(CTX, CONT, keep_full=True)
        calls = [e.forward_calls for e in pool]
        rng = np.random.default_rng(0)
        W = rng.dirichlet(np.ones(3), size=50) if mode == "probs" else rng.normal(size=(50, 3))
        many = table.logprob(W, mode)
        assert [e.forward_calls for e in pool] == calls  # no forward pass for 50 vectors
        for i in (0, 17, 49):
            direct = ls.Ensemble(pool, weights=W[i], mode=mode).logprob(CTX, CONT)
            np.testing.assert_allclose(many[i], direct, atol=1e-9)


def test_batch_invariance_greedy(experts):
    pool = [experts["gpt2_a"], experts["llama_bl"]]
    ens = ls.Ensemble(pool, weights=[0.6, 0.4])
    needle = "The quick brown fox"
    alone = ens.generate([needle], max_new_tokens=16)[0]
    fillers = ["Hello", "def add(a, b):\n    return", "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100", "x", "café naïve"]
    rng = np.random.default_rng(3)
    for _ in range(3):
        pos = int(rng.integers(0, len(fillers) + 1))
        batch = fillers[:pos] + [needle] + fillers[pos:]
        assert ens.generate(batch, max_new_tokens=16)[pos] == alone


def test_per_row_weights_equal_separate_calls(experts):
    pool = [experts["gpt2_a"], experts["gpt2_b"]]
    ens = ls.Ensemble(pool)
    W = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.9, 0.1]])
    prompts = ["Hello world"] * 4
    together = ens.generate(prompts, max_new_tokens=10, weights=W)
    for i in range(4):
        assert together[i] == ls.Ensemble(pool, weights=W[i]).generate([prompts[i]], max_new_tokens=10)[0]


def test_shared_prompt_prefilled_once(experts):
    e1, e2 = experts["gpt2_a"], experts["gpt2_b"]
    ens = ls.Ensemble([e1, e2])
    rows_before = e1.forward_rows
    W = np.tile([[0.5, 0.5]], (8, 1))
    out = ens.generate(["Hello world"] * 8, max_new_tokens=5, weights=W)
    assert len(set(out)) == 1
    # 8 identical rows with identical weights: one state per step, 1 prefill row + 4 decode rows.
    assert e1.forward_rows - rows_before == 5


def test_seeded_sampling(experts):
    ens = ls.Ensemble([experts["gpt2_a"], experts["gpt2_b"]])
    p = ["Hello world"] * 3
    a = ens.generate(p, max_new_tokens=12, temperature=1.0, seed=7)
    b = ens.generate(p, max_new_tokens=12, temperature=1.0, seed=7)
    c = ens.generate(p, max_new_tokens=12, temperature=1.0, seed=8)
    assert a == b
    assert a != c
    assert len(set(a)) > 1  # rows draw from their own streams


def test_stop_strings_and_details(experts):
    ens = ls.Ensemble([experts["gpt2_a"]])
    full = ens.generate(["Hello"], max_new_tokens=20, return_details=True)[0]
    assert len(full.units) == len(full.logprobs) <= 20
    if len(full.text) > 3:
        stop = full.text[2:4]
        cut = ens.generate(["Hello"], max_new_tokens=20, stop=[stop], return_details=True)[0]
        assert cut.text == full.text[: full.text.find(stop)]
        assert cut.finish_reason == "stop"


def test_chat_prompts_use_each_experts_template(experts):
    e = experts["mistral_bl2"]
    msgs = [{"role": "user", "content": "Hello"}]
    ids = e.render_chat(msgs)
    assert e.tokenizer.decode(ids).startswith("<|user|>Hello")
    ens = ls.Ensemble([e, experts["qwen2_bl2"]])
    out = ens.generate([msgs], max_new_tokens=5)
    text_prompt = e.tokenizer.decode(ids)
    assert out == ens.generate([text_prompt], max_new_tokens=5)


def test_recipe_round_trip(experts, tmp_path):
    ens = ls.Ensemble([experts["gpt2_a"], experts["llama_sp"]], weights=[0.7, 0.3], mode="logits",
                      decoding={"max_new_tokens": 8}, provenance={"task": "unit-test"})
    p = ens.save(tmp_path / "r.json")
    back = ls.Ensemble.load(p)
    assert back.mode == "logits" and back.unit == ens.unit == "byte"
    np.testing.assert_allclose(back.weights, ens.weights)
    assert back.decoding == {"max_new_tokens": 8} and back.provenance == {"task": "unit-test"}
    assert back.generate(["Hello"], max_new_tokens=6) == ens.generate(["Hello"], max_new_tokens=6)


# ------------------------------------------------------------------------------ bad input
def test_errors(experts, tiny_dirs, tmp_path):
    e1, e2 = experts["gpt2_a"], experts["gpt2_b"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ls.load_expert(tmp_path / "nope")
    with pytest.raises(ValueError, match="2 weights for 3"):
        ls.Ensemble([e1, e2, e1], weights=[0.5, 0.5])
    with pytest.raises(ValueError, match="NaN"):
        ls.Ensemble([e1, e2], weights=[0.5, float("nan")])
    with pytest.raises(ValueError, match="positive"):
        ls.Ensemble([e1, e2], weights=[0.0, -1.0])
    with pytest.raises(ValueError, match="unknown mixing mode"):
        ls.Ensemble([e1, e2], mode="average")
    ens = ls.Ensemble([e1, e2])
    with pytest.raises(ValueError, match="no prompts"):
        ens.generate([])
    with pytest.raises(ValueError, match="context window"):
        ens.generate(["word " * 600], max_new_tokens=4, truncation="error")
    with pytest.warns(ls.TruncationWarning, match="saw only the end"):
        out = ens.generate(["word " * 600], max_new_tokens=4)  # default "left" (issue 11)
    assert len(out) == 1


def test_pickle_weights_refused(tiny_dirs, tmp_path):
    import shutil

    from safetensors.torch import load_file

    d = tmp_path / "bin_only"
    shutil.copytree(tiny_dirs["gpt2_a"], d)
    state = load_file(str(d / "model.safetensors"))
    torch.save(state, d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="allow_pickle"):
        ls.load_expert(d)


def test_different_devices_refused(experts):
    class Fake:
        name, device, fingerprint, vocab_size = "fake", torch.device("meta"), "x", 1

    with pytest.raises(ValueError, match="different devices"):
        ls.Ensemble([experts["gpt2_a"], Fake()])


def test_non_finite_logits_name_the_expert(tiny_dirs):
    e = ls.load_expert(tiny_dirs["gpt2_a"], name="broken")
    with torch.no_grad():
        e.model.lm_head.weight[3, 0] = float("nan")
    with pytest.raises(RuntimeError, match="'broken' produced non-finite"):
        ls.Ensemble([e]).generate(["Hello"], max_new_tokens=2)
