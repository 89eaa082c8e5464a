"""Local experts run by an in-process vLLM engine (``vllm.LLM``).

::

    e = ls.load_expert("path/to/model", backend="vllm", top_k=-1,
                       tensor_parallel_size=2, gpu_memory_utilization=0.45)

vLLM does not hand out logits, only top-k log-probabilities (``-1`` = the whole vocabulary; see
``../shared/notes/vllm_serving.md`` §1), so this expert is a
:class:`~logit_swarm.experts.sequence.SequenceExpert` like the remote one: every engine call is
one ``LLM.generate`` over a batch of ``TokensPrompt`` with ``SamplingParams(max_tokens=1,
temperature=0, logprobs=k, detokenize=False)`` (plus ``prompt_logprobs=k`` for teacher-forced
scoring, and ``flat_logprobs=True`` where the installed vLLM has it), and the answers are turned
into full distributions by the same leftover-mass rule (:mod:`logit_swarm.experts.topk`), exact
when k covers the vocabulary. The default here is ``top_k=-1`` (exact, like a local expert): the
engine is started with ``max_logprobs=-1`` for that. vLLM keeps its own prefix cache, so asking
for a whole sequence again per decode step costs about one block of recomputation.

Not run in this repository: vLLM cannot be installed on the CPU-only machines the project is
built on. What is tested without it: the conversion of vLLM-shaped outputs (``list[dict[int,
Logprob]]`` and ``FlatLogprobs``-like sequences), the whole expert against a stand-in engine that
answers in vLLM's shapes from a local model, argument validation, and the ImportError when vLLM
is missing. Engine options this module does not name are passed through to ``vllm.LLM``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .sequence import DEFAULT_CACHE_BYTES, SequenceExpert, read_model_config
from .topk import TopK

__all__ = ["VLLMExpert", "load_vllm_expert", "import_vllm", "position_topk", "VLLM_MISSING",
           "EXECUTOR_BACKENDS"]

#: What to do when vLLM is missing (the message of the ImportError).
VLLM_MISSING = (
    "backend='vllm' needs the vllm package, which is not installed: pip install 'logit_swarm[vllm]' "
    "(Linux with an NVIDIA GPU and CUDA; the PyPI wheel is the CUDA build). Without it, load the "
    "directory with the default backend (transformers), or serve it with `vllm serve` and load its URL"
)

#: Values of ``distributed_executor_backend`` passed through to vLLM (None = vLLM's choice).
EXECUTOR_BACKENDS = (None, "mp", "ray", "uni", "external_launcher")


def import_vllm():
    """The vllm module, or an ImportError that says how to get it."""
    try:
        import vllm
    except ImportError as exc:
        raise ImportError(VLLM_MISSING) from exc
    return vllm


class _VLLMApi:
    """The two vLLM names this module uses (a stand-in can be passed for tests or other builds)."""

    def __init__(self, vllm_module) -> None:
        self.SamplingParams = vllm_module.SamplingParams
        tp = getattr(vllm_module, "TokensPrompt", None)
        if tp is None:
            from vllm.inputs import TokensPrompt as tp  # older releases export it only here
        self.TokensPrompt = tp


def position_topk(entry: Any) -> TopK | None:
    """One position of vLLM log-probabilities as (ids, logprobs); None where vLLM gives None.

    ``entry`` is a mapping token id -> ``Logprob`` (``.logprob``) or a plain float, which is what
    both ``list[dict[int, Logprob]]`` and ``FlatLogprobs`` (indexed by position) yield.
    """
    if entry is None:
        return None
    if not isinstance(entry, Mapping):
        raise TypeError(f"expected a mapping token id -> Logprob, got {type(entry).__name__}")
    ids = np.fromiter((int(k) for k in entry.keys()), dtype=np.int64, count=len(entry))
    lps = np.fromiter((float(getattr(v, "logprob", v)) for v in entry.values()), dtype=np.float64,
                      count=len(entry))
    return ids, lps


class VLLMExpert(SequenceExpert):
    """An expert whose next-token answers come from a ``vllm.LLM`` engine (module docstring).

    Build it with :func:`load_vllm_expert` (or ``ls.load_expert(path, backend="vllm")``).

    Args:
        llm: the engine (anything with vLLM's ``generate(prompts, sampling_params, use_tqdm=)``).
        tokenizer: the model's fast tokenizer.
        name: short name.
        path: the model directory (recipes keep it).
        top_k: log-probabilities per position; -1 = the whole vocabulary (the engine must have
            been started with ``max_logprobs=-1`` or at least k).
        api: object with ``SamplingParams`` and ``TokensPrompt`` (default: from the vllm package).
        engine_options: the options the engine was started with (recorded by :meth:`describe`).
        max_batch: the most sequences per ``generate`` call.
        **kwargs: for :class:`~logit_swarm.experts.sequence.SequenceExpert`.
    """

    def __init__(self, llm, tokenizer, name: str, path: str | None = None, top_k: int = -1, api: Any = None,
                 engine_options: dict | None = None, max_batch: int = 1024, **kwargs: Any) -> None:
        super().__init__(tokenizer, name, top_k=top_k, **kwargs)
        if not (isinstance(max_batch, int) and max_batch >= 1):
            raise ValueError(f"max_batch must be a positive integer, got {max_batch!r}")
        self.llm = llm
        self.path = path
        self.api = api if api is not None else _VLLMApi(import_vllm())
        self.engine_options = dict(engine_options or {})
        self.max_batch = max_batch
        self._params: dict[bool, Any] = {}

    def __repr__(self) -> str:
        return f"VLLMExpert({self.name!r}, path={self.path!r}, top_k={self.top_k})"

    def describe(self) -> dict:
        """Recipe reference: kind "vllm", name, path, top_k and the engine's parallelism settings."""
        d = {"kind": "vllm", "name": self.name, "path": self.path, "top_k": self.top_k}
        for k in ("tensor_parallel_size", "gpu_memory_utilization", "distributed_executor_backend",
                  "max_model_len"):
            if self.engine_options.get(k) is not None:
                d[k] = self.engine_options[k]
        return d

    def sampling_params(self, prompt_logprobs: bool):
        """The ``SamplingParams`` of a next-token query (or, with ``prompt_logprobs``, a scoring one)."""
        if prompt_logprobs not in self._params:
            kw: dict[str, Any] = {"max_tokens": 1, "temperature": 0.0, "logprobs": self.top_k,
                                  "detokenize": False}
            if prompt_logprobs:
                kw["prompt_logprobs"] = self.top_k
            try:
                # Flat storage avoids one Python object per entry (k = -1 lists the vocabulary).
                params = self.api.SamplingParams(**kw, flat_logprobs=True)
            except TypeError:
                params = self.api.SamplingParams(**kw)  # releases without flat_logprobs
            self._params[prompt_logprobs] = params
        return self._params[prompt_logprobs]

    def _generate(self, seqs: list[tuple[int, ...]], prompt_logprobs: bool) -> list[Any]:
        outs: list[Any] = []
        params = self.sampling_params(prompt_logprobs)
        for start in range(0, len(seqs), self.max_batch):
            chunk = seqs[start : start + self.max_batch]
            prompts = [self.api.TokensPrompt(prompt_token_ids=list(s)) for s in chunk]
            got = list(self.llm.generate(prompts, params, use_tqdm=False))
            if len(got) != len(chunk):
                raise RuntimeError(f"vLLM returned {len(got)} outputs for {len(chunk)} prompts")
            self.forward_calls += 1
            self.forward_rows += len(chunk)
            outs.extend(got)
        return outs

    @staticmethod
    def _generated(out: Any) -> TopK:
        comp = out.outputs[0]
        lp = comp.logprobs
        if lp is None or len(lp) == 0:
            raise RuntimeError("vLLM returned no log-probabilities for the generated token; "
                               "was the engine started with max_logprobs >= top_k?")
        top = position_topk(lp[0])
        if top is None:
            raise RuntimeError("vLLM returned no log-probabilities for the generated token")
        return top

    def _query_next(self, seqs: list[tuple[int, ...]]) -> list[TopK]:
        return [self._generated(o) for o in self._generate(seqs, prompt_logprobs=False)]

    def _query_forced(self, seqs: list[tuple[int, ...]], starts: list[int]) -> list[list[TopK]]:
        result = []
        for s, a, out in zip(seqs, starts, self._generate(seqs, prompt_logprobs=True)):
            plp = out.prompt_logprobs
            if plp is None or len(plp) < len(s):
                raise RuntimeError("vLLM returned no prompt log-probabilities; the engine must allow "
                                   "prompt_logprobs (max_logprobs >= top_k)")
            rows: list[TopK] = []
            for j in range(a, len(s)):
                top = position_topk(plp[j])
                if top is None:
                    raise RuntimeError(f"vLLM gave no prompt log-probabilities at position {j}")
                rows.append(top)
            rows.append(self._generated(out))
            result.append(rows)
        return result


def load_vllm_expert(path, device="cpu", dtype=None, name: str | None = None, top_k: int = -1,
                     tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.9,
                     distributed_executor_backend: str | None = None, max_model_len: int | None = None,
                     allow_pickle: bool = False, trust_remote_code: bool = False,
                     cache_bytes: int = DEFAULT_CACHE_BYTES, score_mode: str = "auto", max_batch: int = 1024,
                     **engine_kwargs: Any) -> VLLMExpert:
    """Start an in-process vLLM engine over a local model directory and wrap it as an expert.

    Args:
        path: the model directory (config.json, safetensors weights, tokenizer files).
        device: where the returned log-probabilities live (the engine itself runs on the GPUs
            vLLM is given; ``CUDA_VISIBLE_DEVICES`` chooses them).
        dtype: the engine's weight dtype (``"auto"`` when None: the checkpoint's).
        name: short name (default: the directory name).
        top_k: log-probabilities per position (-1 = all: exact, the default).
        tensor_parallel_size: GPUs the model is split over.
        gpu_memory_utilization: fraction of each GPU's memory this engine may take (lower it
            to put several engines on one GPU, e.g. 0.45 for two).
        distributed_executor_backend: None, "mp", "ray" (multi-node; start the Ray cluster
            first), "uni" or "external_launcher"; passed through.
        max_model_len: context length to serve (None: the model's).
        allow_pickle: also accept .bin/.pt weights (otherwise vLLM is told to load safetensors).
        trust_remote_code: run custom modelling code shipped with the model. Off by default.
        cache_bytes, score_mode, max_batch: see :class:`VLLMExpert`.
        **engine_kwargs: any other ``vllm.LLM`` option (e.g. ``enforce_eager``, ``seed``,
            ``kv_cache_memory_bytes``, ``max_logprobs``), passed through.

    Raises:
        ValueError / FileNotFoundError: bad arguments or directory (checked before vLLM starts).
        ImportError: vLLM is not installed.
    """
    from .hf import _check_dir

    p = Path(path).expanduser()
    _check_dir(p, allow_pickle)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not (top_k == -1 or top_k >= 1):
        raise ValueError(f"top_k must be a positive integer or -1 (the whole vocabulary), got {top_k!r}")
    if isinstance(tensor_parallel_size, bool) or not isinstance(tensor_parallel_size, int) or tensor_parallel_size < 1:
        raise ValueError(
            f"tensor_parallel_size must be a positive integer (GPUs per model), got {tensor_parallel_size!r}")
    if not (isinstance(gpu_memory_utilization, (int, float)) and not isinstance(gpu_memory_utilization, bool)
            and math.isfinite(gpu_memory_utilization) and 0 < gpu_memory_utilization <= 1):
        raise ValueError(f"gpu_memory_utilization must be a fraction in (0, 1], got {gpu_memory_utilization!r}")
    if distributed_executor_backend not in EXECUTOR_BACKENDS:
        raise ValueError(f"distributed_executor_backend must be one of {EXECUTOR_BACKENDS}, "
                         f"got {distributed_executor_backend!r}")
    if max_model_len is not None and (not isinstance(max_model_len, int) or max_model_len < 1):
        raise ValueError(f"max_model_len must be a positive integer, got {max_model_len!r}")
    if not isinstance(dtype, (str, type(None))):
        dtype = str(dtype).replace("torch.", "")
    vllm = import_vllm()
    import torch

    if torch.cuda.is_available() and tensor_parallel_size > torch.cuda.device_count():
        raise ValueError(f"tensor_parallel_size={tensor_parallel_size} but only {torch.cuda.device_count()} "
                         "GPU(s) are visible; lower it or set CUDA_VISIBLE_DEVICES")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(p), trust_remote_code=trust_remote_code)
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"{str(p)!r}: only fast tokenizers (tokenizer.json) are supported")
    options: dict[str, Any] = {
        "tensor_parallel_size": tensor_parallel_size,
        "gpu_memory_utilization": float(gpu_memory_utilization),
        "distributed_executor_backend": distributed_executor_backend,
        "max_model_len": max_model_len,
    }
    kwargs: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
    kwargs.update(model=str(p.resolve()), dtype=dtype or "auto", trust_remote_code=trust_remote_code,
                  max_logprobs=-1 if top_k == -1 else max(top_k, 20))
    if not allow_pickle:
        kwargs["load_format"] = "safetensors"
    kwargs.update(engine_kwargs)
    try:
        # Raw log-probabilities (before any logits processor) are the model's distribution.
        llm = vllm.LLM(**{"logprobs_mode": "raw_logprobs", **kwargs})
    except TypeError:
        llm = vllm.LLM(**kwargs)  # releases before logprobs_mode: their own default applies
    info = read_model_config(p)
    return VLLMExpert(llm, tok, name=name or p.name, path=str(p.resolve()), top_k=top_k,
                      engine_options=options, max_batch=max_batch, device=device, model_info=info,
                      context_window=max_model_len, cache_bytes=cache_bytes, score_mode=score_mode)
