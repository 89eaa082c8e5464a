"""The expert contract, written down: what the engine (decode, score, align) asks of an expert.

Every kind of expert satisfies :class:`Expert`: local HF models (:mod:`.hf`), sequence-answered
ones (:mod:`.sequence`), OpenAI-compatible endpoints (:mod:`.remote`), in-process vLLM engines
(:mod:`.vllm`) and the search's memoising wrapper (:mod:`logit_swarm.search.memo`). It is
``runtime_checkable``, so ``isinstance(e, Expert)`` checks that the members exist (not their
signatures; the tests run each kind through the engine for that).

Nodes. An expert hands out integer *node ids*, one per token sequence it has seen; a node holds
the next-token log-probabilities after its sequence (and, for local models, its KV cache).
``prefill`` makes nodes for whole sequences, ``extend`` makes children of nodes (one token each),
``score_chunks`` scores several tokens after a node without keeping nodes, and the engine gives
each node back with ``store.release`` when no row needs it any more.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["Expert", "NodeReleaser"]


@runtime_checkable
class NodeReleaser(Protocol):
    """The part of an expert's node store the engine uses."""

    def retain(self, node: int) -> None:
        """Add a reference to ``node``."""
        ...

    def release(self, node: int) -> None:
        """Drop a reference; the node's memory is freed at zero."""
        ...


@runtime_checkable
class Expert(Protocol):
    """One causal LM and its tokenizer, as the engine sees it.

    Attributes:
        name: unique within an ensemble (recipes and tables use it).
        tokenizer: a ``transformers`` tokenizer (local: the tokenizer side is always local).
        vocab_size: the length of each next-token log-probability row.
        device: where the rows live.
        store: the node store (:class:`NodeReleaser`).
        forward_calls, forward_rows: cost counters (model calls / sequences), for accounting.
    """

    name: str
    tokenizer: Any
    vocab_size: int
    device: Any
    store: Any
    forward_calls: int
    forward_rows: int

    @property
    def fingerprint(self) -> str:
        """The tokenizer's content hash: equal fingerprints mix at token level."""
        ...

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """Token ids that end generation (EOS, end of turn); they map to the byte level's STOP."""
        ...

    @property
    def start_id(self) -> int:
        """The token a document starts with (BOS, or the tokenizer's stand-in)."""
        ...

    def encode(self, text: str) -> list[int]:
        """The canonical tokenization of ``text`` (no special tokens)."""
        ...

    def prefill(self, seqs: list[list[int]]) -> tuple[list[int], torch.Tensor]:
        """Nodes for whole sequences and their next-token log-probabilities ``[len(seqs), V]``."""
        ...

    def extend(self, parents: list[int], tokens: list[int]) -> tuple[list[int], torch.Tensor]:
        """Child nodes (parent + one token each) and their next-token log-probabilities."""
        ...

    def score_chunks(self, parents: list[int], chunks: list[list[int]]) -> list[torch.Tensor]:
        """Per parent, the log-probability of each token of its chunk given the tokens before it."""
        ...

    def describe(self) -> dict:
        """The JSON reference a recipe stores to load this expert again."""
        ...
