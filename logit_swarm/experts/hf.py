"""Local Hugging Face causal LMs as experts.

An :class:`HFExpert` wraps one ``AutoModelForCausalLM`` and its fast tokenizer and exposes the
three operations the engine needs, all batched:

* :meth:`HFExpert.prefill` — run whole prompts, keep their KV cache as nodes;
* :meth:`HFExpert.extend` — one new token for each of many parent nodes (decode step);
* :meth:`HFExpert.score_chunks` — teacher-forced log-probabilities of token chunks after parent
  nodes (scoring; nothing is kept).

Every call returns next-token log-probabilities over the tokenizer's vocabulary (logits of padded
embedding rows beyond ``len(tokenizer)`` are masked out, so each row is a proper distribution over
real tokens).

Loading is safe by default: safetensors only (``allow_pickle=True`` opts into ``.bin`` files, which
are then read with ``weights_only``) and ``trust_remote_code=False``.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path

import torch

from .cache import NodeStore, cache_kwarg, check_cache, layer_windows, make_cache, output_cache
from .text import TokenizerSide

# Config attribute names under which architectures store their context window.
_WINDOW_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def _resolve_device(device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available; use device='cpu'")
    return dev


def _check_dir(path: Path, allow_pickle: bool) -> None:
    if not path.exists():
        raise FileNotFoundError(
            f"expert directory {str(path)!r} does not exist; pass a local Hugging Face model directory "
            "(config.json, model.safetensors, tokenizer.json), e.g. one built by `logit-swarm zoo build`"
        )
    if not path.is_dir():
        raise FileNotFoundError(f"expert path {str(path)!r} is a file; pass the model's directory")
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{str(path)!r} has no config.json; it is not a Hugging Face model directory")
    has_st = any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").exists()
    if not has_st:
        has_bin = any(path.glob("*.bin")) or any(path.glob("*.pt"))
        if has_bin and not allow_pickle:
            raise ValueError(
                f"{str(path)!r} has only pickle weights (.bin/.pt), which can run code when loaded; "
                "convert them to safetensors, or pass allow_pickle=True if you trust the files"
            )
        if not has_bin:
            raise FileNotFoundError(f"{str(path)!r} has no weights (model.safetensors)")
    if not (path / "tokenizer.json").exists() and not (path / "tokenizer_config.json").exists():
        raise FileNotFoundError(f"{str(path)!r} has no tokenizer files (tokenizer.json)")


class HFExpert(TokenizerSide):
    """One local causal LM plus its tokenizer, with a node cache for batched incremental decoding.

    Attributes:
        name: short name (the directory name unless given).
        path: the directory it was loaded from.
        model, tokenizer: the transformers objects.
        device, dtype: where and in what precision it runs.
        vocab_size: number of token units (``len(tokenizer)``).
        context_window: the longest sequence the model accepts, or None if unknown.
        forward_calls: number of model forward passes run so far (for cost accounting).
        forward_rows: number of rows (sequences) those passes covered.
    """

    def __init__(self, model, tokenizer, name: str, path: str | None = None, max_batch: int = 512):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.path = path
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.vocab_size = len(tokenizer)
        n_logits = model.get_output_embeddings().weight.shape[0]
        if n_logits < self.vocab_size:
            raise ValueError(
                f"expert {name!r}: the model has {n_logits} output logits but its tokenizer has "
                f"{self.vocab_size} tokens; the tokenizer does not belong to this model"
            )
        self.context_window = None
        for key in _WINDOW_KEYS:
            val = getattr(model.config, key, None)
            if isinstance(val, int) and val > 0:
                self.context_window = val
                break
        self.max_batch = max_batch
        # Per layer: sliding window or None; refuses unforkable caches here, not mid-run.
        self._cache_kw = cache_kwarg(model)
        self.layer_windows = self._probe_cache(layer_windows(model, name))
        self.store = NodeStore()
        self.forward_calls = 0
        self.forward_rows = 0

    # ----------------------------------------------------------------------------- identity
    @cached_property
    def stop_ids(self) -> tuple[int, ...]:
        """Token ids that end generation: EOS / end-of-turn from tokenizer, config and generation config."""
        ids: set[int] = set()

        def add(v):
            if v is None:
                return
            if isinstance(v, (list, tuple)):
                for x in v:
                    add(x)
            else:
                ids.add(int(v))

        add(self.tokenizer.eos_token_id)
        add(getattr(self.model.config, "eos_token_id", None))
        gen = getattr(self.model, "generation_config", None)
        if gen is not None:
            add(getattr(gen, "eos_token_id", None))
        return tuple(sorted(i for i in ids if 0 <= i < self.vocab_size))

    @cached_property
    def start_id(self) -> int:
        """Token used to condition on an empty text when the tokenizer adds no BOS itself."""
        return self.first_start_id(self.tokenizer.bos_token_id, getattr(self.model.config, "bos_token_id", None),
                                   self.tokenizer.eos_token_id)

    def describe(self) -> dict:
        """A JSON-able reference to this expert (for recipes)."""
        return {"name": self.name, "path": self.path, "kind": "hf"}

    # ----------------------------------------------------------------------------- forward
    def _logprobs(self, logits: torch.Tensor) -> torch.Tensor:
        """Masked log-softmax over the tokenizer's vocabulary; float32 at least."""
        logits = logits[..., : self.vocab_size]
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        # One scalar reduction instead of an elementwise mask: NaN/inf anywhere makes the sum non-finite.
        if not torch.isfinite(logits.sum()):
            raise RuntimeError(
                f"expert {self.name!r} produced non-finite logits (NaN/inf); its weights may be broken "
                "or the dtype too narrow: try dtype=torch.float32"
            )
        return torch.log_softmax(logits, dim=-1)

    def _run(self, input_ids, attention_mask, position_ids, cache):
        self.forward_calls += 1
        self.forward_rows += int(input_ids.shape[0])
        with torch.inference_mode():
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=True,
                **{self._cache_kw: cache},
            )
        return out

    def prefill(self, seqs: list[list[int]]) -> tuple[list[int], torch.Tensor]:
        """Run whole token sequences; returns (node ids, next-token log-probs [len(seqs), V]).

        Identical sequences are computed once and share one node (it is retained once per
        extra caller, so each returned id must be released once).
        """
        if not seqs:
            return [], torch.empty(0, self.vocab_size)
        for s in seqs:
            if not s:
                raise ValueError("cannot prefill an empty token sequence")
            self.check_length(len(s))
        uniq: dict[tuple, int] = {}
        order = []
        for s in seqs:
            key = tuple(s)
            if key not in uniq:
                uniq[key] = len(uniq)
            order.append(uniq[key])
        keys = list(uniq)
        nodes_u: list[int] = [0] * len(keys)
        lps_u: list[torch.Tensor | None] = [None] * len(keys)
        # Batch by similar length so that padding stays small.
        by_len = sorted(range(len(keys)), key=lambda i: len(keys[i]))
        for start in range(0, len(by_len), self.max_batch):
            chunk = by_len[start : start + self.max_batch]
            length = max(len(keys[i]) for i in chunk)
            ids = torch.zeros(len(chunk), length, dtype=torch.long)
            mask = torch.zeros(len(chunk), length, dtype=torch.long)
            for r, i in enumerate(chunk):
                s = keys[i]
                ids[r, length - len(s):] = torch.tensor(s)
                mask[r, length - len(s):] = 1
            ids, mask = ids.to(self.device), mask.to(self.device)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            out = self._run(ids, mask, pos, None)
            cache = output_cache(out)
            ks = [layer.keys for layer in cache.layers]
            vs = [layer.values for layer in cache.layers]
            new = self.store.add_group(ks, vs, mask, mask.sum(-1))
            lp = self._logprobs(out.logits[:, -1, :])
            for r, i in enumerate(chunk):
                nodes_u[i] = new[r]
                lps_u[i] = lp[r]
        counts = [0] * len(keys)
        nodes = []
        for u in order:
            if counts[u]:
                self.store.retain(nodes_u[u])
            counts[u] += 1
            nodes.append(nodes_u[u])
        lps = torch.stack([lps_u[u] for u in order])
        return nodes, lps

    def _probe_cache(self, windows: list[int | None] | None) -> list[int | None]:
        """One two-token forward at load: the cache the model really builds must be the layout
        :func:`layer_windows` read from its config (a model whose forward makes a state-space or
        custom cache is refused now, with a message, instead of failing mid-run). Returns the
        per-layer windows."""
        ids = torch.zeros(1, 2, dtype=torch.long, device=self.device)
        with torch.inference_mode():
            out = self.model(input_ids=ids, use_cache=True)
        return check_cache(output_cache(out), windows, self.name)

    def _cache_from(self, keys, values, length: int):
        """A cache over stored tensors of padded ``length`` (no copy; see cache.make_cache)."""
        return make_cache(keys, values, self.layer_windows, length)

    def extend(self, parents: list[int], tokens: list[int]) -> tuple[list[int], torch.Tensor]:
        """One new token after each parent node; returns (new node ids, log-probs [M, V]).

        The caller must deduplicate (parent, token) pairs it wants shared.
        """
        if not parents:
            return [], torch.empty(0, self.vocab_size, device=self.device)
        nodes: list[int] = []
        lps: list[torch.Tensor] = []
        for start in range(0, len(parents), self.max_batch):
            par = parents[start : start + self.max_batch]
            tok = tokens[start : start + self.max_batch]
            keys, values, mask, next_pos = self.store.gather(par)
            if self.context_window is not None and int(next_pos.max()) + 1 > self.context_window:
                raise ValueError(
                    f"the text reached expert {self.name!r}'s context window of {self.context_window} "
                    "tokens; lower max_new_tokens or shorten the text (truncation='left' makes room "
                    "only when the text starts)"
                )
            ids = torch.tensor(tok, dtype=torch.long, device=self.device)[:, None]
            full_mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            out = self._run(ids, full_mask, next_pos[:, None], self._cache_from(keys, values, mask.shape[1]))
            cache = output_cache(out)
            ks = [layer.keys for layer in cache.layers]
            vs = [layer.values for layer in cache.layers]
            nodes.extend(self.store.add_group(ks, vs, full_mask, next_pos + 1))
            lps.append(self._logprobs(out.logits[:, -1, :]))
        return nodes, torch.cat(lps, 0)

    def score_chunks(self, parents: list[int], chunks: list[list[int]]) -> list[torch.Tensor]:
        """Teacher-forced log-probs after each parent: for chunk c, a tensor [len(c), V] whose row
        t is the distribution of the token *after* c[t]. Nothing is cached."""
        outs: list[torch.Tensor] = []
        for start in range(0, len(parents), self.max_batch):
            par = parents[start : start + self.max_batch]
            chs = chunks[start : start + self.max_batch]
            keys, values, mask, next_pos = self.store.gather(par)
            width = max(len(c) for c in chs)
            if self.context_window is not None and int(next_pos.max()) + width > self.context_window:
                raise ValueError(
                    f"text needs {int(next_pos.max()) + width} tokens but expert {self.name!r} has a "
                    f"context window of {self.context_window}; shorten it or pass truncation='left'"
                )
            ids = torch.zeros(len(chs), width, dtype=torch.long)
            cm = torch.zeros(len(chs), width, dtype=torch.long)
            for r, c in enumerate(chs):
                ids[r, : len(c)] = torch.tensor(c)
                cm[r, : len(c)] = 1
            ids, cm = ids.to(self.device), cm.to(self.device)
            full_mask = torch.cat([mask, cm], dim=1)
            pos = next_pos[:, None] + torch.arange(width, device=self.device)[None, :]
            out = self._run(ids, full_mask, pos, self._cache_from(keys, values, mask.shape[1]))
            lp = self._logprobs(out.logits)
            for r, c in enumerate(chs):
                outs.append(lp[r, : len(c)])
        return outs


@contextmanager
def _quiet_loading():
    """No per-tensor "Loading weights" bar from transformers while one expert loads (a pool of
    experts would print one bar each); the caller's own setting is restored afterwards."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def load_hf_expert(
    path,
    device="cpu",
    dtype=None,
    name: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    max_batch: int = 512,
) -> HFExpert:
    """Load a local Hugging Face causal-LM directory as an expert.

    Args:
        path: the model directory (config.json, model.safetensors, tokenizer files).
        device: "cpu", "cuda", "cuda:1", ...
        dtype: torch dtype; default float32 on CPU and the checkpoint's own dtype on GPU.
        name: a short name; default the directory name.
        allow_pickle: also accept .bin/.pt weights (read with weights_only). Off by default.
        trust_remote_code: run custom modelling code shipped with the model. Off by default.
        max_batch: the most rows one forward pass takes; larger batches are split.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(path).expanduser()
    _check_dir(p, allow_pickle)
    dev = _resolve_device(device)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if dtype is None:
        dtype = torch.float32 if dev.type == "cpu" else "auto"
    tok = AutoTokenizer.from_pretrained(str(p), trust_remote_code=trust_remote_code)
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"{str(p)!r}: only fast tokenizers (tokenizer.json) are supported")
    with _quiet_loading():
        model = AutoModelForCausalLM.from_pretrained(
            str(p),
            dtype=dtype,
            use_safetensors=None if allow_pickle else True,
            trust_remote_code=trust_remote_code,
        ).to(dev)
    return HFExpert(model, tok, name=name or p.name, path=str(p.resolve()), max_batch=max_batch)


def read_card(path) -> dict:
    """The model card (card.json) of a zoo expert, or {} if absent."""
    f = Path(path) / "card.json"
    return json.loads(f.read_text()) if f.exists() else {}
