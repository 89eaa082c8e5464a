"""The tokenizer side of an expert, shared by every kind (local HF, remote, vLLM).

An expert is a tokenizer plus something that answers next-token distributions. Everything that
only needs the tokenizer — its content fingerprint, the byte view of its vocabulary, encoding
prompts, rendering chat messages, checking the context window — lives here, so all kinds of
experts encode the same text to the same ids (which is what lets a remote expert mix with its
local twin at token level).

Classes using :class:`TokenizerSide` provide ``tokenizer``, ``name``, ``context_window``,
``stop_ids`` and ``start_id``.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

from ..align.view import UnsupportedTokenizer
from ..align.vocab import VocabBytes, analyse_vocab, tokenizer_fingerprint


def _bos_source(tok) -> str:
    """The file setting that decides whether a BOS is added: the saved tokenizer.json's
    post_processor (what the ``tokenizers`` pipeline runs), else tokenizer_config's add_bos_token."""
    saved = Path(str(getattr(tok, "name_or_path", "") or "")) / "tokenizer.json"
    post = None
    if saved.is_file():
        post = json.loads(saved.read_text(encoding="utf-8")).get("post_processor")
    flag = getattr(tok, "add_bos_token", None)
    parts = []
    if post:
        parts.append(f"tokenizer.json post_processor {post.get('type')}")
    else:
        if saved.is_file():
            parts.append("tokenizer.json has no post_processor")
        if flag is not None:
            parts.append(f"add_bos_token={flag}")
    return ", ".join(parts) or "tokenizer files not found; read from encoding"


class TokenizerSide:
    """Mixin: fingerprint, vocabulary bytes, encoding, chat rendering and length checks."""

    @cached_property
    def fingerprint(self) -> str:
        """Content hash of the tokenizer (see :func:`tokenizer_fingerprint`)."""
        return tokenizer_fingerprint(self.tokenizer)

    @cached_property
    def vocab_bytes(self) -> VocabBytes:
        """Byte view of the vocabulary (computed on first use: byte-level mixing only).

        Raises:
            UnsupportedTokenizer: naming this expert and the tokenizer.json component that
                rewrites text, when its tokens cannot stand for bytes.
        """
        try:
            return analyse_vocab(self.tokenizer, set(self.stop_ids))
        except UnsupportedTokenizer as err:
            raise UnsupportedTokenizer(f"expert {self.name!r}: {err}") from None

    def bos_rule(self) -> dict:
        """How this expert's own tokenizer starts a text, read from its files and checked by
        encoding (what ``transformers`` does for this model).

        Returns a JSON-able dict: ``adds`` (the special tokens ``tokenizer(text)`` puts before
        the text: BOS, or nothing), ``source`` (the file setting that decides it: tokenizer.json's
        post_processor, tokenizer_config's add_bos_token) and ``empty_text`` (the token that
        conditions an empty context when nothing is added). Prompts are encoded with this rule,
        so scores and generations see the BOS the model's own tokenizer gives it.
        """
        tok = self.tokenizer
        plain = tok("a", add_special_tokens=False)["input_ids"]
        full = tok("a", add_special_tokens=True)["input_ids"]
        cut = len(full) - len(plain)
        added = full[:cut] if cut > 0 and full[cut:] == plain else []
        out = {"adds": [self._token_name(i) for i in added], "source": _bos_source(tok)}
        if not added:
            try:
                out["empty_text"] = self._token_name(self.start_id)
            except ValueError:
                out["empty_text"] = None  # no BOS/EOS at all (e.g. slm4096): a prompt needs text
        return out

    def _token_name(self, tid: int) -> str:
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        added = backend.get_added_tokens_decoder() if backend is not None else {}
        if tid in added:  # its literal content (a normalised added token may be listed otherwise)
            return added[tid].content
        return self.tokenizer.convert_ids_to_tokens([tid])[0]

    def first_start_id(self, *candidates) -> int:
        """The first integer among ``candidates`` (BOS/EOS ids), else the first stop id.

        That token conditions the model on an empty text when the tokenizer adds no BOS itself.
        """
        for v in candidates:
            if isinstance(v, int):
                return v
        if self.stop_ids:
            return self.stop_ids[0]
        raise ValueError(
            f"expert {self.name!r} has no BOS or EOS token, so it cannot be conditioned on empty text; "
            "give the prompt some text"
        )

    def encode(self, text: str) -> list[int]:
        """Canonical ids of ``text`` as a prompt (with the tokenizer's own BOS, if it adds one)."""
        ids = self.tokenizer(text, add_special_tokens=True)["input_ids"]
        return list(ids) if ids else [self.start_id]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and character offsets of ``text`` (special tokens get an empty span at 0)."""
        enc = self.tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]

    def render_chat(self, messages: list[dict]) -> list[int]:
        """Ids of a chat prompt rendered with this expert's own chat template."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(
                f"expert {self.name!r} has no chat template; pass plain-text prompts, or add a "
                "chat_template to its tokenizer_config.json"
            )
        out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if hasattr(out, "keys"):
            out = out["input_ids"]
        ids = list(out)
        if ids and isinstance(ids[0], list):
            ids = ids[0]
        return ids

    def check_length(self, n_tokens: int, what: str = "prompt") -> None:
        """Raise if ``n_tokens`` does not fit in the context window (when it is known)."""
        if self.context_window is not None and n_tokens > self.context_window:
            raise ValueError(
                f"{what} needs {n_tokens} tokens but expert {self.name!r} has a context window of "
                f"{self.context_window}; shorten it, lower max_new_tokens, or pass truncation='left'"
            )
