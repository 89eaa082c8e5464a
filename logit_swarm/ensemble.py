"""The public :class:`Ensemble`: experts + weights + mode, which generates, scores and saves.

Which units are mixed is decided here, once: tokens when every expert has the same tokenizer by
content (:func:`choose_unit`), bytes + STOP otherwise. Everything else is delegated to
decode.py (generation), score.py (log-likelihoods) and recipe.py (saving/loading).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import recipe as recipe_io
from .align.bytes import DEFAULT_BEAM, DEFAULT_PRUNE
from .align.vocab import choose_unit
from .budget import plan as budget_plan
from .decode import Generation, generate_rows
from .mixing import as_weight_matrix, check_mode
from .score import build_table
from .windows import check_policy


def load_expert(path_or_url, device="cpu", dtype=None, backend: str | None = None, **kwargs):
    """Load an expert: a local Hugging Face directory, a remote endpoint, or a vLLM engine.

    Args:
        path_or_url: a model directory (config.json, model.safetensors, tokenizer.json), or the
            base URL of an OpenAI-compatible API (``http://host:port/v1``).
        device: "cpu", "cuda", "cuda:N" (for remote and vLLM experts: where the returned
            log-probabilities live, so they can be mixed with local experts on that device).
        dtype: torch dtype (or its name); local: default float32 on CPU, the checkpoint's dtype
            on GPU; remote: float32 (default) or float64 log-probabilities; vLLM: the engine's
            dtype (``dtype`` of ``vllm.LLM``).
        backend: None (local transformers for a directory, remote for a URL), "hf", "remote"
            or "vllm" (an in-process vLLM engine over the directory; needs
            ``pip install logit_swarm[vllm]`` and CUDA).
        **kwargs: local: ``name``, ``allow_pickle`` (accept .bin weights), ``trust_remote_code``,
            ``max_batch`` (rows per forward pass). Remote: ``model``, ``api_key``, ``tokenizer``
            (local tokenizer directory), ``top_k``, ``timeout``, ``retries``, ... (see
            :func:`logit_swarm.experts.remote.load_remote_expert`). vLLM: ``top_k``,
            ``tensor_parallel_size``, ``gpu_memory_utilization``, ``distributed_executor_backend``,
            ... (see :func:`logit_swarm.experts.vllm.load_vllm_expert`).

    Raises:
        FileNotFoundError: the directory or its files are missing.
        ValueError: unsafe or unsupported files, bad options, or an unusable device.
        ImportError: backend="vllm" without vLLM installed.
        logit_swarm.experts.remote.RemoteExpertError: the endpoint cannot be reached or refuses.
    """
    from .experts.remote import is_url

    s = str(path_or_url)
    if backend not in (None, "hf", "remote", "vllm"):
        raise ValueError(f"unknown backend {backend!r}; use None, 'hf', 'remote' or 'vllm'")
    if is_url(s) or backend == "remote":
        if backend not in (None, "remote"):
            raise ValueError(f"{s!r} is a URL: backend={backend!r} runs local models; drop backend= "
                             "(a URL is served by its own server)")
        from .experts.remote import load_remote_expert

        return load_remote_expert(s, device=device, dtype=dtype, **kwargs)
    if backend == "vllm":
        from .experts.vllm import load_vllm_expert

        return load_vllm_expert(path_or_url, device=device, dtype=dtype, **kwargs)
    from .experts.hf import load_hf_expert

    return load_hf_expert(path_or_url, device=device, dtype=dtype, **kwargs)


def _check_experts(experts) -> list:
    experts = list(experts)
    if not experts:
        raise ValueError("an ensemble needs at least one expert")
    devices = {str(e.device) for e in experts}
    if len(devices) > 1:
        raise ValueError(
            f"experts are on different devices ({', '.join(sorted(devices))}); load them all with the "
            "same device= so their distributions can be mixed without copies"
        )
    names = [e.name for e in experts]
    if len(set(names)) != len(names):
        # Names identify experts in recipes and tables; make duplicates distinct. The same object
        # given twice keeps its name (renaming it would rename both entries, and an object that
        # other code still uses).
        seen: dict[str, int] = {}
        done: set[int] = set()
        for e in experts:
            if id(e) in done:
                continue
            done.add(id(e))
            k = seen.get(e.name, 0)
            seen[e.name] = k + 1
            if k:
                e.name = f"{e.name}#{k}"
    return experts


class Ensemble:
    """A mixture of experts' next-unit distributions (DESIGN.md §3).

    Args:
        experts: loaded experts (see :func:`load_expert`).
        weights: one weight per expert; default uniform.
        mode: "probs" (linear mixture of probabilities) or "logits" (log-linear / product of
            experts; negative weights act as anti-experts).
        unit: force "token" or "byte"; default decided by :func:`choose_unit`.
        byte_beam, byte_prune: pruning of the byte-level tokenization marginal (align/bytes.py):
            paths kept per byte position and relative probability threshold. None / 0 = exact.
        decoding: default decoding settings stored in recipes (max_new_tokens, temperature, ...).
        truncation: what an expert whose context window is too short sees: "left" (the end of
            the text that fits, at that expert only; reported once per call), "error", or None
            (the enclosing run's policy, default "left"); see logit_swarm/windows.py.
    """

    def __init__(self, experts, weights=None, mode: str = "probs", unit: str | None = None,
                 byte_beam: int | None = DEFAULT_BEAM, byte_prune: float = DEFAULT_PRUNE,
                 decoding: dict | None = None, provenance: dict | None = None, truncation: str | None = None):
        self.experts = _check_experts(experts)
        self.truncation = check_policy(truncation)
        self.mode = check_mode(mode)
        n = len(self.experts)
        if weights is None:
            weights = np.full(n, 1.0 / n)
        self.weights = as_weight_matrix(weights, n, None, mode)[0]
        if unit is None:
            unit = choose_unit(self.experts)
        elif unit == "token" and choose_unit(self.experts) != "token":
            raise ValueError("unit='token' needs experts that share one tokenizer; use unit='byte'")
        elif unit not in ("token", "byte"):
            raise ValueError(f"unknown unit {unit!r}; use 'token' or 'byte'")
        self.unit = unit
        self.byte_beam = byte_beam
        self.byte_prune = byte_prune
        self.decoding = dict(decoding or {})
        self.provenance = dict(provenance or {})

    def __repr__(self) -> str:
        parts = ", ".join(f"{e.name}={w:.3g}" for e, w in zip(self.experts, self.weights))
        return f"Ensemble({parts}, mode={self.mode!r}, unit={self.unit!r})"

    def _row_weights(self, weights, n_rows: int) -> np.ndarray:
        w = self.weights if weights is None else weights
        return as_weight_matrix(w, len(self.experts), n_rows, self.mode)

    def generate(self, prompts, max_new_tokens: int = 32, temperature: float = 0.0, seed: int | None = None,
                 stop=None, weights=None, top_p: float = 1.0, truncation: str | None = None,
                 return_details: bool = False, progress=None, budget_unit: str = "tokens",
                 budget_tokenizer: int | str = 0):
        """Generate a continuation for each prompt.

        Args:
            prompts: list of strings, or of chat-message lists (each expert renders them with
                its own chat template; the continuation is one shared text), or (token units
                only) of token-id lists.
            max_new_tokens: the budget per row, in ``budget_unit`` (see :mod:`logit_swarm.budget`).
            budget_unit: "tokens" (default: tokens of the reference tokenizer, which at token
                level are the ensemble's units), "bytes" (UTF-8 bytes of the text) or "units"
                (the ensemble's own units: bytes at byte level).
            budget_tokenizer: the expert whose tokenizer counts a token budget (index or
                name; default 0, the first expert).
            temperature: 0 = greedy; otherwise sampling at this temperature.
            seed: seed of the per-row random streams (row r uses stream (seed, r)).
            stop: a string or list of strings; generation stops before the first occurrence.
            weights: per-row weights [len(prompts), N] (a whole swarm in one call) or one vector.
            top_p: nucleus sampling threshold (1 = off).
            truncation: "left", "error" or None (the ensemble's own ``truncation``).
            return_details: return :class:`Generation` objects (units, log-probs, finish reason).
        """
        if isinstance(prompts, str):
            raise ValueError("prompts must be a list of strings; wrap a single prompt in a list")
        prompts = list(prompts)
        if not prompts:
            raise ValueError("no prompts given; pass a non-empty list")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
        if not (temperature >= 0 and np.isfinite(temperature)):
            raise ValueError(f"temperature must be ≥ 0 (0 = greedy), got {temperature!r}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
        if isinstance(stop, str):
            stop = [stop]
        W = self._row_weights(weights, len(prompts))
        steps, rule = budget_plan(self.experts, self.unit, max_new_tokens, len(prompts), budget_unit,
                                  budget_tokenizer)
        outs: list[Generation] = generate_rows(
            self.experts, self.unit, prompts, W, self.mode, steps, temperature, top_p,
            seed, stop, check_policy(truncation) or self.truncation, self.byte_beam, self.byte_prune,
            progress, budget=rule,
        )
        return outs if return_details else [o.text for o in outs]

    def table(self, contexts, continuations, keep_full: bool | None = None, truncation: str | None = None):
        """Per-expert :class:`~logit_swarm.score.ScoreTable` of the pairs (runs the experts once).

        ``truncation``: "left", "error" or None (the ensemble's own)."""
        if keep_full is None:
            keep_full = self.mode == "logits"
        return build_table(self.experts, contexts, continuations, self.unit, keep_full,
                           self.byte_beam, self.byte_prune, check_policy(truncation) or self.truncation)

    def logprob(self, contexts, continuations, weights=None, truncation: str | None = None) -> list[float]:
        """log P(continuation | context) in nats for each pair (DESIGN.md §3 "score").

        ``weights``: one vector, or one row per pair ([pairs, N]); default the ensemble's.
        ``truncation``: "left", "error" or None (the ensemble's own).
        """
        if isinstance(contexts, str) or isinstance(continuations, str):
            raise ValueError("contexts and continuations must be lists of strings")
        contexts, continuations = list(contexts), list(continuations)
        if len(contexts) != len(continuations):
            raise ValueError(f"{len(contexts)} contexts but {len(continuations)} continuations; pair them up")
        if not contexts:
            raise ValueError("no (context, continuation) pairs given")
        W = self._row_weights(weights, len(contexts))
        t = self.table(contexts, continuations, truncation=truncation)
        return t.logprob_rows(W, self.mode).tolist()

    # ------------------------------------------------------------------ recipes
    def save(self, path) -> Path:
        """Write this ensemble as a JSON recipe (atomic). Returns the path."""
        return recipe_io.save_recipe(self, path)

    @classmethod
    def load(cls, path, device="cpu", dtype=None) -> Ensemble:
        """Load a recipe written by :meth:`save` (or by a search) into a working ensemble."""
        return load_recipe(path, device=device, dtype=dtype)


def load_recipe(path, device="cpu", dtype=None, **remote_options) -> Ensemble:
    """Load a recipe (see :mod:`logit_swarm.recipe`) into an :class:`Ensemble`.

    ``remote_options`` go to every remote expert's loader (e.g. ``api_key=``, ``timeout=``,
    ``retries=``); a recipe never stores an API key, only the name of the environment variable
    it is read from (``$LOGIT_SWARM_API_KEY`` unless the expert was loaded with another).
    """
    data, experts = recipe_io.load_recipe_parts(path, load_expert, device, dtype, remote_options)
    return Ensemble(
        experts,
        weights=data["weights"],
        mode=data.get("mode", "probs"),
        unit=data.get("unit"),
        byte_beam=data.get("byte_beam", DEFAULT_BEAM),
        byte_prune=data.get("byte_prune", DEFAULT_PRUNE),
        decoding=data.get("decoding"),
        provenance=data.get("provenance"),
    )
