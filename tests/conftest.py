"""Shared fixtures: a session-wide pool of tiny local experts (built in seconds)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import make_model, train_tokenizer  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """name -> directory of tiny experts.

    - ``gpt2_a``, ``gpt2_b``: GPT-2 and Llama over one byte-level BPE tokenizer (shared pair)
    - ``llama_bl``: Llama over the same byte-level tokenizer as gpt2_a
    - ``llama_sp``: Llama over a SentencePiece-style tokenizer with byte fallback
    - ``mistral_bl2``, ``qwen2_bl2``, ``gemma_sp``: other architectures / tokenizers
    """
    root = tmp_path_factory.mktemp("experts")
    tok_bl = train_tokenizer("bytelevel", 400, root / "tok_bl")
    tok_bl2 = train_tokenizer("bytelevel", 320, root / "tok_bl2", chat=True)
    tok_sp = train_tokenizer("sentencepiece", 420, root / "tok_sp", chat=True)
    dirs = {
        "gpt2_a": make_model("gpt2", tok_bl, root / "gpt2_a", seed=1),
        "gpt2_b": make_model("gpt2", tok_bl, root / "gpt2_b", seed=2),
        "llama_bl": make_model("llama", tok_bl, root / "llama_bl", seed=3),
        "llama_sp": make_model("llama", tok_sp, root / "llama_sp", seed=4),
        "mistral_bl2": make_model("mistral", tok_bl2, root / "mistral_bl2", seed=5),
        "qwen2_bl2": make_model("qwen2", tok_bl2, root / "qwen2_bl2", seed=6),
        "gemma_sp": make_model("gemma", tok_sp, root / "gemma_sp", seed=7),
    }
    return {k: str(v) for k, v in dirs.items()}


@pytest.fixture(scope="session")
def experts(tiny_dirs):
    """Loaded tiny experts (float32, CPU), by name."""
    import logit_swarm as ls

    return {k: ls.load_expert(v) for k, v in tiny_dirs.items()}
