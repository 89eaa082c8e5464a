"""The tokenizer side: the byte view of tokenizers built the ordinary way, refusals, and the
vocabulary/config edge cases (pad token missing, eos_token_id a list, padded embedding rows,
no chat template)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import CORPUS, make_model
from test_bytes import check_against_brute_force

import logit_swarm as ls
from logit_swarm.align.view import UnsupportedTokenizer, text_rules, view_text
from logit_swarm.align.vocab import analyse_vocab


def _point1_tokenizer(out):
    """Issue 11 point 1, built exactly as reported: a SentencePiece-style BPE whose trainer gets
    the 256 byte-fallback pieces as special tokens, so they land in added_tokens with special=true."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(
        vocab_size=560, show_progress=False,
        special_tokens=["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)],
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="</s>")
    fast.save_pretrained(str(out))
    return fast


@pytest.fixture(scope="module")
def point1(tmp_path_factory):
    root = tmp_path_factory.mktemp("point1")
    tok = _point1_tokenizer(root / "tok")
    return make_model("llama", tok, root / "model", seed=11)


def test_point1_byte_fallback_flagged_special_has_bytes(point1):
    e = ls.load_expert(point1)
    data = json.loads(e.tokenizer.backend_tokenizer.to_str())
    flagged = {t["content"]: t["id"] for t in data["added_tokens"] if t["special"]}
    assert "<0x48>" in flagged  # the reported layout: byte pieces are special added tokens
    pieces = e.tokenizer.tokenize("Quokka Ж")  # Q and Ж are not in the corpus: byte fallback
    assert "<0x51>" in pieces and "<0xD0>" in pieces
    assert e.tokenizer.decode(e.tokenizer("Quokka Ж")["input_ids"], skip_special_tokens=False) == "Quokka Ж"
    vb = e.vocab_bytes
    for b in range(256):
        assert vb.token_bytes[flagged[f"<0x{b:02X}>"]] == bytes([b])
    assert vb.token_bytes[flagged["<s>"]] is None and flagged["</s>"] in vb.stop_ids


def test_point1_mixes_at_byte_level(point1, tiny_dirs):
    e = ls.load_expert(point1, dtype=torch.float64)
    other = ls.load_expert(tiny_dirs["gpt2_a"], dtype=torch.float64)
    ens = ls.Ensemble([e, other], weights=[0.5, 0.5])
    assert ens.unit == "byte"
    lp = ens.logprob(["Hello", "Zebra"], [" world", " 😀 12"])
    assert all(np.isfinite(lp)) and all(x < 0 for x in lp)
    assert isinstance(ens.generate(["Hello"], max_new_tokens=6)[0], str)
    check_against_brute_force(e, b"Hel", check_at=(0, 1, 3))


def _tokenizer_with(normalizer=None, pre_tokenizer=None, model="BPE"):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if model == "WordPiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        trainer = trainers.WordPieceTrainer(vocab_size=200, special_tokens=["[UNK]"], show_progress=False)
    else:
        tok = Tokenizer(models.BPE())
        trainer = trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.pre_tokenizer = pre_tokenizer or pre_tokenizers.ByteLevel(add_prefix_space=False)
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok)


@pytest.mark.parametrize("kind, named", [
    ("lowercase", "normalizer Lowercase"),
    ("nfkc", "normalizer NFKC"),
    ("nfkd", "normalizer NFKD"),
    ("strip_accents", "normalizer StripAccents"),
    ("wordpiece", "model WordPiece"),
    ("whitespace", "pre_tokenizer WhitespaceSplit"),
])
def test_refusals_name_the_component(kind, named):
    from tokenizers import normalizers, pre_tokenizers

    build = {
        "lowercase": lambda: _tokenizer_with(normalizers.Lowercase()),
        "nfkc": lambda: _tokenizer_with(normalizers.NFKC()),
        "nfkd": lambda: _tokenizer_with(normalizers.NFKD()),
        "strip_accents": lambda: _tokenizer_with(normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents()])),
        "wordpiece": lambda: _tokenizer_with(pre_tokenizer=pre_tokenizers.Whitespace(), model="WordPiece"),
        "whitespace": lambda: _tokenizer_with(pre_tokenizer=pre_tokenizers.WhitespaceSplit()),
    }
    with pytest.raises(UnsupportedTokenizer) as info:
        analyse_vocab(build[kind]())
    msg = str(info.value)
    assert named in msg and "token level" in msg and "another expert" in msg


def test_refusal_names_the_expert(tmp_path):
    from tokenizers import normalizers

    tok = _tokenizer_with(normalizers.Lowercase())
    tok.eos_token = tok.bos_token = tok.pad_token = tok.convert_ids_to_tokens(0)
    e = ls.load_expert(make_model("gpt2", tok, tmp_path / "lower", seed=3), name="lower")
    with pytest.raises(UnsupportedTokenizer, match="expert 'lower'.*normalizer Lowercase"):
        _ = e.vocab_bytes


def test_text_rules_of_remove_extra_whitespaces():
    """stories260K's converted SentencePiece normaliser: leading spaces, runs, trailing spaces."""
    data = {"model": {"type": "BPE"}, "normalizer": {"type": "Sequence", "normalizers": [
        {"type": "Replace", "pattern": {"Regex": "\\A +"}, "content": ""},
        {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "},
        {"type": "Prepend", "prepend": "\u2581"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
        {"type": "Replace", "pattern": {"Regex": "\u2581+\\z"}, "content": ""}]}}
    r = text_rules(data)
    assert (r.strip_leading_spaces, r.collapse_spaces, r.strip_trailing_spaces) == (True, True, True)
    assert view_text(r, "  a   b  c  ") == b"a b c"
    assert view_text(r, "  a   b ", complete=False) == b"a b "
    with pytest.raises(UnsupportedTokenizer, match=r"Replace\('x' -> 'y'\)"):
        text_rules({"model": {"type": "BPE"}, "normalizer": {"type": "Replace", "pattern": {"String": "x"},
                                                              "content": "y"}})


# ----------------------------------------------------------------------------- config edge cases
def test_pad_token_missing(tmp_path):
    """A tokenizer without a pad token: batches of different lengths still work (the engine
    pads with a mask, never with the pad id), and rows equal their single-row results."""
    from helpers import train_tokenizer

    tok = train_tokenizer("bytelevel", 300, tmp_path / "tok")
    tok.pad_token = None
    d = make_model("llama", tok, tmp_path / "m", seed=5)
    e = ls.load_expert(d)
    assert e.tokenizer.pad_token is None
    ens = ls.Ensemble([e])
    ctx, cont = ["Hi", "The quick brown fox"], [" there", " jumps"]
    both = ens.logprob(ctx, cont)
    alone = [ens.logprob([c], [x])[0] for c, x in zip(ctx, cont)]
    assert np.allclose(both, alone, atol=1e-5)
    out = ens.generate(ctx, max_new_tokens=5)
    assert out == [ens.generate([c], max_new_tokens=5)[0] for c in ctx]


def test_eos_token_id_list(tmp_path):
    """config/generation eos_token_id given as a list: every id stops, and maps to STOP."""
    from helpers import train_tokenizer

    tok = train_tokenizer("sentencepiece", 400, tmp_path / "tok")
    d = make_model("llama", tok, tmp_path / "m", seed=6)
    extra = tok.convert_tokens_to_ids("<unk>")
    for name in ("config.json", "generation_config.json"):
        p = d / name
        if p.exists():
            cfg = json.loads(p.read_text())
            cfg["eos_token_id"] = [tok.eos_token_id, extra]
            p.write_text(json.dumps(cfg))
    e = ls.load_expert(d)
    assert {tok.eos_token_id, extra} <= set(e.stop_ids)
    vb = e.vocab_bytes
    assert {tok.eos_token_id, extra} <= set(vb.stop_ids)
    assert vb.token_bytes[extra] is None and vb.token_bytes[tok.eos_token_id] is None


def test_padded_embedding_rows(tmp_path):
    """A model whose embedding has more rows than the tokenizer has tokens (padded to a multiple):
    the extra logits are not units; one-hot scores equal the log-softmax over real tokens only."""
    from helpers import train_tokenizer

    tok = train_tokenizer("bytelevel", 300, tmp_path / "tok")
    d = make_model("llama", tok, tmp_path / "m", seed=7, vocab_size=len(tok) + 20)
    e = ls.load_expert(d, dtype=torch.float64)
    assert e.model.get_output_embeddings().weight.shape[0] == len(tok) + 20
    assert e.vocab_size == len(tok) and len(e.vocab_bytes.token_bytes) == len(tok)
    ctx, cont = "Hello", " world again"
    ids = tok(ctx + cont)["input_ids"]
    n_ctx = len(tok(ctx)["input_ids"])
    with torch.no_grad():
        logits = e.model(torch.tensor([ids])).logits[0, :, : len(tok)]
    lp = torch.log_softmax(logits, -1)
    want = sum(float(lp[t - 1, ids[t]]) for t in range(n_ctx, len(ids)))
    assert ls.Ensemble([e]).logprob([ctx], [cont])[0] == pytest.approx(want, abs=1e-9)
    out = ls.Ensemble([e]).generate(["Hello"], max_new_tokens=8, return_details=True)[0]
    assert all(u < len(tok) for u in out.units)
    byte_lp = ls.Ensemble([e], unit="byte").logprob([ctx], [cont])[0]
    assert np.isfinite(byte_lp)


def test_no_chat_template(tmp_path):
    from helpers import train_tokenizer

    tok = train_tokenizer("bytelevel", 300, tmp_path / "tok")
    assert not getattr(tok, "chat_template", None)
    e = ls.load_expert(make_model("gpt2", tok, tmp_path / "m", seed=8), name="plain")
    with pytest.raises(ValueError, match="expert 'plain' has no chat template.*chat_template"):
        e.render_chat([{"role": "user", "content": "Hi"}])
    assert isinstance(ls.Ensemble([e]).generate(["Hi"], max_new_tokens=3)[0], str)  # plain text still works
