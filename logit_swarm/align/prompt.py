"""Where a prompt's byte-level covering starts: its head ids and tail bytes (align/bytes.py,
"The prompt"). Kept apart from bytes.py because it needs the text view of vocab.py, which
itself builds on the byte track."""

from __future__ import annotations

from .vocab import model_view


def text_prompt(expert, prompt: str | bytes) -> tuple[list[int], bytes]:
    """Head ids and tail bytes of a plain-text prompt, given as text or as raw bytes.

    Raw bytes (which may end inside a multi-byte character) are the model's view of the empty
    text followed by those bytes, so ``text_prompt(e, s.encode())`` equals ``text_prompt(e, s)``
    for any string ``s`` the tokenizer spells exactly.
    """
    if isinstance(prompt, bytes):
        head, tail = split_prompt(expert, expert.encode(""), text="")
        return head, tail + prompt
    return split_prompt(expert, expert.encode(prompt), text=prompt)


def split_prompt(expert, ids: list[int], text_is_empty: bool = False, text: str | None = None,
                 ) -> tuple[list[int], bytes]:
    """Head ids and tail bytes of a prompt (see "The prompt" in the module docstring).

    The head is the prompt's ids up to and including its last token without bytes (BOS, a chat
    marker), or the expert's start token when there is none; every ordinary token after it is
    given back as bytes (the tail), so the covering of the prompt starts at the head and no
    token that could end inside the prompt is lost. ``text``: the prompt's own text when ``ids``
    are its untruncated canonical encoding; the tail is then ``model_view(text)`` (one rule for
    every split of a text, also where a tokenizer drops its dummy space). ``text_is_empty`` is
    the older spelling of ``text=""``.
    """
    vb = expert.vocab_bytes
    tb = vb.token_bytes
    k = len(ids)
    while k > 0 and 0 <= ids[k - 1] < len(tb) and tb[ids[k - 1]] is not None:
        k -= 1
    if text is None and text_is_empty:
        text = ""
    if k == 0 and ids and not _has_start(expert):
        # An expert with neither BOS nor EOS (e.g. a plain character model) cannot condition on
        # empty text: its first canonical token conditions instead, and the covering starts after it.
        return [ids[0]], b"".join(tb[t] for t in ids[1:])
    head = list(ids[:k]) or [expert.start_id]
    tail = b"".join(tb[t] for t in ids[k:])
    if text is not None:
        view = model_view(vb, text)
        # The ids spell the text (up to a dropped dummy space): take the text's own view, so
        # that the tail of ctx + cont is always the tail of ctx followed by cont's bytes.
        if tail == view or (vb.dummy_prefix and b" " + tail == view):
            return head, view
    return head, tail


def _has_start(expert) -> bool:
    """Whether ``expert`` has a token to condition an empty text on (BOS, or EOS standing in)."""
    try:
        _ = expert.start_id
    except ValueError:
        return False
    return True
