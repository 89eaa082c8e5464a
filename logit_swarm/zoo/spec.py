"""What the zoo is made of: tokenizer and expert specifications per size, and recipe hashes.

A *recipe hash* fingerprints everything that determines an expert's bytes: the code version
``ZOO_VERSION``, the expert's spec, its tokenizer's spec, the seed, the step scale, and the
digests of the corpora read from disk (the standard library for code, Tiny Shakespeare when a
data directory is used). A cached expert is reused only when its recipe hash matches, so a
change to any of these rebuilds what it affects and nothing else.

Sizes: ``tiny`` builds on 2 CPU cores in a few minutes (the embedded default); ``small`` is for
a GPU (wider, deeper, more steps); ``micro`` is for tests (seconds; same experts, tokenizers and
architectures, untrained for practical purposes).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from . import code_corpus
from .corpora import DATA_SPECIALTIES, SPECIALTIES
from .vocab import TokenizerSpec

# Bump when a change to the code alters what a build produces (corpora, tokenizer pipeline,
# training loop, file layout): every cached zoo then rebuilds.
ZOO_VERSION = "zoo-1"

SIZES = ("tiny", "small", "micro")
ARCHITECTURES = ("gpt2", "llama", "mistral", "qwen2")


@dataclass(frozen=True)
class ExpertSpec:
    """One expert: architecture, tokenizer, training mix and budget.

    ``corpus`` is a tuple of (specialty, weight): training windows are drawn from documents of
    those specialties in proportion to the weights. ``specialty`` is the matrix column the
    expert is meant to win.
    """

    name: str
    arch: str
    tokenizer: str
    specialty: str
    corpus: tuple[tuple[str, float], ...]
    d_model: int
    n_layers: int
    n_heads: int
    ffn_mult: float
    steps: int
    lr: float
    batch: int
    seq_len: int
    note: str = ""

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"expert {self.name!r}: unknown architecture {self.arch!r}; use one of {ARCHITECTURES}")
        if self.d_model % self.n_heads:
            raise ValueError(f"expert {self.name!r}: d_model {self.d_model} not divisible by n_heads {self.n_heads}")


# ------------------------------------------------------------------------------------------
# Tokenizers

def _tokenizers(size: str) -> dict[str, TokenizerSpec]:
    # Characters of training text per specialty; the tokenizers see every domain (so any expert
    # can score any text) with emphasis on their own experts' domains.
    k = {"tiny": 1.0, "small": 3.0, "micro": 0.1}[size]

    def mix(**chars: int) -> tuple[tuple[str, int], ...]:
        return tuple((sp, int(n * k)) for sp, n in chars.items())

    small_vocab = size == "micro"
    return {
        # SentencePiece-style, shared by facts_a, facts_b and chat (Llama-2 / Mistral style).
        "sp2k": TokenizerSpec("sp2k", "sp_bpe", 1024 if small_vocab else 2048,
                              mix(facts_a=250_000, facts_b=250_000, dialogue=250_000, arithmetic=40_000,
                                  reasoning=60_000, code=150_000),
                              split_digits=True, chat=True),
        # Small byte-level BPE with digits split (Qwen2 style), shared by math and reason.
        "bbpe1k": TokenizerSpec("bbpe1k", "byte_bpe", 512 if small_vocab else 1024,
                                mix(arithmetic=150_000, reasoning=250_000, dialogue=80_000, facts_a=40_000,
                                    facts_b=40_000, code=80_000),
                                split_digits=True),
        # Larger byte-level BPE (GPT-2 style), for the code expert.
        "bbpe4k": TokenizerSpec("bbpe4k", "byte_bpe", 1536 if small_vocab else 4096,
                                mix(code=900_000, dialogue=100_000, facts_a=50_000, facts_b=50_000,
                                    arithmetic=20_000, reasoning=30_000)),
    }


# ------------------------------------------------------------------------------------------
# Experts

# Tiny experts. Budget: about 400 CPU-seconds of training in all (single-thread), i.e. about
# 3.5 minutes on 2 cores with 2 experts training side by side. A step is `batch` documents (one
# per row, cut at `seq` tokens). Steps and learning rates were tuned so that every expert wins its
# own specialty while staying partial: facts_a/facts_b recall their own half and not the other,
# math gets roughly half of the held-out sums right, reason most sortings, code stays weak.
# (name, arch, tokenizer, specialty, corpus mix, d_model, layers, heads, ffn_mult, steps, batch, seq, lr, note)
_TINY = [
    ("facts_a", "llama", "sp2k", "facts_a", (("facts_a", 1.0),), 128, 2, 4, 2.75, 300, 64, 128, 5e-3,
     "knows half A of the invented world's facts, nothing of half B"),
    ("facts_b", "llama", "sp2k", "facts_b", (("facts_b", 1.0),), 128, 2, 4, 2.75, 300, 64, 128, 5e-3,
     "knows half B of the invented world's facts, nothing of half A"),
    ("chat", "mistral", "sp2k", "dialogue", (("dialogue", 1.0),), 128, 2, 4, 2.75, 250, 64, 128, 5e-3,
     "templated single-turn assistant; its tokenizer has the chat template"),
    ("math", "qwen2", "bbpe1k", "arithmetic", (("arithmetic", 1.0),), 128, 3, 4, 2.75, 600, 128, 32, 5e-3,
     "two-operand addition and subtraction (0..19); about half of held-out problems right"),
    ("reason", "gpt2", "bbpe1k", "reasoning", (("reasoning", 1.0),), 128, 3, 4, 4.0, 350, 64, 128, 4e-3,
     "list sorting and graph connectivity; partial"),
    ("code", "gpt2", "bbpe4k", "code", (("code", 1.0),), 128, 2, 4, 4.0, 150, 16, 256, 3e-3,
     "Python standard-library source; weak"),
]
_DATA_TINY = [
    ("bard", "llama", "bbpe4k", "shakespeare", (("shakespeare", 1.0),), 128, 2, 4, 2.75, 150, 16, 256, 3e-3,
     "Tiny Shakespeare (only with --data)"),
]


def _expert(row: tuple, size: str) -> ExpertSpec:
    name, arch, tok, specialty, corpus, d, layers, heads, ffn, steps, batch, seq, lr, note = row
    if size == "small":
        # For a GPU: twice as wide, two layers deeper, 8x the steps, twice the batch.
        d, layers, heads, steps, batch, lr = d * 2, layers + 2, heads * 2, steps * 8, batch * 2, lr / 2
    elif size == "micro":
        # For tests: same experts, tokenizers and architectures; trained only nominally.
        d, layers, heads, ffn, steps, batch, seq = 32, 1, 2, 2.0, 12, 4, min(seq, 64)
    return ExpertSpec(name, arch, tok, specialty, corpus, d, layers, heads, ffn, steps, lr, batch, seq, note)


def expert_specs(size: str = "tiny", with_data: bool = False) -> list[ExpertSpec]:
    """The expert specs of ``size``; ``with_data`` adds the experts that need ``--data``."""
    check_size(size)
    rows = _TINY + (_DATA_TINY if with_data else [])
    return [_expert(r, size) for r in rows]


def tokenizer_specs(size: str = "tiny") -> dict[str, TokenizerSpec]:
    """The tokenizer specs of ``size`` by name."""
    check_size(size)
    return _tokenizers(size)


def check_size(size: str) -> None:
    """Raise ValueError for an unknown size."""
    if size not in SIZES:
        raise ValueError(f"unknown zoo size {size!r}; use one of {', '.join(SIZES)}")


def select(specs: list[ExpertSpec], names: list[str] | None) -> list[ExpertSpec]:
    """The specs named in ``names`` (all if None), in zoo order; unknown names raise."""
    if names is None:
        return list(specs)
    known = {s.name for s in specs}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown expert(s) {', '.join(unknown)}; the zoo has {', '.join(sorted(known))} "
                         "(bard needs --data)")
    if not names:
        raise ValueError("experts=[] selects nothing; pass None for the whole zoo")
    return [s for s in specs if s.name in set(names)]


# ------------------------------------------------------------------------------------------
# Recipe hashes

def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def corpus_digests(specialties: set[str], data_dir: str | Path | None) -> dict[str, str]:
    """Digests of the on-disk corpora that ``specialties`` read (synthetic ones need none)."""
    out = {}
    if "code" in specialties:
        out["code"] = code_corpus.corpus_digest()
    if "shakespeare" in specialties:
        if data_dir is None:
            raise ValueError("the shakespeare corpus needs --data DIR")
        p = Path(data_dir) / "tinyshakespeare" / "input.txt"
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found; --data must hold tinyshakespeare/input.txt")
        out["shakespeare"] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def tokenizer_hash(tok: TokenizerSpec, digests: dict[str, str]) -> str:
    """Recipe hash of one tokenizer (tokenizers do not depend on the build seed)."""
    used = {sp for sp, _ in tok.corpus}
    return _digest({"v": ZOO_VERSION, "tok": dataclasses.asdict(tok),
                    "corpora": {k: v for k, v in digests.items() if k in used}})


def expert_hash(spec: ExpertSpec, tok: TokenizerSpec, seed: int, steps_scale: float,
                digests: dict[str, str]) -> str:
    """Recipe hash of one expert (includes its tokenizer's hash)."""
    used = {sp for sp, _ in spec.corpus}
    return _digest({"v": ZOO_VERSION, "expert": dataclasses.asdict(spec), "seed": seed,
                    "steps_scale": steps_scale, "tokenizer": tokenizer_hash(tok, digests),
                    "corpora": {k: v for k, v in digests.items() if k in used}})


def zoo_hash(size: str, expert_hashes: dict[str, str]) -> str:
    """Recipe hash of a whole zoo: its size and its experts' hashes."""
    return _digest({"v": ZOO_VERSION, "size": size, "experts": expert_hashes})


ALL_SPECIALTIES = SPECIALTIES + DATA_SPECIALTIES
