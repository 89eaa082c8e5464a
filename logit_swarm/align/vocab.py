"""What each token of a tokenizer *is*, as bytes, and whether two tokenizers are the same.

Two questions decide how a pool of experts is mixed:

1. Do all experts share one tokenizer? Compared by content (vocabulary, merges, normaliser,
   pre-tokeniser, decoder, added/special tokens), never by name: two directories may hold the same
   tokenizer under different names, or different tokenizers under one name.
2. If not, what byte string does each token stand for? That is the bridge to the byte-level
   mixture. Two families are supported, which covers GPT-2, Llama-2/3, Mistral, Gemma, Qwen2, Phi-3:

   * byte-level BPE (GPT-2 / Llama-3 / Qwen2): token strings are written in the GPT-2
     ``bytes_to_unicode`` alphabet (``Ġ`` is the space byte), each character one byte;
   * SentencePiece-style (Llama-2 / Mistral / Gemma / Phi-3): ``▁`` stands for a space and
     ``<0xNN>`` byte-fallback tokens stand for the single byte 0xNN; everything else is UTF-8.

   Special tokens (BOS, EOS, PAD, chat markers...) have no bytes; EOS-like ones map to STOP.

The analysis is verified, not assumed: sample strings are encoded and the concatenated token
bytes must equal the text (up to the SentencePiece dummy-prefix space). An unsupported tokenizer
raises a ValueError instead of producing a silently wrong byte mapping.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

# Strings used to verify a byte mapping: unicode, emoji, digits, whitespace runs, code.
_PROBE_TEXTS = (
    "Hello world",
    "The quick brown fox jumps over 13 lazy dogs.",
    "  two  spaces\tand a tab\nnew line",
    "caf\u00e9 na\u00efve \u00fcber \u65e5\u672c\u8a9e \U0001F600\U0001F680!",
    "def f(x):\n    return x**2  # square\n",
    "12345 + 678 = 13023",
)

# Names under which families mark end of text / end of turn, used when the tokenizer config
# does not say which special token ends a sequence (e.g. a bare tokenizer.json).
_STOP_NAMES = {
    "</s>", "<|endoftext|>", "<|end_of_text|>", "<|eot_id|>", "<|im_end|>", "<|end|>",
    "<end_of_turn>", "<eos>", "<|eos|>",
}


@lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's ``bytes_to_unicode`` table (printable stand-ins for all 256 bytes)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _backend_json(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} is not a fast (tokenizers-backed) tokenizer; "
            "save it with a tokenizer.json (tokenizer.save_pretrained on a fast tokenizer) and reload"
        )
    return json.loads(backend.to_str())


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything that decides how text maps to token ids and back.

    Two tokenizers with the same fingerprint produce the same ids for the same text and decode
    ids to the same text, so their models' distributions can be mixed token by token.
    Truncation/padding settings and the post-processor (which only adds BOS/EOS around a prompt)
    are left out: prompts are encoded per expert anyway.
    """
    data = _backend_json(tokenizer)
    keep = {k: data.get(k) for k in ("model", "normalizer", "pre_tokenizer", "decoder")}
    keep["added_tokens"] = sorted(
        (t["id"], t["content"], bool(t.get("special"))) for t in data.get("added_tokens", [])
    )
    blob = json.dumps(keep, sort_keys=True, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()


@dataclass(frozen=True)
class VocabBytes:
    """The byte view of one tokenizer's vocabulary.

    Attributes:
        token_bytes: per token id, its bytes, or None for tokens without text (special tokens).
        stop_ids: ids that end the text (EOS / end of turn); they map to the STOP unit.
        dummy_prefix: True when the tokenizer prepends a space-marker to the first word
            (SentencePiece ``add_dummy_prefix``): the model's view of text ``t`` is ``b" " + t``.
        sorted_ids: token ids with bytes, sorted by their byte strings (prefix ranges are
            contiguous in this order).
        sorted_bytes: the byte strings in that order.
        byte_table: int16 array [len(sorted_ids), max_len]: byte at each position, -1 past the end.
        lengths: int array of byte lengths in sorted order.
        first_byte: int64 array over all token ids: first byte of each token, 256 for tokens
            without bytes (they are dropped when binning).
    """

    token_bytes: tuple
    stop_ids: tuple
    dummy_prefix: bool
    sorted_ids: np.ndarray = field(repr=False)
    sorted_bytes: tuple = field(repr=False)
    byte_table: np.ndarray = field(repr=False)
    lengths: np.ndarray = field(repr=False)
    first_byte: np.ndarray = field(repr=False)

    @property
    def max_len(self) -> int:
        """Longest token, in bytes."""
        return int(self.byte_table.shape[1])


def _token_to_bytes_fn(data: dict):
    """Pick the token-string → bytes rule from the tokenizer's own pipeline description."""
    blob = json.dumps({k: data.get(k) for k in ("pre_tokenizer", "decoder")})
    model = data.get("model") or {}
    if model.get("type") not in ("BPE", "Unigram", "WordLevel"):
        raise ValueError(
            f"tokenizer model type {model.get('type')!r} is not supported for byte-level mixing "
            "(supported: byte-level BPE as in GPT-2/Llama-3/Qwen2, SentencePiece-style BPE/Unigram "
            "as in Llama-2/Mistral/Gemma); mix experts that share one tokenizer instead"
        )
    if "ByteLevel" in blob:
        table = _unicode_to_byte()

        def conv(tok: str) -> bytes | None:
            try:
                return bytes(table[c] for c in tok)
            except KeyError:
                return None  # not in the byte alphabet: an added token, handled by the caller

        return conv

    def conv_sp(tok: str) -> bytes | None:
        if len(tok) == 6 and tok.startswith("<0x") and tok.endswith(">"):
            try:
                return bytes([int(tok[3:5], 16)])
            except ValueError:
                pass
        return tok.replace("\u2581", " ").encode("utf-8")

    return conv_sp


def analyse_vocab(tokenizer, stop_ids: set[int] | None = None) -> VocabBytes:
    """Compute the byte view of ``tokenizer`` and verify it on probe strings.

    Args:
        tokenizer: a fast Hugging Face tokenizer.
        stop_ids: ids that end a sequence (EOS, end of turn). Tokens named like a known
            end-of-text marker are added to this set.

    Raises:
        ValueError: if the tokenizer's tokens cannot be mapped to bytes exactly.
    """
    data = _backend_json(tokenizer)
    conv = _token_to_bytes_fn(data)
    vocab = tokenizer.get_vocab()
    size = max(vocab.values()) + 1
    specials = {t["id"] for t in data.get("added_tokens", []) if t.get("special")}
    added_plain = {t["id"]: t["content"] for t in data.get("added_tokens", []) if not t.get("special")}
    for tok_id in getattr(tokenizer, "all_special_ids", []) or []:
        specials.add(int(tok_id))
    stops = set(stop_ids or ())
    tb: list[bytes | None] = [None] * size
    for tok, idx in vocab.items():
        if idx in specials:
            if tok in _STOP_NAMES:
                stops.add(idx)
            continue
        if idx in added_plain:
            # A non-special added token matches its literal text.
            tb[idx] = added_plain[idx].encode("utf-8") or None
            continue
        b = conv(tok)
        tb[idx] = b if b else None
    for idx in stops:
        if 0 <= idx < size:
            tb[idx] = None

    dummy = _detect_dummy_prefix(tokenizer, tb)
    _verify(tokenizer, tb, dummy)

    have = [i for i in range(size) if tb[i] is not None]
    have.sort(key=lambda i: tb[i])
    sorted_bytes = tuple(tb[i] for i in have)
    lengths = np.array([len(b) for b in sorted_bytes], dtype=np.int64)
    max_len = int(lengths.max()) if len(lengths) else 1
    table = np.full((len(have), max_len), -1, dtype=np.int16)
    for r, b in enumerate(sorted_bytes):
        table[r, : len(b)] = np.frombuffer(b, dtype=np.uint8)
    first = np.full(size, 256, dtype=np.int64)
    for i in have:
        first[i] = tb[i][0]
    return VocabBytes(
        token_bytes=tuple(tb),
        stop_ids=tuple(sorted(stops)),
        dummy_prefix=dummy,
        sorted_ids=np.array(have, dtype=np.int64),
        sorted_bytes=sorted_bytes,
        byte_table=table,
        lengths=lengths,
        first_byte=first,
    )


def _encode_plain(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _detect_dummy_prefix(tokenizer, tb) -> bool:
    ids = _encode_plain(tokenizer, "a")
    got = b"".join(tb[i] or b"" for i in ids)
    if got == b"a":
        return False
    if got == b" a":
        return True
    raise ValueError(
        f"tokenizer maps text 'a' to bytes {got!r}; cannot align it at byte level "
        "(a normaliser that rewrites text, e.g. lowercasing, is not supported)"
    )


def _verify(tokenizer, tb, dummy: bool) -> None:
    for text in _PROBE_TEXTS:
        ids = _encode_plain(tokenizer, text)
        got = b"".join(tb[i] or b"" for i in ids)
        raw = text.encode("utf-8")
        # Some SentencePiece pipelines skip the dummy space when the text already starts with one.
        if got != raw and not (dummy and got == b" " + raw):
            raise ValueError(
                "token bytes do not reproduce the text for this tokenizer "
                f"(text {text!r} -> {got!r}); its normaliser or pre-tokeniser rewrites text, which "
                "byte-level mixing cannot represent exactly"
            )


def model_view(vb: VocabBytes, text: str) -> bytes:
    """The bytes the model's tokens spell for ``text`` at the start of a document."""
    return (b" " if vb.dummy_prefix else b"") + text.encode("utf-8")


def choose_unit(experts) -> str:
    """"token" if all experts share one tokenizer (by content), else "byte"."""
    fps = {e.fingerprint for e in experts}
    if len(fps) == 1:
        sizes = {e.vocab_size for e in experts}
        if len(sizes) == 1:
            return "token"
    return "byte"
