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

from functools import cached_property

from ..align.view import UnsupportedTokenizer
from ..align.vocab import VocabBytes, analyse_vocab, tokenizer_fingerprint


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
