"""The embedded default: a zoo of tiny heterogeneous experts, built offline and cached.

No model hub is reachable, so the project brings its own experts: tiny causal LMs of four
architectures (GPT-2, Llama, Mistral, Qwen2) with three tokenizers trained here (two byte-level
BPEs of different sizes, one SentencePiece-style BPE with byte fallback), each trained for a few
hundred steps on one specialty of synthetic data or on the standard library's source::

    from logit_swarm.zoo import zoo_experts, zoo_matrix
    paths = zoo_experts()            # name -> HF directory; builds (~5 min on 2 cores) if missing
    m = zoo_matrix()                 # expert -> specialty -> bits per byte on held-out text

``facts_a`` and ``facts_b`` know disjoint halves of one invented world's facts and share a
tokenizer, so a mixture of the two beats either alone; ``corpora.task_records`` makes the
matching dev/test questions for every specialty. See ``spec`` for the pool, ``build`` for the
cache and its crash safety, ``matrix`` for the specialisation matrix.
"""

from __future__ import annotations

import os
from pathlib import Path

from .build import Plan, is_complete
from .build import build as _build
from .cache import ENV_ZOO, cache_root, read_card, read_marker

__all__ = ["build_zoo", "zoo_dir", "zoo_experts", "zoo_matrix", "zoo_cards", "ENV_ZOO", "cache_root"]


def build_zoo(out: str | os.PathLike | None = None, size: str = "tiny", device: str = "cpu", seed: int = 0,
              data_dir: str | os.PathLike | None = None, experts: list[str] | None = None,
              progress: bool = True, *, steps_scale: float = 1.0, force: bool = False,
              threads: int | None = None, jobs: int | None = None) -> dict[str, Path]:
    """Build the zoo (or reuse a complete cached one) and return expert name -> directory.

    ``out`` defaults to ``zoo_dir(...)``. ``experts`` builds a subset (e.g. ``["facts_a",
    "facts_b"]``); ``steps_scale`` multiplies every expert's training steps (``0.02`` gives a
    fast, barely trained zoo for tests); both change the recipe hash, so they never overwrite
    the full zoo's cache entry. ``data_dir`` adds the experts that need external data
    (``bard`` on Tiny Shakespeare). ``force`` rebuilds everything. ``jobs`` experts train at
    once in separate processes (default: one per CPU core, up to 8; 1 for ``micro`` and CUDA);
    ``threads`` is torch's CPU threads per expert (default 1, so the weights do not depend on
    ``jobs``). Same seed and settings give byte-identical ``model.safetensors``.
    """
    plan = Plan(size, seed, data_dir, experts, steps_scale)
    return _build(plan, out, device=device, progress=progress, force=force, threads=threads, jobs=jobs)


def zoo_dir(size: str = "tiny", seed: int = 0, data_dir: str | os.PathLike | None = None,
            experts: list[str] | None = None, steps_scale: float = 1.0) -> Path:
    """Where the zoo of these settings lives: ``$LOGIT_SWARM_ZOO`` if set, else
    ``~/.cache/logit_swarm/zoo/<size>-<recipe hash>`` (it may not be built yet)."""
    return Plan(size, seed, data_dir, experts, steps_scale).default_dir()


def zoo_experts(out: str | os.PathLike | None = None, size: str = "tiny", seed: int = 0,
                data_dir: str | os.PathLike | None = None, experts: list[str] | None = None,
                build: bool = True, device: str = "cpu", progress: bool = True,
                steps_scale: float = 1.0) -> dict[str, Path]:
    """Expert name -> directory of a complete zoo, building it first if it is missing.

    With ``build=False`` a missing or incomplete zoo raises FileNotFoundError instead.
    """
    plan = Plan(size, seed, data_dir, experts, steps_scale)
    where = Path(out).expanduser() if out is not None else plan.default_dir()
    if is_complete(where, plan):
        return {s.name: where / s.name for s in plan.experts}
    if not build:
        raise FileNotFoundError(f"no complete {size} zoo at {where}; build it with "
                                f"`logit-swarm zoo build --size {size} --seed {seed}`"
                                + (f" --out {where}" if out is not None else ""))
    return _build(plan, where, device=device, progress=progress)


def zoo_cards(out: str | os.PathLike | None = None, size: str = "tiny", seed: int = 0,
              data_dir: str | os.PathLike | None = None, experts: list[str] | None = None,
              steps_scale: float = 1.0) -> dict[str, dict]:
    """Expert name -> model card (``card.json``) of a complete zoo; FileNotFoundError if absent.

    With ``out`` given, the zoo found there is listed whatever its recipe (read from its
    ``zoo.json``); otherwise the zoo of these settings.
    """
    if out is not None:
        where = Path(out).expanduser()
        marker = read_marker(where)
        if not marker or not marker.get("complete"):
            raise FileNotFoundError(f"no complete zoo at {where}; build it with `logit-swarm zoo build --out {where}`")
        names = list(marker.get("order") or marker["experts"])
    else:
        plan = Plan(size, seed, data_dir, experts, steps_scale)
        where = plan.default_dir()
        if not is_complete(where, plan):
            raise FileNotFoundError(f"no complete {size} zoo at {where}; build it with "
                                    f"`logit-swarm zoo build --size {size} --seed {seed}`")
        names = [s.name for s in plan.experts]
    return {n: {**(read_card(where / n) or {}), "path": str(where / n)} for n in names}


def zoo_matrix(out: str | os.PathLike | None = None, size: str = "tiny", seed: int = 0,
               data_dir: str | os.PathLike | None = None, specialties: list[str] | None = None,
               device: str = "cpu", max_docs: int | None = None, build: bool = True,
               progress: bool = False) -> dict[str, dict[str, float]]:
    """The specialisation matrix: expert -> specialty -> bits per byte of held-out text.

    Bits per byte = (sum of the expert's token NLLs over its own canonical tokenization, stop
    included) / ln 2 / (UTF-8 bytes of the text), so experts with different tokenizers compare.
    ``out`` given: the zoo there (must be complete); otherwise ``zoo_experts(...)``.
    """
    from .matrix import specialisation_matrix

    if out is not None:
        cards = zoo_cards(out)
        paths = {n: Path(c["path"]) for n, c in cards.items()}
        data_dir = data_dir if data_dir is not None else (read_marker(Path(out)) or {}).get("data_dir")
    else:
        paths = zoo_experts(size=size, seed=seed, data_dir=data_dir, build=build, device=device,
                            progress=progress)
    return specialisation_matrix(paths, specialties=specialties, device=device, max_docs=max_docs,
                                 data_dir=data_dir, progress=progress)
