"""Likelihood of target text: utility = −(bits per byte), comparable across tokenizers.

Spec options (besides the common ones)::

    kind: likelihood
    data: {dev: corpus.dev.jsonl, test: ...}   # {"text"} records, or {"prompt", "answer"} pairs
    chunk_chars: 1000        # optional: split long {"text"} records into pieces of at most this
                             # many characters; each piece is scored after the piece before it

``{"text"}`` records are scored from an empty context; ``{"prompt", "answer"}`` (or
``context``/``target``) score the answer given the prompt. The experts score every pair once per
split into a table; every later W is arithmetic on it. The utility is the corpus-level
−Σ log2 p / Σ bytes, so long and short examples weigh by their length, and an ensemble of
experts with different vocabularies is measured in the same unit (bytes) as each expert.
"""

from __future__ import annotations

import numpy as np

from . import backend
from .base import EvalResult, Task, register_kind
from .metrics import LN2, bits_per_byte
from .records import Record, text_example


def chunk_text(text: str, max_chars: int) -> list[str]:
    """Split ``text`` into consecutive pieces of at most ``max_chars`` characters, preferring to
    cut after whitespace so words stay whole; the pieces concatenate back to ``text``."""
    if max_chars < 1:
        raise ValueError(f"chunk_chars must be >= 1, got {max_chars}")
    pieces, start = [], 0
    while start < len(text):
        end = min(start + max_chars, len(text))
        if end < len(text):
            cut = max(text.rfind(" ", start, end), text.rfind("\n", start, end))
            if cut > start:
                end = cut + 1
        pieces.append(text[start:end])
        start = end
    return pieces


@register_kind("likelihood", aliases=("perplexity", "loglik"))
class LikelihoodTask(Task):
    """−bits per byte of target text under each particle's mixture (see the module docstring)."""

    OPTIONS = Task.OPTIONS | {"chunk_chars"}

    def __init__(self, spec, base_dir=None, data_dir=None):
        super().__init__(spec, base_dir, data_dir)
        self.chunk_chars = self.spec.get("chunk_chars")
        if self.chunk_chars is not None and int(self.chunk_chars) < 1:
            raise ValueError(f"chunk_chars must be a positive number of characters, got {self.chunk_chars!r}")

    def normalise(self, raw: Record) -> Record:
        """A raw record as ``{context, target}``."""
        return text_example(raw, self.fields)

    def pairs(self, split: str) -> tuple[list[str], list[str], np.ndarray]:
        """(contexts, targets, example index of each pair) after chunking."""
        contexts, targets, owner = [], [], []
        for i, ex in enumerate(self.examples(split)):
            pieces = [ex["target"]]
            if self.chunk_chars and not ex["context"]:
                pieces = chunk_text(ex["target"], int(self.chunk_chars))
            for j, piece in enumerate(pieces):
                # Each chunk after the first continues from the text before it, bounded by the
                # chunk size, so a chunk is not scored as if it began a document.
                ctx = ex["context"] if j == 0 else pieces[j - 1]
                contexts.append(ctx)
                targets.append(piece)
                owner.append(i)
        if not any(targets):
            raise ValueError(f"task {self.name!r}: split {split!r} has no target text to score")
        return contexts, targets, np.asarray(owner)

    def _evaluate(self, pool, split, allow_test):
        contexts, targets, owner = self.pairs(split)
        lp, nbytes = backend.pair_logprobs(self.cache, pool, f"{self.name}/{split}/lik",
                                           contexts, targets)
        bpb = bits_per_byte(lp, nbytes)
        n = len(self.examples(split))
        # Per-example −bits per byte (examples with an empty target get 0).
        ex_lp = np.zeros((lp.shape[0], n))
        ex_bytes = np.zeros(n)
        np.add.at(ex_lp.T, owner, lp.T)
        np.add.at(ex_bytes, owner, nbytes)
        per_ex = np.where(ex_bytes > 0, ex_lp / (LN2 * np.maximum(ex_bytes, 1)), 0.0)
        nats = -lp.sum(1) / max(int(nbytes.sum()), 1)
        return EvalResult(-bpb, {"bits_per_byte": bpb, "nats_per_byte": nats}, split, n,
                          per_example=per_ex)
