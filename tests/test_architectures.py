"""Architecture conformance matrix: tiny random configs of the families people combine.

For each family, on prompts longer than its sliding window (where it has one), with batches of
mixed lengths split over several cache groups (``max_batch=2``) whose rows fork and finish at
different steps: one-hot decoding equals the model's own greedy ``generate``, and scoring equals
its own forward pass (float32, |Δ| < 1e-4). Plus the sliding-window regression of issue 11
point 3 and the load-time refusal of caches the engine cannot fork.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import train_tokenizer
from test_token_engine import own_loglik

import logit_swarm as ls
from logit_swarm.decode import generate_rows

WINDOW = 4  # sliding window of every family that has one: far shorter than the prompts

# family -> (config class name, extra config fields). Sizes are tiny so the matrix takes seconds.
ARCHS = {
    "llama": ("LlamaConfig", {}),
    "mistral": ("MistralConfig", {"sliding_window": WINDOW}),
    "gemma2": ("Gemma2Config", {"sliding_window": WINDOW, "head_dim": 8, "final_logit_softcapping": 3.0,
                                "attn_logit_softcapping": 5.0,
                                "layer_types": ["sliding_attention", "full_attention"]}),
    "gemma3": ("Gemma3TextConfig", {"sliding_window": WINDOW, "head_dim": 8, "final_logit_softcapping": 3.0,
                                    "layer_types": ["sliding_attention", "full_attention"]}),
    "qwen2": ("Qwen2Config", {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 1}),
    "qwen3": ("Qwen3Config", {"head_dim": 8, "use_sliding_window": True, "sliding_window": WINDOW,
                              "max_window_layers": 1}),
    "phi3": ("Phi3Config", {"sliding_window": WINDOW, "pad_token_id": None}),
    "gpt2": ("GPT2Config", {}),
    "gpt_neox": ("GPTNeoXConfig", {"rotary_pct": 0.5}),
    "olmo2": ("Olmo2Config", {}),
    "falcon": ("FalconConfig", {"new_decoder_architecture": True, "num_kv_heads": 2}),
}
SLIDING = {"mistral", "gemma2", "gemma3", "qwen2", "qwen3", "phi3"}

PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello",
    "def add(a, b):\n    return a + b\n",
    "Alice went to the market and bought 12 apples",
    "In 1999",
]


def tiny_config(arch: str, tok, positions: int = 256):
    """A random-initialisable config of ``arch`` over ``tok`` (2 layers, width 32)."""
    import transformers

    cls_name, extra = ARCHS[arch]
    common = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id, initializer_range=0.2, tie_word_embeddings=False)
    if arch == "gpt2":
        kw = dict(n_positions=positions, n_embd=32, n_layer=2, n_head=4)
    else:
        kw = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=positions)
        if arch not in ("gpt_neox", "falcon"):
            kw["num_key_value_heads"] = 2
    kw.update(common)
    kw.update(extra)
    return getattr(transformers, cls_name)(**kw)


def build(arch: str, tok, out, seed: int = 0, **overrides):
    """Save a random tiny ``arch`` model with ``tok`` to ``out``; returns the directory."""
    from transformers import AutoModelForCausalLM

    cfg = tiny_config(arch, tok)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return str(out)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tokenizer("bytelevel", 320, tmp_path_factory.mktemp("arch_tok"))


@pytest.fixture(scope="module")
def pairs(tok, tmp_path_factory):
    """arch -> two loaded experts (different seeds) of that family; max_batch=2 forces
    several cache groups of different lengths per call."""
    root = tmp_path_factory.mktemp("arch")
    out = {}
    for arch in ARCHS:
        a = build(arch, tok, root / f"{arch}_a", seed=1)
        b = build(arch, tok, root / f"{arch}_b", seed=2)
        out[arch] = (ls.load_expert(a, max_batch=2), ls.load_expert(b, max_batch=2))
    return out


def own_greedy(e, prompt: str, n: int) -> list[int]:
    """The model's own greedy ``generate`` on one unpadded prompt (token ids, EOS included)."""
    enc = e.tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = e.model.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=e.tokenizer.pad_token_id,
                               eos_token_id=list(e.stop_ids) or None)
    return out[0, enc["input_ids"].shape[1]:].tolist()


@pytest.mark.parametrize("arch", list(ARCHS))
def test_layout_is_read_from_the_config(pairs, arch):
    e = pairs[arch][0]
    assert len(e.layer_windows) == 2
    if arch in ("gemma2", "gemma3", "qwen2", "qwen3"):
        assert e.layer_windows == [WINDOW, None] if arch.startswith("gemma") else [None, WINDOW]
    elif arch in SLIDING:
        assert e.layer_windows == [WINDOW, WINDOW]
    else:
        assert e.layer_windows == [None, None]


@pytest.mark.parametrize("arch", list(ARCHS))
def test_one_hot_decoding_equals_own_greedy_generate(pairs, arch):
    """Two experts of one family; each prompt twice, once one-hot on each expert: the two rows
    share the prompt state and fork when their picks differ; per-row max_new_tokens make rows
    finish at different steps."""
    a, b = pairs[arch]
    prompts = [p for p in PROMPTS for _ in (0, 1)]
    W = np.array([[1.0, 0.0], [0.0, 1.0]] * len(PROMPTS))
    max_new = [6 + (r % 5) * 2 for r in range(len(prompts))]
    outs = generate_rows([a, b], "token", prompts, W, "probs", max_new)
    for r, (p, o) in enumerate(zip(prompts, outs)):
        e = a if W[r, 0] == 1 else b
        want = own_greedy(e, p, max_new[r])
        assert o.units == want, (arch, r, p)
    if arch in SLIDING:
        assert max(len(e.encode(p)) for p in PROMPTS) > 2 * WINDOW


@pytest.mark.parametrize("arch", list(ARCHS))
def test_one_hot_scoring_equals_own_forward(pairs, arch):
    e = pairs[arch][0]
    ctx = [p[: len(p) // 2] for p in PROMPTS] + [""]
    cont = [p[len(p) // 2:] for p in PROMPTS] + ["Numbers: 1 2 3 4 5 6 7"]
    got = ls.Ensemble([e], weights=[1.0]).logprob(ctx, cont)
    for g, c, x in zip(got, ctx, cont):
        assert abs(g - own_loglik(e, c, x)) < 1e-4, (arch, c, x)


def test_sliding_window_regression_issue_11_point_3(tok, tmp_path):
    """Issue 11 point 3 exactly: a tiny Mistral with sliding_window=4, prompts longer than the
    window, batched rows from groups of different lengths. Decoding used to fail in
    experts/cache.py with "Sizes of tensors must match" (the cache keeps window-1 keys for
    sliding layers while the stored mask keeps the full length)."""
    path = build("mistral", tok, tmp_path / "mistral_sw4", seed=3)
    e = ls.load_expert(path, max_batch=2)
    assert e.layer_windows == [4, 4]
    prompts = ["Hello world, the quick brown fox", "The", "def add(a, b):\n    return a + b\n",
               "Numbers: 0 1 2 3"]
    assert all(len(e.encode(p)) > 4 for p in prompts if p != "The")
    got = ls.Ensemble([e], weights=[1.0]).generate(prompts, max_new_tokens=8, return_details=True)
    for p, g in zip(prompts, got):
        assert g.units == own_greedy(e, p, 8)
    assert len(e.store) == 0  # every node released


def test_byte_level_sliding_window_experts_run(pairs, tok, tmp_path):
    """Byte units gather paths from many cache groups: a Gemma-2-shaped and a Mistral-shaped
    expert over different tokenizers mix at byte level, with a one-hot row equal to the byte
    view of the Gemma expert's own distribution (probabilities sum to one)."""
    tok_sp = train_tokenizer("sentencepiece", 420, tmp_path / "tok_sp")
    g = ls.load_expert(build("gemma2", tok_sp, tmp_path / "gemma2_sp", seed=4))
    m = pairs["mistral"][0]
    ens = ls.Ensemble([g, m], weights=[0.5, 0.5])
    assert ens.unit == "byte"
    texts = ens.generate(PROMPTS[:3], max_new_tokens=12)
    assert len(texts) == 3
    lp = ens.logprob(PROMPTS[:3], [" and then", " world", "x"])
    assert all(np.isfinite(v) and v < 0 for v in lp)
    assert len(g.store) == 0 and len(m.store) == 0


def test_unforkable_caches_are_refused_at_load(tok, tmp_path):
    """A model whose cache is not per-token keys/values (here: a linear-attention layer
    declared in layer_types) is refused when it is loaded, naming the layer, never mid-run."""
    from transformers import Qwen3NextConfig

    cfg = Qwen3NextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_experts=2,
                          num_experts_per_tok=1, moe_intermediate_size=16, shared_expert_intermediate_size=16,
                          linear_num_value_heads=2, linear_num_key_heads=2, linear_key_head_dim=8,
                          linear_value_head_dim=8, layer_types=["linear_attention", "full_attention"],
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(cfg)
    with pytest.raises(ValueError, match="layer 0 is a 'linear_attention' layer.*cannot fork"):
        ls.experts.hf.HFExpert(model, tok, name="hybrid")
    path = tmp_path / "hybrid"
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    with pytest.raises(ValueError, match="expert 'hybrid'.*linear_attention"):
        ls.load_expert(str(path))


# ------------------------------------------------------------------ model/config edge cases
def test_eos_token_id_list_stops_at_any_of_them(tok, tmp_path):
    """Models whose eos_token_id is a list (Llama-3 instruct, Gemma): every id ends generation,
    as in the model's own generate."""
    from transformers import AutoModelForCausalLM

    path = build("llama", tok, tmp_path / "eos_list", seed=5)
    e0 = ls.load_expert(path)
    probe = ls.Ensemble([e0], weights=[1.0]).generate(PROMPTS, max_new_tokens=6, return_details=True)
    second = probe[0].units[2]  # a token greedy decoding picks: make it a second EOS
    cfg_model = AutoModelForCausalLM.from_pretrained(path)
    cfg_model.config.eos_token_id = [tok.eos_token_id, second]
    cfg_model.generation_config.eos_token_id = [tok.eos_token_id, second]
    cfg_model.save_pretrained(path)
    e = ls.load_expert(path)
    assert set(e.stop_ids) == {tok.eos_token_id, second}
    got = ls.Ensemble([e], weights=[1.0]).generate(PROMPTS, max_new_tokens=6, return_details=True)
    assert got[0].finish_reason == "stop" and got[0].units[-1] == second and len(got[0].units) == 3
    for p, g in zip(PROMPTS, got):
        assert g.units == own_greedy(e, p, 6)


def test_padded_embedding_rows_get_no_mass_and_no_bytes(tok, tmp_path):
    """config.vocab_size > len(tokenizer) (rows padded to a multiple of 64, as many checkpoints
    do): the extra logits are cut before the softmax, so every distribution is over real
    tokens only, and the byte view has no entry for them."""
    path = build("llama", tok, tmp_path / "padded", seed=6, vocab_size=len(tok) + 37)
    e = ls.load_expert(path)
    assert e.model.get_output_embeddings().weight.shape[0] == len(tok) + 37
    assert e.vocab_size == len(tok) and len(e.vocab_bytes.token_bytes) == len(tok)
    ids = e.encode(PROMPTS[0])
    nodes, lp = e.prefill([ids])
    e.store.release(nodes[0])
    assert lp.shape == (1, len(tok))
    with torch.no_grad():
        logits = e.model(torch.tensor([ids])).logits[0, -1, : len(tok)].double()
    assert torch.allclose(lp[0].double(), torch.log_softmax(logits, -1), atol=1e-5)
    assert abs(float(lp[0].double().exp().sum()) - 1) < 1e-5
    ens = ls.Ensemble([e], weights=[1.0])
    assert all(max(g.units) < len(tok) for g in ens.generate(PROMPTS, max_new_tokens=8, return_details=True))


def test_pad_token_missing(tmp_path):
    """A tokenizer with no pad token: batches of mixed lengths still decode (padding is the
    engine's mask, never a pad id), equal to the model's own unbatched greedy generate."""
    from transformers import AutoTokenizer

    t = train_tokenizer("sentencepiece", 420, tmp_path / "tok_nopad")
    t = AutoTokenizer.from_pretrained(str(tmp_path / "tok_nopad"))
    t.pad_token = None
    assert t.pad_token_id is None
    e = ls.load_expert(build("mistral", t, tmp_path / "nopad", seed=7), max_batch=2)
    assert e.tokenizer.pad_token_id is None
    got = ls.Ensemble([e], weights=[1.0]).generate(PROMPTS, max_new_tokens=6, return_details=True)
    for p, g in zip(PROMPTS, got):
        assert g.units == own_greedy(e, p, 6)


def test_readme_byte_level_example_runs(tok, tmp_path):
    """The README's byte-level example, run as written on tiny random models of the same
    shapes (Gemma-2 over a SentencePiece-style BPE, Mistral over a byte-level BPE)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"<!-- example: gemma2-mistral -->\n```python\n(.*?)```", readme, re.S)
    assert block, "README lost its byte-level example block"
    code = block.group(1)
    tok_sp = train_tokenizer("sentencepiece", 420, tmp_path / "tok_sp")
    gemma = build("gemma2", tok_sp, tmp_path / "gemma", seed=8)
    mistral = build("mistral", tok, tmp_path / "mistral", seed=9)
    for name, path in (("~/models/gemma-2-2b", gemma), ("~/models/Mistral-7B-v0.1", mistral)):
        assert f'"{name}"' in code
        code = code.replace(f'"{name}"', repr(path))
    exec(compile(code, "README.md", "exec"), {})


@pytest.mark.parametrize("arch", ["mistral", "gemma2"])
def test_sliding_window_exact_byte_marginal_against_brute_force(tok, tmp_path, arch):
    """The exact byte-level tracker keeps token paths of different lengths in different cache
    groups, so every step gathers sliding layers of several lengths. With a window of 3 and
    texts of up to 6 tokens, its next-byte distributions equal brute-force enumeration over
    uncached forwards (float64, |Δ| < 1e-9)."""
    from test_bytes import check_against_brute_force

    path = build(arch, tok, tmp_path / arch, seed=10, sliding_window=3)
    e = ls.load_expert(path, dtype=torch.float64)
    assert 3 in e.layer_windows
    for text in (b"the q", b"Hello"):
        check_against_brute_force(e, text)
    assert len(e.store) == 0


def test_probe_cache_checks():
    """The load-time probe: a forward that returns another cache class, a layout that differs
    from the config's, or layers without plain key tensors are refused with the expert's name."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    from logit_swarm.experts.cache import check_cache

    class OwnCache:  # e.g. a state-space model's own cache class
        pass

    with pytest.raises(ValueError, match="expert 'x': its forward returns a OwnCache, not a DynamicCache"):
        check_cache(OwnCache(), None, "x")
    layer = DynamicLayer()
    k = torch.zeros(1, 2, 3, 4)
    layer.update(k, k)
    cache = DynamicCache()
    cache.layers = [layer]
    assert check_cache(cache, None, "x") == [None] == check_cache(cache, [None], "x")
    with pytest.raises(ValueError, match=r"layer windows \[None\] where its config declares \[4\]"):
        check_cache(cache, [4], "x")
    cache.layers = [DynamicLayer()]  # never filled: no key tensor
    with pytest.raises(ValueError, match="no plain"):
        check_cache(cache, None, "x")
