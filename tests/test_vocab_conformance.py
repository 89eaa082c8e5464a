"""Conformance of the byte view over every real tokenizer in ../shared/data/tokenizers.

The folders are discovered at run time: a new folder is tested without code changes. Each known
folder has its expected verdict here; an unknown one must either pass every check of a supported
tokenizer or be refused with the clear error (UnsupportedTokenizer naming a tokenizer.json
component and what to do instead).

Supported: (1) probe texts (unicode, emoji, CJK, digits, whitespace runs, tabs/newlines, code)
round-trip through the byte view (the token bytes of the canonical encoding spell the text as
the tokenizer sees it); (2) a random tiny model over the vocabulary has an exact byte marginal
(ByteTrack, beam=None, prune=0) equal to brute-force enumeration (float64, |Δ| < 1e-9) on a short
string with a two-byte character; (3) a byte-level mix with a GPT-2-vocabulary expert scores and
generates.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA
from transformers import AutoTokenizer

import logit_swarm as ls
from logit_swarm.align.view import UnsupportedTokenizer, view_text
from logit_swarm.align.vocab import analyse_vocab

ROOT = SHARED_DATA / "tokenizers"


def discover(root: Path) -> list[str]:
    """Every folder of ``root`` that holds a tokenizer.json (what the parametrised test runs over)."""
    return sorted(p.name for p in root.iterdir() if (p / "tokenizer.json").exists()) if root.exists() else []


FOLDERS = discover(ROOT)

# folder -> None (supported) or a word the refusal must name (the tokenizer.json component).
EXPECTED = {
    "bert": "WordPiece",
    "deepseek-coder": None,
    "falcon": None,
    "gpt2": None,
    "llama2": None,
    "llama3": None,
    "mistral": None,
    "mistral-v0.3": None,
    "neox": None,
    "olmo2": None,
    "phi3": None,
    "qwen2": None,
    "smollm": None,
    "t5": "Precompiled",
    "xlnet": "NFKD",
}

PROBES = [
    "Grüße, naïve café: ½ price — ok",
    "emoji 😀🚀👍🏽 end",
    "中文字符 日本語のテキスト 한국어",
    "digits 0123456789 3.14159 1,000,000",
    "spaces:   three\t\ttabs\n\nnewlines\r\n",
    "def f(x):\n    return {'a': x ** 2}  # comment\n",
    " leading space",
]

pytestmark = [
    pytest.mark.real_vocab,
    pytest.mark.skipif(not FOLDERS, reason="../shared/data/tokenizers is not present (shared data folder)"),
]


def _verdict(name: str, tok):
    """(vocab bytes, None) when supported, (None, error) when refused."""
    try:
        return analyse_vocab(tok), None
    except UnsupportedTokenizer as err:
        return None, err


def _check_refusal(name: str, err: Exception) -> None:
    msg = str(err)
    assert "tokenizer.json" in msg and "token level" in msg and "another expert" in msg, msg
    if EXPECTED.get(name):
        assert EXPECTED[name] in msg, msg


def _check_probes(tok, vb) -> None:
    for text in PROBES:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        got = b"".join(vb.token_bytes[i] or b"" for i in ids)
        want = view_text(vb.rules, text)
        assert got == want or (vb.dummy_prefix and got == b" " + want), (text, got, want)


@pytest.fixture(scope="module")
def gpt2_expert(tmp_path_factory):
    if "gpt2" not in FOLDERS:
        pytest.skip("../shared/data/tokenizers/gpt2 is not present")
    from helpers import random_lm_for_tokenizer

    d = random_lm_for_tokenizer(str(ROOT / "gpt2"), tmp_path_factory.mktemp("gpt2v") / "m", arch="gpt2", seed=99)
    return ls.load_expert(d, dtype=torch.float64, name="gpt2-vocab")


@pytest.mark.parametrize("name", FOLDERS)
def test_tokenizer_folder(name, tmp_path, gpt2_expert):
    tok = AutoTokenizer.from_pretrained(str(ROOT / name))
    vb, err = _verdict(name, tok)
    if name in EXPECTED:
        assert (err is None) == (EXPECTED[name] is None), f"{name}: expected {EXPECTED[name] or 'supported'}, got {err}"
    if err is not None:
        _check_refusal(name, err)
        return
    _check_probes(tok, vb)
    assert vb.stop_ids, f"{name}: no end-of-text token found"

    from helpers import random_lm_for_tokenizer
    from test_bytes import check_against_brute_force

    d = random_lm_for_tokenizer(str(ROOT / name), tmp_path / "m", seed=len(name))
    e = ls.load_expert(d, dtype=torch.float64, name=name)
    # exact marginal = brute force, at the start, inside a two-byte character, and after it
    check_against_brute_force(e, "é 1".encode(), check_at=(0, 1, 4))
    assert len(e.store) == 0

    ens = ls.Ensemble([e, gpt2_expert], weights=[0.6, 0.4], unit="byte")
    lp = ens.logprob(["Hello wörld", "x = 1"], [" 😀 ok", "\n\tif x:  pass"])
    assert all(np.isfinite(lp)) and all(x < 0 for x in lp)
    out = ens.generate(["The 日本 "], max_new_tokens=5)
    assert isinstance(out[0], str)


@pytest.mark.parametrize("name", ["falcon", "smollm"])
def test_bytes_without_a_token_are_dropped_as_the_tokenizer_does(name):
    if name not in FOLDERS:
        pytest.skip(f"../shared/data/tokenizers/{name} is not present")
    tok = AutoTokenizer.from_pretrained(str(ROOT / name))
    vb = analyse_vocab(tok)
    assert vb.rules.missing_bytes and 0x04 in vb.rules.missing_bytes
    text = "a\x04b\U000B0000c"  # a control byte and a lead byte 0xF2 the vocabulary lacks
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert b"".join(vb.token_bytes[i] for i in ids) == view_text(vb.rules, text)


def test_every_known_folder_is_present_or_reported():
    """The expected table and the shared folder agree (a folder that vanished is reported)."""
    missing = sorted(set(EXPECTED) - set(FOLDERS))
    assert not missing, f"expected tokenizer folders not found in {ROOT}: {missing}"


def test_new_folder_is_picked_up(tmp_path):
    """A folder dropped next to the others is discovered and gets a verdict (here: a copy of
    GPT-2's tokenizer.json under an unknown family name is supported)."""
    import shutil

    if "gpt2" not in FOLDERS:
        pytest.skip("../shared/data/tokenizers/gpt2 is not present")
    (tmp_path / "newfamily").mkdir()
    shutil.copy(ROOT / "gpt2" / "tokenizer.json", tmp_path / "newfamily" / "tokenizer.json")
    (tmp_path / "not-a-tokenizer").mkdir()
    assert discover(tmp_path) == ["newfamily"]
    vb, err = _verdict("newfamily", AutoTokenizer.from_pretrained(str(tmp_path / "newfamily")))
    assert err is None and vb.rules.lossless
