"""Training the zoo's tokenizers with the ``tokenizers`` library and writing them as HF files.

Two families, as in real model pools:

* **byte-level BPE** (GPT-2 style): ``ByteLevel`` pre-tokenizer and decoder (``Ġ`` marks a
  space), every byte in the base alphabet, so nothing is ever unknown. No BOS is added on
  encode; ``<|endoftext|>`` is BOS, EOS and UNK at once (as in GPT-2); ``<|pad|>`` pads.
  Optionally digits are split one per token first (as Llama-3 and Qwen2 do).
* **SentencePiece-style BPE** (Llama-2 style, the same pipeline as Llama-2's ``tokenizer.json``):
  a normalizer maps spaces to ``▁`` and prepends one to the text, a SentencePiece-like split
  (letters, digits one by one, punctuation, newlines), Llama-2's decoder (``▁`` back to spaces,
  byte fallback, drop the prepended space), ``byte_fallback=True`` with all 256 ``<0xNN>``
  tokens in the model vocabulary (ids 4..259), specials ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2,
  ``<pad>`` 3, and a post-processor that adds ``<s>`` on encode.

Files written per tokenizer: ``tokenizer.json``, ``tokenizer_config.json`` and
``special_tokens_map.json``; their bytes depend only on the spec, so experts that share a
tokenizer get byte-identical files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from .corpora import CHAT_TEMPLATE

BYTE_TOKENS = [f"<0x{i:02X}>" for i in range(256)]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
MODEL_MAX_LENGTH = 512


@dataclass(frozen=True)
class TokenizerSpec:
    """How to train one tokenizer.

    ``kind`` is "byte_bpe" or "sp_bpe"; ``corpus`` lists (specialty, characters) pairs the
    trainer reads; ``split_digits`` isolates each digit before BPE; ``chat`` adds the
    dialogue ``chat_template`` to ``tokenizer_config.json``.
    """

    name: str
    kind: str
    vocab_size: int
    corpus: tuple[tuple[str, int], ...]
    split_digits: bool = False
    chat: bool = False

    def __post_init__(self):
        if self.kind not in ("byte_bpe", "sp_bpe"):
            raise ValueError(f"tokenizer {self.name!r}: kind must be 'byte_bpe' or 'sp_bpe', not {self.kind!r}")
        floor = 300 if self.kind == "byte_bpe" else 300 + len(BYTE_TOKENS)
        if self.vocab_size < floor:
            raise ValueError(f"tokenizer {self.name!r}: vocab_size {self.vocab_size} is below {floor}, "
                             "the base alphabet plus a few merges")

    @property
    def specials(self) -> dict[str, str]:
        """Role -> special token string (bos, eos, unk, pad)."""
        if self.kind == "byte_bpe":
            return {"bos": "<|endoftext|>", "eos": "<|endoftext|>", "unk": "<|endoftext|>", "pad": "<|pad|>"}
        return {"bos": "<s>", "eos": "</s>", "unk": "<unk>", "pad": "<pad>"}

    @property
    def adds_bos(self) -> bool:
        """Whether encoding prepends BOS (SentencePiece style yes, byte-level no)."""
        return self.kind == "sp_bpe"

    def describe(self) -> str:
        """One line for model cards."""
        if self.kind == "byte_bpe":
            extra = ", digits split" if self.split_digits else ""
            return f"byte-level BPE (GPT-2 style, Ġ){extra}, {self.vocab_size} tokens, no BOS added"
        extra = ", digits split" if self.split_digits else ""
        return (f"SentencePiece-style BPE (Llama-2 style ▁, byte fallback <0x00>..<0xFF>){extra}, "
                f"{self.vocab_size} tokens, adds <s>")


def _special_list(spec: TokenizerSpec) -> list[str]:
    return list(dict.fromkeys(spec.specials[r] for r in ("unk", "bos", "eos", "pad")))


def _build_untrained(spec: TokenizerSpec) -> Tokenizer:
    if spec.kind == "byte_bpe":
        tok = Tokenizer(models.BPE())
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                             if spec.split_digits else byte_level)
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        return tok
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    digits = r"▁?\p{N}" if spec.split_digits else r"▁?\p{N}+"
    # Llama-2's own pipeline: the normalizer turns spaces into ▁ and always prepends one (a
    # Metaspace pre-tokenizer would skip the prepend when the text already starts with a space,
    # making " Hi" and "Hi" encode alike). The Split then cuts the text the way SentencePiece
    # does (by script and number, whitespace starting a piece) and keeps pieces from crossing a
    # newline; a run of spaces leaves its last ▁ to the word after it.
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    pieces = rf"▁?\p{{L}}+|{digits}|▁?[^\p{{L}}\p{{N}}▁\n]+|▁+(?=▁)|▁+|\n+"
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(pieces), behavior="isolated")
    # Llama-2's decoder: ▁ back to spaces, <0xNN> runs back to UTF-8, then drop exactly the one
    # prepended space. (The Metaspace decoder would drop *every* ▁ of the first token, losing
    # spaces of a text that starts with indentation.)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    return tok


def train_tokenizer(spec: TokenizerSpec, texts: list[str]) -> Tokenizer:
    """Train ``spec`` on ``texts``; deterministic for the same texts (checked by the tests)."""
    tok = _build_untrained(spec)
    specials = _special_list(spec)
    if spec.kind == "byte_bpe":
        trainer = trainers.BpeTrainer(vocab_size=spec.vocab_size, special_tokens=specials, min_frequency=2,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    else:
        # Byte tokens are passed as specials only to reserve ids 4..259; they are moved into the
        # model vocabulary below, where byte fallback looks for them (as in Llama-2).
        trainer = trainers.BpeTrainer(vocab_size=spec.vocab_size, special_tokens=specials + BYTE_TOKENS,
                                      min_frequency=2, limit_alphabet=160, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    if spec.kind == "sp_bpe":
        data = json.loads(tok.to_str())
        data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] not in BYTE_TOKENS]
        tok = Tokenizer.from_str(json.dumps(data))
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    _check(tok, spec)
    return tok


def _check(tok: Tokenizer, spec: TokenizerSpec) -> None:
    for s in _special_list(spec):
        if tok.token_to_id(s) is None:
            raise RuntimeError(f"tokenizer {spec.name!r}: special token {s!r} missing after training")
    if spec.kind == "sp_bpe":
        ids = [tok.token_to_id(b) for b in BYTE_TOKENS]
        if ids != list(range(4, 4 + 256)):
            raise RuntimeError(f"tokenizer {spec.name!r}: byte tokens are not at ids 4..259")
    sample = "  Hello, wörld!\n\n  12+7=19 ✓  "
    if tok.decode(tok.encode(sample).ids, skip_special_tokens=True) != sample:
        raise RuntimeError(f"tokenizer {spec.name!r} does not round-trip {sample!r}")


def tokenizer_config(spec: TokenizerSpec) -> dict:
    """The ``tokenizer_config.json`` content for ``spec``."""
    sp = spec.specials
    cfg = {
        # TokenizersBackend loads tokenizer.json as written; a model-specific class (e.g.
        # LlamaTokenizer) would rebuild its own pipeline from vocab and merges.
        "tokenizer_class": "TokenizersBackend",
        "bos_token": sp["bos"], "eos_token": sp["eos"], "unk_token": sp["unk"], "pad_token": sp["pad"],
        "model_max_length": MODEL_MAX_LENGTH,
        "clean_up_tokenization_spaces": False,
        "padding_side": "right",
    }
    if spec.kind == "sp_bpe":
        cfg["add_bos_token"] = True
        cfg["add_eos_token"] = False
    if spec.chat:
        cfg["chat_template"] = CHAT_TEMPLATE
    return cfg


def write_tokenizer(tok: Tokenizer, spec: TokenizerSpec, out_dir: Path) -> None:
    """Write the three tokenizer files (deterministic bytes: sorted keys, fixed indent)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.json").write_text(tok.to_str(pretty=True), encoding="utf-8")
    cfg = tokenizer_config(spec)
    (out_dir / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    smap = {k + "_token": cfg[k + "_token"] for k in ("bos", "eos", "unk", "pad")}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(smap, indent=2, sort_keys=True) + "\n",
                                                      encoding="utf-8")


def encode_documents(tok: Tokenizer, spec: TokenizerSpec, docs: list[str]) -> list[list[int]]:
    """Token ids of each document as trained: ``[BOS] + text + [EOS]`` (BOS only if the
    tokenizer adds one on encode, which ``encode`` does for us), so models learn to stop."""
    eos = tok.token_to_id(spec.specials["eos"])
    encs = tok.encode_batch(docs, add_special_tokens=True)
    return [e.ids + [eos] for e in encs]
