"""Recipes: the saved product of a search, as plain JSON (never pickle).

A recipe holds expert references (name, path, kind; a remote expert's url, model and top_k
instead of a path, never its API key), weights, mode, unit, byte-level pruning,
decoding defaults and the provenance of the search (task, seed, history summary). Expert paths
are stored absolute and also relative to the recipe file, so a recipe moved together with its
experts still loads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .atomic import atomic_write_text

RECIPE_VERSION = 1


def recipe_dict(ens, base_dir: Path | None = None) -> dict:
    """The JSON-able description of an ensemble."""
    experts = []
    for e in ens.experts:
        d = dict(e.describe())
        d["bos"] = e.bos_rule()  # informational: how the expert's own tokenizer starts a text
        if d.get("path") and base_dir is not None:
            try:
                d["relpath"] = os.path.relpath(d["path"], base_dir)
            except ValueError:  # different drive (Windows)
                pass
        experts.append(d)
    return {
        "logit_swarm_recipe": RECIPE_VERSION,
        "experts": experts,
        "weights": [float(w) for w in ens.weights],
        "mode": ens.mode,
        "unit": ens.unit,
        "byte_beam": ens.byte_beam,
        "byte_prune": ens.byte_prune,
        "decoding": ens.decoding,
        "provenance": ens.provenance,
    }


def save_recipe(ens, path) -> Path:
    """Write ``ens`` as a recipe JSON at ``path`` (atomically)."""
    p = Path(path)
    data = recipe_dict(ens, p.resolve().parent)
    return atomic_write_text(p, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_recipe(path) -> dict:
    """Parse and validate a recipe file; returns the dict."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(
            f"recipe {str(p)!r} does not exist; write one with Ensemble.save or `logit-swarm search`")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"recipe {str(p)!r} is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or "experts" not in data or "weights" not in data:
        raise ValueError(f"{str(p)!r} is not a logit_swarm recipe (needs 'experts' and 'weights')")
    if len(data["experts"]) != len(data["weights"]):
        raise ValueError(f"recipe {str(p)!r} has {len(data['experts'])} experts but {len(data['weights'])} weights")
    return data


def _expert_path(ref: dict, base: Path) -> str:
    cands = []
    if ref.get("path"):
        cands.append(Path(ref["path"]))
    if ref.get("relpath"):
        cands.append(base / ref["relpath"])
    for c in cands:
        if c.exists():
            return str(c)
    raise FileNotFoundError(
        f"expert {ref.get('name')!r} of the recipe was not found at "
        + " or ".join(repr(str(c)) for c in cands)
        + "; rebuild it (e.g. `logit-swarm zoo build`) or edit the recipe's path"
    )


#: Keys of a vLLM expert's recipe entry that are passed back to its loader.
_VLLM_KEYS = ("top_k", "tensor_parallel_size", "gpu_memory_utilization", "distributed_executor_backend",
              "max_model_len")


def _load_ref(ref: dict, base: Path, load_expert, device, dtype, remote_options: dict):
    """Load one expert of a recipe from its reference (kind "hf", "remote" or "vllm") with the
    given loader (``ensemble.load_expert``; passed in so this module never imports the ensemble)."""
    kind = ref.get("kind", "hf")
    if kind == "hf":
        return load_expert(_expert_path(ref, base), device=device, dtype=dtype, name=ref.get("name"))
    if kind == "remote":
        if not ref.get("url") or not ref.get("model"):
            raise ValueError(f"recipe expert {ref.get('name')!r} is remote but lacks 'url' or 'model'")
        kw = {"model": ref["model"], "top_k": ref.get("top_k", 20), "name": ref.get("name")}
        if ref.get("tokenizer"):
            kw["tokenizer"] = ref["tokenizer"]
        if ref.get("api_key_env"):
            kw["api_key_env"] = ref["api_key_env"]
        kw.update(remote_options)
        # The dtype of a recipe is about local weights; remote answers stay float32.
        return load_expert(ref["url"], device=device, **kw)
    if kind == "vllm":
        kw = {k: ref[k] for k in _VLLM_KEYS if ref.get(k) is not None}
        return load_expert(_expert_path(ref, base), device=device, dtype=dtype, backend="vllm",
                           name=ref.get("name"), **kw)
    raise ValueError(f"recipe expert kind {kind!r} is not supported by this version (known: hf, remote, vllm)")


def load_recipe_parts(path, load_expert, device="cpu", dtype=None, remote_options=None):
    """Read a recipe and load its experts: ``(data, experts)``.

    ``load_expert`` is :func:`logit_swarm.ensemble.load_expert`; :func:`logit_swarm.ensemble.load_recipe`
    (and ``Ensemble.load``) build the ensemble from the result.
    """
    p = Path(path)
    data = read_recipe(p)
    base = p.resolve().parent
    experts = [_load_ref(ref, base, load_expert, device, dtype, dict(remote_options or {}))
               for ref in data["experts"]]
    return data, experts
