"""What each token of a tokenizer *is*, as bytes, and whether two tokenizers are the same.

Two questions decide how a pool of experts is mixed:

1. Do all experts share one tokenizer? Compared by content (vocabulary, merges, normaliser,
   pre-tokeniser, decoder, added/special tokens), never by name: two directories may hold the same
   tokenizer under different names, or different tokenizers under one name.
2. If not, what byte string does each token stand for? That is the bridge to the byte-level
   mixture. It is read from the tokenizer's own behaviour, not guessed from its family: each
   token's bytes are what its own decoder writes for it; tokens that are part of a character take
   their pipeline's byte rule, checked against the decoder: the GPT-2 ``bytes_to_unicode``
   alphabet of byte-level BPE (GPT-2 / Llama-3 / Qwen2 / OLMo-2 ...), or ``<0xNN>`` byte-fallback
   pieces (SentencePiece style: Llama-2 / Mistral / Gemma / Phi-3), whether or not they are
   flagged special. Non-special added tokens spell their literal text (that is what encoding
   matches). Other special tokens (BOS, EOS, PAD, chat markers...) have no bytes; EOS-like ones
   map to STOP.

The analysis is verified, not assumed: probe strings are encoded and the concatenated token
bytes must equal the text as the tokenizer sees it (:mod:`logit_swarm.align.view`: up to the
SentencePiece dummy-prefix space, and what a lossy normaliser drops). Tokenizers that rewrite
text are refused with :class:`~logit_swarm.align.view.UnsupportedTokenizer`, which names the
tokenizer.json component and what to do instead.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from .view import TextRules, UnsupportedTokenizer, text_rules, view_text, with_alphabet

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
    "<end_of_turn>", "<eos>", "<|eos|>", "<｜end▁of▁sentence｜>", "<|EOT|>", "<|end_story|>",
}


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's ``bytes_to_unicode`` table: the printable stand-in of every byte (what the
    ByteLevel pre-tokenizer and decoder use)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


@lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    """Inverse of :func:`byte_to_unicode`."""
    return {c: b for b, c in byte_to_unicode().items()}


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
        rules: what the tokenizer drops from text (:class:`~logit_swarm.align.view.TextRules`;
            the default is lossless).
    """

    token_bytes: tuple
    stop_ids: tuple
    dummy_prefix: bool
    sorted_ids: np.ndarray = field(repr=False)
    sorted_bytes: tuple = field(repr=False)
    byte_table: np.ndarray = field(repr=False)
    lengths: np.ndarray = field(repr=False)
    first_byte: np.ndarray = field(repr=False)
    rules: TextRules = field(default_factory=TextRules)

    @property
    def max_len(self) -> int:
        """Longest token, in bytes."""
        return int(self.byte_table.shape[1])


_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_ANCHORS = ("a", "e", "x", "o", "t", "0", "1", "A")


def _rule_fn(data: dict):
    """The token-string → bytes rule of the tokenizer's pipeline family (None: UTF-8 of the
    decoder's output is all there is). Used for tokens that are not whole characters."""
    blob = json.dumps({k: data.get(k) for k in ("pre_tokenizer", "decoder")})
    if "ByteLevel" in blob:
        table = _unicode_to_byte()

        def conv(tok: str) -> bytes | None:
            try:
                return bytes(table[c] for c in tok)
            except KeyError:
                return None  # not in the byte alphabet

        return conv
    return lambda tok: tok.replace("\u2581", " ").encode("utf-8")


def _byte_piece(tok: str, data: dict) -> int | None:
    """The byte a byte-fallback piece ``<0xNN>`` stands for (special-flagged or not), else None."""
    model = data.get("model") or {}
    if not (model.get("byte_fallback") or "ByteFallback" in json.dumps(data.get("decoder"))):
        return None
    m = _BYTE_PIECE.fullmatch(tok)
    return int(m.group(1), 16) if m else None


def _decoded_texts(tokenizer, vocab: dict[str, int]) -> dict[int, str]:
    """What the tokenizer's own decoder writes for each token, read between two anchor tokens so
    that decoders which strip a leading (or trailing) space of the whole text do not touch it."""
    backend = tokenizer.backend_tokenizer
    anchor, a_text = None, ""
    for cand in _ANCHORS:
        tid = vocab.get(cand)
        if tid is not None and backend.decode([tid, tid], skip_special_tokens=False) == cand * 2:
            anchor, a_text = tid, cand
            break
    if anchor is None:
        return {}
    ids = sorted(vocab.values())
    out = {}
    for i, s in zip(ids, backend.decode_batch([[anchor, i, anchor] for i in ids], skip_special_tokens=False)):
        if len(s) >= 2 * len(a_text) and s.startswith(a_text) and s.endswith(a_text):
            out[i] = s[len(a_text) : len(s) - len(a_text)]
    return out


def _same_text(rule: bytes, text: str) -> bool:
    """Whether ``rule`` bytes decode (with replacement characters) to the decoder's ``text``."""
    def squeeze(x: str) -> str:
        return re.sub("\ufffd+", "\ufffd", x)

    return squeeze(rule.decode("utf-8", errors="replace")) == squeeze(text)


def _ordinary_bytes(tok: str, text: str | None, rule) -> bytes | None:
    """Bytes of an ordinary token: the decoder's own output when it is whole characters; the
    pipeline's byte rule when the token is part of a character (the decoder writes U+FFFD)."""
    r = rule(tok)
    if text is None:
        return r or None
    if "\ufffd" not in text:
        return text.encode("utf-8") or None
    if r is not None and _same_text(r, text):
        return r or None
    return None


def _token_bytes(tokenizer, data: dict, stop_ids) -> tuple[list, set[int]]:
    """Per token id its bytes (None: no text) and the stop ids, from the tokenizer's behaviour."""
    vocab = tokenizer.get_vocab()
    size = max(vocab.values()) + 1
    added = {t["id"]: t for t in data.get("added_tokens", [])}
    specials = {i for i, t in added.items() if t.get("special")}
    specials.update(int(i) for i in (getattr(tokenizer, "all_special_ids", []) or []))
    texts = _decoded_texts(tokenizer, vocab)
    rule = _rule_fn(data)
    stops = set(stop_ids or ())
    if isinstance(getattr(tokenizer, "eos_token_id", None), int):
        stops.add(tokenizer.eos_token_id)
    tb: list[bytes | None] = [None] * size
    for tok, idx in vocab.items():
        byte = _byte_piece(tok, data)
        if byte is not None:  # <0xNN>: its byte, whether or not it is flagged special
            tb[idx] = bytes([byte])
        elif idx in specials:
            if tok in _STOP_NAMES:
                stops.add(idx)
        elif idx in added:  # a non-special added token matches its literal text
            tb[idx] = added[idx]["content"].encode("utf-8") or None
        else:
            tb[idx] = _ordinary_bytes(tok, texts.get(idx), rule)
    for idx in stops:
        if 0 <= idx < size:
            tb[idx] = None
    return tb, stops


def analyse_vocab(tokenizer, stop_ids: set[int] | None = None) -> VocabBytes:
    """Compute the byte view of ``tokenizer`` and verify it on probe strings.

    Each token's bytes come from what the tokenizer's own decoder writes for it (read between two
    anchor tokens); tokens that are part of a character (byte-level fragments, ``<0xNN>`` byte
    fallback, flagged special or not) take the byte of their pipeline's rule, checked against
    the decoder's replacement characters; non-special added tokens spell their literal text.
    What the normaliser drops (leading spaces, runs of spaces, characters outside the alphabet)
    is described by :class:`~logit_swarm.align.view.TextRules` in ``rules``.

    Args:
        tokenizer: a fast Hugging Face tokenizer.
        stop_ids: ids that end a sequence (EOS, end of turn). The tokenizer's own EOS and tokens
            named like a known end-of-text marker are added to this set.

    Raises:
        UnsupportedTokenizer (a ValueError): if the tokenizer rewrites text (the message names
            the tokenizer.json component) or its tokens do not reproduce the probe texts.
    """
    data = _backend_json(tokenizer)
    rules = text_rules(data)
    tb, stops = _token_bytes(tokenizer, data, stop_ids)
    unk = tokenizer.convert_tokens_to_ids(tokenizer.unk_token) if tokenizer.unk_token is not None else None
    if unk is None:
        unk = (data.get("model") or {}).get("unk_id")
        unk = unk if unk is not None else tokenizer.get_vocab().get((data.get("model") or {}).get("unk_token"))
    rules = with_alphabet(rules, tb, unk)
    dummy = _detect_dummy_prefix(tokenizer, tb, rules)
    _verify(tokenizer, tb, dummy, rules)

    size = len(tb)
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
        rules=rules,
    )


def _encode_plain(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _detect_dummy_prefix(tokenizer, tb, rules: TextRules) -> bool:
    probe = "a" if rules.alphabet is None or "a" in rules.alphabet else min(rules.alphabet - {" "})
    ids = _encode_plain(tokenizer, probe)
    got = b"".join(tb[i] or b"" for i in ids)
    if got == probe.encode():
        return False
    if got == b" " + probe.encode():
        return True
    raise UnsupportedTokenizer(
        f"this tokenizer maps the text {probe!r} to bytes {got!r}, so it cannot be aligned at byte level "
        "(something in its pipeline rewrites text). Mix it at token level with experts that share this "
        "tokenizer, or pick another expert"
    )


def _verify(tokenizer, tb, dummy: bool, rules: TextRules) -> None:
    for text in _PROBE_TEXTS:
        ids = _encode_plain(tokenizer, text)
        got = b"".join(tb[i] or b"" for i in ids)
        want = view_text(rules, text)
        # Some SentencePiece pipelines skip the dummy space when the text already starts with one.
        if got != want and not (dummy and got == b" " + want):
            missing = [i for i in ids if tb[i] is None]
            hint = (f"tokens without bytes in its encoding: {tokenizer.convert_ids_to_tokens(missing[:5])}"
                    if missing else "no token lacks bytes, so its pipeline changes the text")
            raise UnsupportedTokenizer(
                f"this tokenizer's token bytes do not reproduce the text {text!r} (got {got!r}; {hint}); "
                "it cannot be mixed at byte level. Mix it at token level with experts that share this "
                "tokenizer, or pick another expert"
            )


def model_view(vb: VocabBytes, text: str) -> bytes:
    """The bytes the model's tokens spell for ``text`` at the start of a document."""
    return (b" " if vb.dummy_prefix else b"") + view_text(vb.rules, text)


def choose_unit(experts) -> str:
    """"token" if all experts share one tokenizer (by content), else "byte"."""
    fps = {e.fingerprint for e in experts}
    if len(fps) == 1:
        sizes = {e.vocab_size for e in experts}
        if len(sizes) == 1:
            return "token"
    return "byte"
