"""What an expert's tokenizer does to text, and a byte track that follows the expert's view.

Most tokenizers are lossless at the byte level: the bytes of the tokens of ``encode(t)`` spell
``t`` (up to the SentencePiece dummy-prefix space), and :class:`~logit_swarm.align.bytes.ByteTrack`
works on the text as it is. Some ordinary tokenizers lose text on the way in:

* **leading spaces stripped** and **runs of spaces collapsed** (SentencePiece's
  ``remove_extra_whitespaces``, written in tokenizer.json as ``Replace`` normalisers, e.g.
  stories260K); trailing spaces are stripped too, but only at the end of an encoded text;
* **characters outside the alphabet**: a vocabulary without byte pieces (no ``<0xNN>`` tokens and
  no byte-level alphabet) maps every other character to its unknown token (TinyStories-656K's
  ``<unk>``, slm4096's ``' '``);
* **bytes without a token** in a byte-level vocabulary (Falcon and SmolLM lack a few control
  bytes and lead bytes of unassigned planes): the tokenizer drops just that byte.

Written semantics (the *text view*). The expert sees the text as its own tokenizer would
encode it: a dropped space is not there, a character outside its alphabet is its unknown token
when that token spells bytes (slm4096: a space), and is dropped otherwise (``<unk>`` has no
bytes; conditioning on it is not implemented). Its next-byte distribution is the plain one of
that view with **zero mass on every byte it cannot produce**: a second space where runs are
collapsed, a space where leading spaces are stripped, a byte that does not begin or continue a
character of its alphabet. The distribution is renormalised over the other units, so in a
mixture the mass of such a byte comes from the other experts, and scored alone the expert gives
the text −∞ there (a warning names the rule and the byte position).

Normalisers that *change* text instead of dropping it (lowercasing, NFKC/NFKD/NFD, accent
stripping, SentencePiece's precompiled charsmap, arbitrary ``Replace`` rules), whitespace-splitting
pre-tokenisers and WordPiece ``##`` pieces are refused with :class:`UnsupportedTokenizer`, whose
message names the component read from tokenizer.json and what to do instead.

The module has two halves: pure functions on the tokenizer.json description (:func:`text_rules`,
:func:`view_text`), and :class:`ViewTrack`, a thin wrapper around a ``ByteTrack`` that uses only
its public methods (``start`` / ``distributions`` / ``advance`` / ``release``).
:func:`make_byte_track` returns the plain track or the wrapper.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import numpy as np

from .bytes import DEFAULT_BEAM, DEFAULT_PRUNE, STOP, ByteTrack

SPACE = 0x20
UTF8_BYTES = frozenset(range(256)) - {0xC0, 0xC1} - frozenset(range(0xF5, 0x100))  # bytes valid UTF-8 uses
_META = "\u2581"

# Replace normalisers that only escape spaces (Llama-2 layout): no text is lost.
_ESCAPES = {(" ", _META)}
# Replace normalisers that drop spaces (SentencePiece remove_extra_whitespaces, as converted).
_LEADING = {r"\A +", r"^ +", r"\A\s+"}
_COLLAPSE = {r" {2,}", r" +"}
_TRAILING = {_META + r"+\z", _META + r"+$", r" +\z", r" +$"}

# Normaliser types that rewrite text, and what they do (for the refusal message).
_REWRITING = {
    "Lowercase": "lowercases text",
    "NFKC": "applies NFKC (compatibility characters such as 'ﬁ' or full-width digits are rewritten)",
    "NFKD": "applies NFKD (characters are decomposed and compatibility characters rewritten)",
    "NFD": "applies NFD (accented characters are decomposed into other bytes)",
    "StripAccents": "strips accents",
    "Precompiled": "applies SentencePiece's precompiled character map (NFKC-like rewriting)",
    "Strip": "strips whitespace at both ends of every text",
    "Nmt": "removes or rewrites control characters",
}
_KEEPING = {"NFC", "ByteLevel"}  # NFC: see the note in text_rules
_WS_SPLITTERS = {"WhitespaceSplit", "Whitespace", "BertPreTokenizer", "CharDelimiterSplit"}
_SAME_POOL = ("Mix it at token level with experts that share this tokenizer (identical tokenizer.json), "
              "or pick another expert")


class UnsupportedTokenizer(ValueError):
    """A tokenizer whose tokens cannot stand for the bytes of the text; the message says why."""


class _Refusal(Exception):
    """One component that rewrites text (collected, then reported together)."""

    def __init__(self, component: str, what: str):
        super().__init__(component)
        self.component, self.what = component, what


def refuse(component: str, what: str) -> _Refusal:
    """One reason to refuse: a tokenizer.json ``component`` and ``what`` it does to text."""
    return _Refusal(component, what)


def _refusal_error(found: list[_Refusal]) -> UnsupportedTokenizer:
    parts = "; ".join(f"{r.component} {r.what}" for r in found)
    return UnsupportedTokenizer(
        f"this tokenizer cannot be mixed at byte level: in its tokenizer.json, {parts}; so its tokens do "
        f"not spell the text the model was given. {_SAME_POOL}"
    )


@dataclass(frozen=True)
class TextRules:
    """What a tokenizer does to text before its tokens spell it (all False/None = lossless).

    Attributes:
        strip_leading_spaces: spaces at the start of a document are dropped.
        collapse_spaces: a space right after a space is dropped.
        strip_trailing_spaces: spaces at the end of an encoded text are dropped (encoding only:
            a prompt loses them, text that goes on does not).
        alphabet: the characters the vocabulary can spell (None: every character).
        missing_bytes: bytes a byte-level vocabulary has no token for (None: it has them all);
            its tokenizer drops such a byte (the rest of the character stays).
        unk_bytes: what a character outside the alphabet becomes (its unknown token's bytes);
            None: it is dropped.
        fuse_unk: consecutive characters outside the alphabet become one unknown token.
        notes: normalisers accepted with a caveat (e.g. NFC), for descriptions.
    """

    strip_leading_spaces: bool = False
    collapse_spaces: bool = False
    strip_trailing_spaces: bool = False
    alphabet: frozenset | None = None
    missing_bytes: frozenset | None = None
    unk_bytes: bytes | None = None
    fuse_unk: bool = False
    notes: tuple = ()

    @property
    def lossless(self) -> bool:
        """True when the view of every text is the text itself."""
        return not (self.strip_leading_spaces or self.collapse_spaces or self.strip_trailing_spaces
                    or self.alphabet is not None or self.missing_bytes is not None)

    def describe(self) -> list[str]:
        """The rules in words (model cards, README table)."""
        out = []
        if self.strip_leading_spaces:
            out.append("strips leading spaces")
        if self.collapse_spaces:
            out.append("collapses runs of spaces")
        if self.strip_trailing_spaces:
            out.append("strips trailing spaces of a prompt")
        if self.alphabet is not None:
            unk = "dropped" if self.unk_bytes is None else f"read as {self.unk_bytes.decode('utf-8', 'replace')!r}"
            out.append(f"{len(self.alphabet)}-character alphabet (other characters {unk})")
        if self.missing_bytes is not None:
            out.append(f"no token for bytes {', '.join(f'0x{b:02X}' for b in sorted(self.missing_bytes))} "
                       "(dropped, as its tokenizer does)")
        return out + list(self.notes)


# ----------------------------------------------------------------------------- reading tokenizer.json
def _flatten(node: dict | None, key: str) -> list[dict]:
    """The leaves of a (possibly nested) ``Sequence`` normaliser / pre-tokeniser / decoder."""
    if not node:
        return []
    if node.get("type") == "Sequence":
        return [leaf for sub in node.get(key, []) for leaf in _flatten(sub, key)]
    return [node]


def _replace_rule(n: dict) -> str | None:
    """Which dropping rule a ``Replace`` normaliser is (None: a pure space escape)."""
    pat = n.get("pattern") or {}
    s, rx, content = pat.get("String"), pat.get("Regex"), n.get("content")
    if s is not None and (s, content) in _ESCAPES:
        return None
    if rx in _LEADING and content == "":
        return "strip_leading_spaces"
    if rx in _COLLAPSE and content == " ":
        return "collapse_spaces"
    if rx in _TRAILING and content == "":
        return "strip_trailing_spaces"
    shown = s if s is not None else rx
    raise refuse(f"normalizer Replace({shown!r} -> {content!r})", "replaces that text by other text")


def _normalizer_rules(norm: dict | None, found: list) -> tuple[dict, list[str]]:
    flags, notes = {}, []
    for n in _flatten(norm, "normalizers"):
        try:
            _one_normalizer(n, flags, notes)
        except _Refusal as r:
            found.append(r)
    return flags, notes


def _one_normalizer(n: dict, flags: dict, notes: list) -> None:
    """Record what one normaliser leaf does (a flag, a note) or raise the reason to refuse."""
    t = n.get("type")
    if t == "Replace":
        rule = _replace_rule(n)
        if rule:
            flags[rule] = True
    elif t == "Prepend":
        if n.get("prepend") not in (_META, " "):
            raise refuse(f"normalizer Prepend({n.get('prepend')!r})", "puts that text before every text")
    elif t == "BertNormalizer":
        parts = [k for k in ("lowercase", "strip_accents", "clean_text") if n.get(k) not in (False,)]
        raise refuse(f"normalizer BertNormalizer({', '.join(parts)})",
                     "lowercases, strips accents and rewrites whitespace/control characters")
    elif t in _REWRITING:
        raise refuse(f"normalizer {t}", _REWRITING[t])
    elif t == "NFC":
        notes.append("NFC normaliser (text not in NFC form is seen in NFC form)")
    elif t not in _KEEPING:
        raise refuse(f"normalizer {t}", "is not known to keep text unchanged")


def _check_pre_tokenizer(pre: dict | None, found: list) -> None:
    for n in _flatten(pre, "pretokenizers"):
        t = n.get("type")
        if t in _WS_SPLITTERS:
            found.append(refuse(f"pre_tokenizer {t}",
                         "splits on whitespace and drops it (runs of spaces, tabs and newlines all become one "
                         "word boundary)"))
        if t == "Split" and n.get("behavior") == "Removed" and not n.get("invert"):
            found.append(refuse("pre_tokenizer Split(behavior='Removed')", "deletes the text its pattern matches"))


def _check_model(model: dict, decoder: dict | None) -> None:
    t = model.get("type")
    if t == "WordPiece" or any(d.get("type") == "WordPiece" for d in _flatten(decoder, "decoders")):
        raise refuse(f"model WordPiece (continuing_subword_prefix {model.get('continuing_subword_prefix', '##')!r})",
                     "writes word-internal pieces as '##piece' and inserts spaces between words on decoding, "
                     "so a token's bytes depend on its neighbours")
    if t not in ("BPE", "Unigram", "WordLevel"):
        raise refuse(f"model {t}", "is not a BPE, Unigram or WordLevel model")
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise refuse(f"model {t} {key}={model[key]!r}", "marks pieces with text that is not in the input")
    bad = [d.get("type") for d in _flatten(decoder, "decoders") if d.get("type") in ("CTC", "BPEDecoder")]
    if bad:
        raise refuse(f"decoder {bad[0]}", "inserts or removes text between tokens")


def text_rules(data: dict) -> TextRules:
    """The rules of a tokenizer.json description (``Tokenizer.to_str()`` parsed), without the
    alphabet (that needs the token bytes: :func:`with_alphabet`).

    NFC is accepted: it leaves text that is already in NFC form (nearly all text) unchanged, and
    text that is not is seen by the model in NFC form, as transformers would encode it.

    Raises:
        UnsupportedTokenizer: naming the component that rewrites text.
    """
    model = data.get("model") or {}
    found: list[_Refusal] = []
    flags, notes = _normalizer_rules(data.get("normalizer"), found)
    _check_pre_tokenizer(data.get("pre_tokenizer"), found)
    try:
        _check_model(model, data.get("decoder"))
    except _Refusal as r:
        found.append(r)
    if found:
        raise _refusal_error(found)
    return TextRules(fuse_unk=bool(model.get("fuse_unk")), notes=tuple(notes), **flags)


def with_alphabet(rules: TextRules, token_bytes, unk_id: int | None) -> TextRules:
    """Add what the vocabulary cannot spell.

    A vocabulary with a single-byte token for every byte that occurs in UTF-8 (byte-level BPE,
    ``<0xNN>`` byte fallback) spells every text. A byte-level one that lacks a few of them (rare
    control bytes, lead bytes of rare planes) gets ``missing_bytes``. Any other vocabulary's
    alphabet is the characters that are one token each.
    """
    singles = {b[0] for b in token_bytes if b is not None and len(b) == 1}
    missing = UTF8_BYTES - singles
    if not missing:
        return rules
    unk = token_bytes[unk_id] if unk_id is not None and 0 <= unk_id < len(token_bytes) else None
    if set(range(0x80, 0xC0)) <= singles:  # the byte-level alphabet, with holes
        return replace(rules, missing_bytes=frozenset(missing), unk_bytes=unk)
    chars = set()
    for b in token_bytes:
        if b:
            s = b.decode("utf-8", errors="replace")
            if len(s) == 1 and s != "\ufffd":
                chars.add(s)
    return replace(rules, alphabet=frozenset(chars), unk_bytes=unk)


def outside(rules: TextRules, ch: str) -> bool:
    """Whether the character ``ch`` is outside the alphabet (missing bytes are dropped one by one)."""
    return rules.alphabet is not None and ch not in rules.alphabet


def view_text(rules: TextRules, text: str, complete: bool = True) -> bytes:
    """The bytes the expert's tokens spell for ``text`` at the start of a document (without the
    dummy-prefix space). ``complete``: the text ends here (trailing spaces stripped if the rule says)."""
    out: list[bytes] = []
    at_start, prev_space, prev_out = True, False, False
    for ch in text:
        if outside(rules, ch):
            if rules.unk_bytes is not None and not (rules.fuse_unk and prev_out):
                out.append(rules.unk_bytes)
                prev_space = rules.unk_bytes.endswith(b" ")
                at_start = False
            prev_out = True
            continue
        prev_out = False
        if ch == " " and ((rules.strip_leading_spaces and at_start) or (rules.collapse_spaces and prev_space)):
            continue
        raw = ch.encode("utf-8")
        if rules.missing_bytes:
            raw = bytes(b for b in raw if b not in rules.missing_bytes)
        out.append(raw)
        prev_space = ch == " "
        at_start = at_start and ch == " "
    res = b"".join(out)
    if complete and rules.strip_trailing_spaces:
        res = res.rstrip(b" ")
    return res


# ----------------------------------------------------------------------------- the byte track of a view
def _utf8_len(lead: int) -> int:
    """Bytes of the UTF-8 character that starts with ``lead`` (1 for a stray continuation byte)."""
    return 1 if lead < 0xC0 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4


@dataclass
class ViewState:
    """One text as an expert with a lossy tokenizer sees it: the inner ``ByteState`` of its view
    plus where the text is with respect to the rules."""

    inner: object  # the ByteState of the view (several ViewStates may share one: counted)
    at_start: bool  # nothing but spaces so far (leading-space rule)
    prev_space: bool  # the view's last byte is a space (collapse rule)
    n: int = 0  # bytes of text read after the prompt (for messages)
    char: bytes = b""  # bytes of the text's current incomplete character
    before: object | None = None  # inner state where that character began, if its bytes were fed
    outside: bool = False  # that character is already known to be outside the alphabet
    prev_out: bool = False  # the last complete character was outside the alphabet (fuse_unk)


class ViewTrack:
    """A :class:`ByteTrack` over an expert's *view* of the text (module docstring).

    Same interface as ``ByteTrack`` (``start`` / ``distributions`` / ``advance`` / ``release``);
    states are :class:`ViewState` objects. A byte the view drops leaves the inner state as it is.
    """

    def __init__(self, track: ByteTrack, rules: TextRules, name: str = "expert"):
        self.track = track
        self.rules = rules
        self.name = name
        self._tb = track.vb.token_bytes
        self._held: dict[int, list] = {}  # id(inner state) -> [state, references]
        chars = {c.encode("utf-8") for c in rules.alphabet} if rules.alphabet is not None else set()
        self._chars = chars
        self._prefixes = {c[:k] for c in chars for k in range(1, len(c) + 1)}
        self._by_char = rules.alphabet is not None
        self._missing = np.zeros(257, dtype=bool)
        self._missing[list(rules.missing_bytes or ())] = True
        self._char_masks: dict[bytes, np.ndarray] = {}
        self.masked_reads = 0  # bytes read (scored) that the view gives probability 0
        self._warned = False

    @property
    def reanchored(self) -> int:
        """Re-anchored states of the inner track (see align/bytes.py)."""
        return self.track.reanchored

    @property
    def revived(self) -> int:
        """Revived dormant paths of the inner track."""
        return self.track.revived

    # ------------------------------------------------------------------ shared inner states
    def _hold(self, s) -> None:
        entry = self._held.setdefault(id(s), [s, 0])
        entry[1] += 1

    def _drop(self, s) -> None:
        entry = self._held[id(s)]
        entry[1] -= 1
        if entry[1] == 0:
            del self._held[id(s)]
            self.track.release(s)

    def release(self, st: ViewState) -> None:
        """Drop ``st``'s references (once per state, as with ``ByteTrack.release``)."""
        self._drop(st.inner)
        if st.before is not None:
            self._drop(st.before)

    # ------------------------------------------------------------------ states
    def start(self, heads: list[list[int]], tails: list[bytes]) -> list[ViewState]:
        """States after each prompt (head ids as encoded by the expert's own tokenizer, tail bytes)."""
        # A tail that ends inside a character (a raw-bytes prompt): start before that character
        # and read its bytes through advance, so the state equals the one scoring reaches.
        cuts = [_complete_len(t) for t in tails]
        out = []
        for head, tail, c, s in zip(heads, tails, cuts, self.track.start(heads, [t[:c] for t, c in zip(tails, cuts)])):
            y0 = b"".join(self._tb[i] or b"" for i in head if 0 <= i < len(self._tb)) + tail[:c]
            self._hold(s)
            out.append(ViewState(s, at_start=not y0.strip(b" "), prev_space=y0.endswith(b" ")))
        for t in range(max((len(x) - c for x, c in zip(tails, cuts)), default=0)):
            idx = [k for k, (x, c) in enumerate(zip(tails, cuts)) if len(x) - c > t]
            new = self.advance([out[k] for k in idx], [tails[k][cuts[k] + t] for k in idx])
            for k, st in zip(idx, new):
                self.release(out[k])
                out[k] = replace(st, n=0)
        return out

    def _is_prefix(self, char: bytes) -> bool:
        """Whether ``char`` begins (or is) a character the vocabulary can spell."""
        return char in self._prefixes

    def _mask(self, st: ViewState) -> np.ndarray:
        """Units the view cannot produce next (bool [257]); STOP never."""
        if self._by_char:
            key = b"\xff" if st.outside else st.char
            m = self._char_masks.get(key)
            if m is None:
                m = np.ones(257, dtype=bool)
                m[STOP] = False
                if not st.outside:
                    for b in range(256):
                        m[b] = not self._is_prefix(st.char + bytes([b]))
                self._char_masks[key] = m
            m = m.copy()
        else:
            m = self._missing.copy()  # byte-level vocabulary with holes: those bytes only
        if not st.char and self._space_dropped(st):
            m[SPACE] = True
        return m

    def _space_dropped(self, st: ViewState) -> bool:
        r = self.rules
        return (r.strip_leading_spaces and st.at_start) or (r.collapse_spaces and st.prev_space)

    def _reason(self, st: ViewState, b: int) -> str:
        if b == SPACE and not st.char and self._space_dropped(st):
            if self.rules.strip_leading_spaces and st.at_start:
                return "a leading space, which its normaliser strips"
            return "a second space, where its normaliser collapses runs of spaces"
        if self._missing[b]:
            return "a byte its vocabulary has no token for (its tokenizer drops it)"
        return "a byte of a character outside its alphabet (its tokenizer has no byte pieces for it)"

    def distributions(self, states: list[ViewState], require: list[int] | None = None) -> np.ndarray:
        """Log-probabilities [len(states), 257] of the next unit in the view, with zero mass on
        the units the view cannot produce (renormalised over the rest)."""
        masks = [self._mask(st) for st in states]
        out = np.empty((len(states), 257))
        fed = list(range(len(states))) if require is None else [k for k, u in enumerate(require) if not masks[k][u]]
        rest = sorted(set(range(len(states))) - set(fed))
        for group, req in ((fed, require), (rest, None)):
            if group:
                d = self.track.distributions([states[k].inner for k in group],
                                             None if req is None else [req[k] for k in group])
                out[group] = d
        for k, m in enumerate(masks):
            if m.any():
                row = out[k]
                row[m] = -np.inf
                fin = np.isfinite(row)
                if fin.any():
                    top = row[fin].max()
                    row[fin] -= top + np.log(np.exp(row[fin] - top).sum())
        if require is not None:
            for k, u in enumerate(require):
                if masks[k][u]:
                    self._note(states[k], u)
        return out

    def _note(self, st: ViewState, u: int) -> None:
        self.masked_reads += 1
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"expert {self.name!r} gives byte 0x{u:02x} at byte {st.n} of the text after the prompt "
                f"probability 0: it is {self._reason(st, u)}. Scored alone, such a text gets -inf; in a "
                "mixture that byte's mass comes from the other experts", stacklevel=3)

    def _plan(self, st: ViewState, b: int):
        """(inner state to go on from, bytes to feed it, the child's fields) for byte ``b``."""
        r = self.rules
        base = st.inner
        f = dict(at_start=st.at_start, prev_space=st.prev_space, char=st.char, before=st.before,
                 outside=st.outside, prev_out=st.prev_out)
        if self._by_char:
            if f["char"] and not 0x80 <= b <= 0xBF:  # the pending character ended early: drop it
                base = f["before"] if f["before"] is not None else base
                f.update(char=b"", before=None, outside=False, prev_out=True)
            char = f["char"] + bytes([b])
            if f["outside"] or not self._is_prefix(char):
                base = f["before"] if f["before"] is not None else base  # undo what was fed of it
                done = len(char) >= _utf8_len(char[0])
                f.update(before=None, outside=not done, char=b"" if done else char)
                feed = b""
                if done:
                    if r.unk_bytes and not (r.fuse_unk and f["prev_out"]):
                        feed = r.unk_bytes
                        f.update(prev_space=feed.endswith(b" "), at_start=False)
                    f["prev_out"] = True
                return base, feed, f
            if len(char) < _utf8_len(char[0]):  # a multi-byte character of the alphabet goes on
                if not f["char"]:
                    f["before"] = base
                f["char"] = char
                return base, bytes([b]), f
            f.update(char=b"", before=None, prev_out=False)
        if self._missing[b]:  # a byte-level vocabulary without this byte: the tokenizer drops it
            return base, b"", f
        if b == SPACE and ((r.strip_leading_spaces and f["at_start"]) or (r.collapse_spaces and f["prev_space"])):
            return base, b"", f
        f.update(prev_space=b == SPACE, at_start=f["at_start"] and b == SPACE)
        return base, bytes([b]), f

    def advance(self, states: list[ViewState], units: list[int]) -> list[ViewState]:
        """Child states after one byte each; bytes the view drops leave the inner state unchanged."""
        for b in units:
            if b == STOP or not 0 <= b < 256:
                raise ValueError(f"cannot append unit {b} as a byte")
        plans = [self._plan(st, b) for st, b in zip(states, units)]
        cur = [base for base, _, _ in plans]
        for t in range(max((len(feed) for _, feed, _ in plans), default=0)):
            idx = [k for k, (_, feed, _) in enumerate(plans) if len(feed) > t]
            new = self.track.advance([cur[k] for k in idx], [plans[k][1][t] for k in idx])
            for k, s in zip(idx, new):
                if t > 0:  # an intermediate state of a multi-byte feed: only ours
                    self.track.release(cur[k])
                cur[k] = s
        out = []
        for st, s, (_, _, f) in zip(states, cur, plans):
            self._hold(s)
            if f["before"] is not None:
                self._hold(f["before"])
            out.append(ViewState(s, n=st.n + 1, **f))
        return out


def _complete_len(b: bytes) -> int:
    """Length of the longest prefix of ``b`` that does not end inside a UTF-8 character."""
    for back in range(1, min(4, len(b)) + 1):
        lead = b[-back]
        if lead < 0x80:
            return len(b)
        if lead >= 0xC0:  # a lead byte: complete iff its sequence is all there
            need = 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
            return len(b) if back >= need else len(b) - back
    return len(b)


def make_byte_track(expert, beam: int | None = DEFAULT_BEAM, prune: float = DEFAULT_PRUNE):
    """The byte track of ``expert``: a plain :class:`ByteTrack` when its tokenizer is lossless at
    the byte level, else a :class:`ViewTrack` over its view (module docstring)."""
    track = ByteTrack(expert, beam=beam, prune=prune)
    rules = getattr(track.vb, "rules", None)
    if rules is None or rules.lossless:
        return track
    return ViewTrack(track, rules, getattr(expert, "name", "expert"))
