"""Real pretrained models nobody here trained (../shared/models, see its SOURCES.md):
stories260K (Llama, SentencePiece BPE with byte fallback, remove_extra_whitespaces),
TinyStories-656K (Llama, BPE without byte pieces: a 78-character alphabet, others <unk>) and
slm4096 (GPT-2, 54-character WordLevel, unknown characters read as ' ').

* one-hot weights reproduce each model's own log-likelihood (its own forward, float32,
  |Δ| < 1e-4) and its greedy text (``model.generate``);
* the three mix at byte level; text one of them cannot produce gets its mass from the others;
* the text view (align/view.py) is exact: walking the text through the ViewTrack gives, at every
  character boundary, the plain ByteTrack's distribution over the expert's view of the text with
  zero mass on what the view cannot produce next (renormalised).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import logit_swarm as ls
from logit_swarm.align.bytes import STOP, ByteTrack
from logit_swarm.align.prompt import split_prompt
from logit_swarm.align.view import SPACE, ViewTrack, make_byte_track, view_text

MODELS = Path(__file__).resolve().parents[1].parent / "shared" / "models"
NAMES = ["stories260K", "TinyStories-656K", "slm4096"]

pytestmark = pytest.mark.skipif(
    not all((MODELS / n / "config.json").exists() for n in NAMES),
    reason="../shared/models (stories260K, TinyStories-656K, slm4096) is not present",
)

# (context, continuation) each model can spell, from its own domain.
PAIRS = {
    "stories260K": ("Once upon a time, there was", " a little girl named Lily. She liked to play."),
    "TinyStories-656K": ("Once upon a time, there was", " a little girl named Lily. She liked to play."),
    "slm4096": ("Q: What is SLM?\nA:", " SLM is a Small Language Model trained on a single page"),
}


@pytest.fixture(scope="module")
def real():
    return {n: ls.load_expert(MODELS / n) for n in NAMES}


@pytest.fixture(scope="module")
def real64():
    return {n: ls.load_expert(MODELS / n, dtype=torch.float64) for n in NAMES}


def _own_loglik(e, ctx: str, cont: str) -> float:
    """The model's own log-likelihood of the continuation's tokens, from one forward pass over
    ``tokenizer(ctx + cont)`` (tokens inside the context condition)."""
    enc = e.tokenizer(ctx + cont, return_offsets_mapping=True)
    ids, offs = enc["input_ids"], enc["offset_mapping"]
    n_ctx = 0
    while n_ctx < len(ids) and offs[n_ctx][1] <= len(ctx):
        n_ctx += 1
    with torch.no_grad():
        lp = torch.log_softmax(e.model(torch.tensor([ids])).logits[0].float(), -1)
    return float(sum(lp[t - 1, ids[t]] for t in range(n_ctx, len(ids))))


@pytest.mark.parametrize("name", NAMES)
def test_one_hot_reproduces_own_loglik(real, name):
    e = real[name]
    ctx, cont = PAIRS[name]
    got = ls.Ensemble([e]).logprob([ctx], [cont])[0]
    assert abs(got - _own_loglik(e, ctx, cont)) < 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_one_hot_greedy_equals_generate(real, name):
    e = real[name]
    prompt = PAIRS[name][0]
    ids = e.encode(prompt)
    with torch.no_grad():
        gen = e.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                               max_new_tokens=24, do_sample=False, pad_token_id=0,
                               eos_token_id=list(e.stop_ids) or None)
    want = e.tokenizer.decode(gen[0, len(ids):].tolist(), skip_special_tokens=True)
    assert ls.Ensemble([e]).generate([prompt], max_new_tokens=24)[0] == want


def test_three_mix_at_byte_level(real):
    pool = [real[n] for n in NAMES]
    w = np.array([0.4, 0.4, 0.2])
    ens = ls.Ensemble(pool, weights=w)
    assert ens.unit == "byte"
    ctx = ["Once upon a time", "Q: What is SLM?\nA:"]
    cont = [" there was a girl", " SLM is a model"]  # every model can spell these
    mix = np.array(ens.logprob(ctx, cont))
    singles = np.array([ls.Ensemble(pool, weights=np.eye(3)[i]).logprob(ctx, cont) for i in range(3)])
    assert np.isfinite(mix).all() and np.isfinite(singles).all()
    assert np.all(mix >= w @ singles - 1e-9)  # Jensen
    out = ens.generate(["Once upon a time"], max_new_tokens=30)[0]
    assert isinstance(out, str) and out


def test_text_only_some_can_produce(real):
    """A second space (stories260K collapses runs), 'é' (not in TinyStories' or slm4096's
    alphabet): each expert alone scores -inf and says why; the mixture is finite, its mass
    there coming from the experts that can produce the byte."""
    pool = [real[n] for n in NAMES]
    ctx, cont = ["Lily saw a"], ["  big é"]
    for i, (name, rule) in enumerate(zip(NAMES, ("collapses runs of spaces", "outside its alphabet",
                                                 "outside its alphabet"))):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            alone = ls.Ensemble(pool, weights=np.eye(3)[i]).logprob(ctx, cont)[0]
        assert alone == -np.inf
        msgs = [str(c.message) for c in caught if f"expert {name!r} gives" in str(c.message)]
        assert len(msgs) == 1 and rule in msgs[0], msgs
    w = np.array([0.5, 0.3, 0.2])
    table = ls.Ensemble(pool, weights=w).table(ctx, cont, keep_full=True)
    assert table.full[1, 0, SPACE] == -np.inf  # the second space: stories260K gives it nothing
    second = table.unit_scores(w[None])[0, 1]
    want = np.log(w[1] * np.exp(table.full[1, 1, SPACE]) + w[2] * np.exp(table.full[1, 2, SPACE]))
    assert second == pytest.approx(want, abs=1e-9)
    assert np.isfinite(table.logprob(w[None])[0, 0])


def test_make_byte_track_picks_the_view(real):
    assert isinstance(make_byte_track(real["stories260K"]), ViewTrack)
    assert isinstance(make_byte_track(real["slm4096"]), ViewTrack)
    assert real["stories260K"].vocab_bytes.rules.collapse_spaces
    assert real["slm4096"].vocab_bytes.rules.unk_bytes == b" "
    assert real["TinyStories-656K"].vocab_bytes.rules.unk_bytes is None


# (prompt, text) that exercise each model's rules: leading spaces, runs, characters outside.
VIEW_CASES = {
    "stories260K": ("", "  Once  upon   a time, é😀 ran."),
    "TinyStories-656K": ("", " Lily saw é and 😀\tran."),
    "slm4096": ("Q:", " What is SLM? Jé! ok"),
}


def _expected_mask(rules, view: bytes, dummy: bool) -> np.ndarray:
    """Units the view cannot produce after ``view`` (its bytes after the prompt's start)."""
    m = np.zeros(257, dtype=bool)
    for b in range(256):
        if rules.alphabet is not None:
            m[b] = not any(c.encode()[0] == b for c in rules.alphabet)
    body = view[1:] if dummy else view
    if (rules.collapse_spaces and view.endswith(b" ")) or (rules.strip_leading_spaces and not body.strip(b" ")):
        m[SPACE] = True
    m[STOP] = False
    return m


@pytest.mark.parametrize("name", NAMES)
def test_view_track_is_the_plain_track_on_the_view(real64, name):
    e = real64[name]
    vb, rules = e.vocab_bytes, e.vocab_bytes.rules
    prompt, text = VIEW_CASES[name]
    head, tail = split_prompt(e, e.encode(prompt), prompt == "")
    # Same pruning on both sides: the inner track gets the same calls as the plain one, so the
    # two must agree exactly (the exact marginal itself is checked by brute force elsewhere).
    vt = make_byte_track(e)
    plain = ByteTrack(e)
    vs = vt.start([head], [tail])[0]
    ps = plain.start([head], [tail])[0]
    fed = b""
    for k, ch in enumerate(text + "\0"):
        view = view_text(rules, prompt + text[:k], complete=False)[len(view_text(rules, prompt, complete=False)):]
        for b in view[len(fed):]:  # bring the plain track to the view of text[:k]
            new = plain.advance([ps], [b])[0]
            plain.release(ps)
            ps = new
        fed = view
        got = vt.distributions([vs])[0]
        want = plain.distributions([ps])[0].copy()
        seen = tail + view if prompt == "" else view  # with an empty prompt the tail is the dummy space
        mask = _expected_mask(rules, seen, vb.dummy_prefix and prompt == "")
        want[mask] = -np.inf
        fin = np.isfinite(want)
        want[fin] -= np.log(np.exp(want[fin]).sum())
        assert np.array_equal(np.isfinite(got), fin), (name, k)
        assert np.max(np.abs(got[fin] - want[fin])) < 1e-12, (name, k)
        if k == len(text):
            break
        for b in ch.encode():
            new = vt.advance([vs], [b])[0]
            vt.release(vs)
            vs = new
    vt.release(vs)
    plain.release(ps)
    assert len(e.store) == 0  # every node freed by both tracks


BOS = {"stories260K": ["<s>"], "TinyStories-656K": ["<|start_story|>"], "slm4096": []}  # SOURCES.md


@pytest.mark.parametrize("name", NAMES)
def test_bos_rule_from_own_files(real, name, tmp_path):
    """Each model's BOS rule matches what transformers does for it (and its SOURCES.md), and is
    stated in the recipe and in the server's model card."""
    from logit_swarm.recipe import recipe_dict
    from logit_swarm.serve.protocol import ServedModel, model_card

    e = real[name]
    rule = e.bos_rule()
    assert rule["adds"] == BOS[name], rule
    ids = e.tokenizer("Once", add_special_tokens=True)["input_ids"]
    assert e.encode("Once") == ids
    assert ids[: len(BOS[name])] == e.tokenizer.convert_tokens_to_ids(BOS[name])
    if not BOS[name]:
        assert rule["empty_text"] is None  # slm4096 has no BOS/EOS: a prompt needs text
    ens = ls.Ensemble([e])
    assert recipe_dict(ens)["experts"][0]["bos"] == rule
    card = model_card(ServedModel(name="m", unit="token", n_experts=1, n_units=e.vocab_size, weights=[1.0],
                                  mode="probs", expert_names=[e.name], expert_bos=[rule]), 0)
    assert card["bos"] == [rule]
