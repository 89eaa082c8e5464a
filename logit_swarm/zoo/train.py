"""Training one tiny expert: config from ``transformers``, packed token stream, AdamW loop.

Determinism: model initialisation and training run inside ``torch.random.fork_rng`` with
``torch.manual_seed(seed)`` (the caller's global RNG state is untouched); training documents are
drawn with ``numpy.random.default_rng(seed)``; dropout is off. Two runs with the same seed,
device and thread count give identical weights (the builder trains on one CPU thread).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .spec import ExpertSpec

MAX_POSITIONS = 512


def model_config(spec: ExpertSpec, vocab_size: int, bos: int, eos: int, pad: int):
    """The ``transformers`` config of ``spec`` (vocabulary from its tokenizer)."""
    import transformers as tf

    ffn = int(round(spec.d_model * spec.ffn_mult / 8)) * 8  # multiple of 8, as real models do
    common = dict(vocab_size=vocab_size, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)
    if spec.arch == "gpt2":
        return tf.GPT2Config(n_positions=MAX_POSITIONS, n_embd=spec.d_model, n_layer=spec.n_layers,
                             n_head=spec.n_heads, n_inner=ffn, resid_pdrop=0.0, embd_pdrop=0.0,
                             attn_pdrop=0.0, tie_word_embeddings=True, **common)
    llama_like = dict(hidden_size=spec.d_model, intermediate_size=ffn, num_hidden_layers=spec.n_layers,
                      num_attention_heads=spec.n_heads, max_position_embeddings=MAX_POSITIONS,
                      attention_dropout=0.0, **common)
    if spec.arch == "llama":
        return tf.LlamaConfig(num_key_value_heads=spec.n_heads, tie_word_embeddings=False, **llama_like)
    if spec.arch == "mistral":
        # Grouped-query attention as in Mistral-7B; no sliding window at these lengths.
        return tf.MistralConfig(num_key_value_heads=max(1, spec.n_heads // 2), sliding_window=None,
                                tie_word_embeddings=False, **llama_like)
    if spec.arch == "qwen2":
        return tf.Qwen2Config(num_key_value_heads=max(1, spec.n_heads // 2), use_sliding_window=False,
                              tie_word_embeddings=True, **llama_like)
    raise ValueError(f"unknown architecture {spec.arch!r}")  # spec validation makes this unreachable


@dataclass
class DocumentSet:
    """Tokenized training documents and how often each is drawn.

    Every training row is one document from its first token, cut at the row length and
    right-padded; pads are excluded from the loss. Rows are not packed: a prompt at inference
    also starts at position 0, and short synthetic documents get many more optimiser updates
    per second of compute than packed windows would.

    Tokenizers that add a BOS put it in the documents themselves. For the others (byte-level,
    GPT-2 style) ``prefix_id`` (their EOS, which GPT-2 uses between documents) is put in front
    of half of the rows: the model then predicts a document's first token after EOS, which is
    how an empty context is conditioned and how the specialisation matrix scores a document,
    while the other half keeps prompts-at-position-0 in distribution.
    """

    docs: list[np.ndarray]
    probs: np.ndarray  # float64, probability of drawing each document
    pad_id: int
    prefix_id: int | None = None

    @classmethod
    def build(cls, docs: list[list[int]], weights: list[float], pad_id: int,
              prefix_id: int | None = None) -> DocumentSet:
        """``weights[i]`` is how often document i is drawn (normalised here)."""
        if not docs:
            raise ValueError("no training documents")
        w = np.asarray(weights, dtype=np.float64)
        return cls([np.asarray(d, dtype=np.int64) for d in docs], w / w.sum(), pad_id, prefix_id)

    def batch(self, rng: np.random.Generator, size: int, max_len: int) -> torch.Tensor:
        """``size`` documents drawn by ``rng``, as a padded ``[size, <= max_len]`` tensor."""
        picks = rng.choice(len(self.docs), size=size, p=self.probs)
        prefixed = rng.random(size) < 0.5 if self.prefix_id is not None else np.zeros(size, dtype=bool)
        rows = []
        for i, pre in zip(picks, prefixed):
            d = self.docs[i]
            rows.append((np.concatenate([[self.prefix_id], d]) if pre else d)[:max_len])
        width = max(len(r) for r in rows)
        out = np.full((size, width), self.pad_id, dtype=np.int64)
        for j, r in enumerate(rows):
            out[j, :len(r)] = r
        return torch.from_numpy(out)


def _lr_at(step: int, steps: int, lr: float) -> float:
    # Linear warm-up over 5% of the steps, then cosine decay to 10% of the peak.
    warm = max(1, steps // 20)
    if step < warm:
        return lr * (step + 1) / warm
    t = (step - warm) / max(1, steps - warm)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


@dataclass
class TrainResult:
    """What training produced: the model (on CPU) and the numbers for its card."""

    model: torch.nn.Module
    steps: int
    final_loss: float
    first_loss: float
    tokens_seen: int
    seconds: float
    cpu_seconds: float
    threads: int


def train_expert(spec: ExpertSpec, config, data: DocumentSet, steps: int, seed: int, device: str = "cpu",
                 on_step: Callable[[int, float], None] | None = None) -> TrainResult:
    """Initialise ``config`` with ``seed`` and train it for ``steps`` AdamW steps on ``data``.

    A step is ``spec.batch`` documents of at most ``spec.seq_len + 1`` tokens; the loss is the
    mean next-token cross-entropy over real (non-pad) tokens. ``on_step(step, loss)`` is called
    after every step (progress reporting).
    """
    from transformers import AutoModelForCausalLM

    if steps < 1:
        raise ValueError(f"expert {spec.name!r}: steps must be >= 1, got {steps}")
    t0, c0 = time.time(), time.process_time()
    dev = torch.device(device)
    fork_devices = [dev.index or 0] if dev.type == "cuda" else []
    rng = np.random.default_rng(seed)
    losses: list[float] = []
    tokens_seen = 0
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).to(dev)
        model.train()
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                                lr=spec.lr, betas=(0.9, 0.95), eps=1e-8)
        for step in range(steps):
            rows = data.batch(rng, spec.batch, spec.seq_len + 1).to(dev)
            targets = rows[:, 1:].clone()
            # Right padding: real tokens never attend to pads, so only the loss needs masking.
            # Every zoo tokenizer has a pad token distinct from EOS, so pads are recognisable.
            targets[targets == data.pad_id] = -100
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, steps, spec.lr)
            logits = model(input_ids=rows[:, :-1]).logits
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)).float(),
                                                     targets.reshape(-1), ignore_index=-100)
            if not torch.isfinite(loss):
                raise RuntimeError(f"expert {spec.name!r}: loss became {loss.item()} at step {step}; "
                                   "lower its learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            tokens_seen += int((targets != -100).sum())
            if on_step is not None:
                on_step(step, losses[-1])
    model.eval()
    tail = losses[-max(1, min(10, len(losses) // 5)):]
    return TrainResult(model.to("cpu"), steps, float(np.mean(tail)), losses[0], tokens_seen,
                       time.time() - t0, time.process_time() - c0, torch.get_num_threads())
