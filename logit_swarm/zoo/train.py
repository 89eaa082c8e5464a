"""Training one tiny expert: config from ``transformers``, packed token stream, AdamW loop.

Determinism: model initialisation and training run inside ``torch.random.fork_rng`` with
``torch.manual_seed(seed)`` (the caller's global RNG state is untouched); training windows are
drawn with ``numpy.random.default_rng(seed)``; dropout is off. Two runs with the same seed,
device and thread count give identical weights.
"""

from __future__ import annotations

import math
import sys
import time
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
class TokenStream:
    """Documents packed into one token stream; training windows start at document starts."""

    tokens: np.ndarray  # int64, all documents concatenated
    starts: np.ndarray  # int64, offsets of the documents that can begin a full window
    probs: np.ndarray  # float64, probability of each start


def pack_documents(docs: list[list[int]], weights: list[float], seq_len: int) -> TokenStream:
    """Pack ``docs`` into a stream; ``weights[i]`` is how often document i starts a window."""
    lengths = np.array([len(d) for d in docs], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    tokens = np.fromiter((t for d in docs for t in d), dtype=np.int64, count=int(lengths.sum()))
    ok = offsets + seq_len + 1 <= len(tokens)
    if not ok.any():
        raise ValueError(f"training corpus has {len(tokens)} tokens, fewer than one window of "
                         f"{seq_len + 1}; raise the document count")
    w = np.asarray(weights, dtype=np.float64)[ok]
    return TokenStream(tokens, offsets[ok], w / w.sum())


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
    threads: int


def train_expert(spec: ExpertSpec, config, stream: TokenStream, steps: int,
                 seed: int, device: str = "cpu", progress: bool = True) -> TrainResult:
    """Initialise ``config`` with ``seed`` and train it for ``steps`` AdamW steps on ``stream``."""
    from transformers import AutoModelForCausalLM

    if steps < 1:
        raise ValueError(f"expert {spec.name!r}: steps must be >= 1, got {steps}")
    t0 = time.time()
    dev = torch.device(device)
    fork_devices = [dev.index or 0] if dev.type == "cuda" else []
    rng = np.random.default_rng(seed)
    T, B = spec.seq_len, spec.batch
    tokens = torch.from_numpy(stream.tokens)
    losses: list[float] = []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).to(dev)
        model.train()
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                                lr=spec.lr, betas=(0.9, 0.95), eps=1e-8)
        bar = _bar(spec.name, steps, progress)
        idx = torch.arange(T + 1)
        for step in range(steps):
            starts = torch.from_numpy(rng.choice(stream.starts, size=B, p=stream.probs))
            window = tokens[starts[:, None] + idx[None, :]].to(dev)
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, steps, spec.lr)
            logits = model(input_ids=window[:, :-1]).logits
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)).float(),
                                                     window[:, 1:].reshape(-1))
            if not torch.isfinite(loss):
                raise RuntimeError(f"expert {spec.name!r}: loss became {loss.item()} at step {step}; "
                                   "lower its learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            if bar is not None:
                bar.update(1)
                if step % 10 == 0 or step == steps - 1:
                    bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if bar is not None:
            bar.close()
    model.eval()
    tail = losses[-max(1, min(10, len(losses) // 5)):]
    return TrainResult(model.to("cpu"), steps, float(np.mean(tail)), losses[0], steps * B * T,
                       time.time() - t0, torch.get_num_threads())


def _bar(name: str, steps: int, progress: bool):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=steps, desc=f"{name:>8}", unit="step", file=sys.stderr, leave=True,
                dynamic_ncols=True, mininterval=0.5)
