"""Synthetic tasks over the zoo's specialties (``logit_swarm.zoo.corpora``), by name.

They need no data directory: records come from the zoo's seeded generators, so dev and test are
the same on every machine. Names (``zoo-`` + the zoo's task name, ``-`` for ``_``):

* ``zoo-facts``, ``zoo-facts-a``, ``zoo-facts-b``, ``zoo-arithmetic`` (alias ``zoo-arith``),
  ``zoo-sorting``, ``zoo-reasoning``, ``zoo-dialogue``: exact match by greedy generation
  (stop at a newline; ``auto`` matcher: yes/no, number, or normalised text);
* ``zoo-connectivity``, ``zoo-code``: multiple choice by log-likelihood per byte;
* ``zoo-<task>-mc`` / ``zoo-<task>-em``: the other kind where the zoo offers it;
* ``zoo-<specialty>-text``: −bits per byte of the specialty's held-out text (likelihood;
  ``zoo-shakespeare-text`` needs a data directory with ``tinyshakespeare/input.txt``);
* ``zoo-all``: the mean of ``zoo-facts``, ``zoo-arithmetic``, ``zoo-reasoning``,
  ``zoo-dialogue`` and ``zoo-code``, every part reported.

The zoo writes prompts so that ``prompt + answer`` is exactly the training text (answers carry
their own leading space), so prompts are used as they are and options are scored with no
separator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .records import GENERATORS
from .spec import register_task

DEV_SIZE = 50
TEST_SIZE = 200

#: Generation budget per zoo task, in the mixture's units (``budget_unit: units``: tokens when
#: the experts share a tokenizer, bytes when they differ); these are short answer lengths.
_MAX_NEW = {"facts": 24, "facts_a": 24, "facts_b": 24, "arithmetic": 8, "sorting": 20,
            "connectivity": 8, "reasoning": 20, "dialogue": 72, "code": 120}


#: Files the data-dependent specialties read, relative to the data directory.
_DATA_FILES = {"shakespeare": "tinyshakespeare/input.txt"}


def zoo_records(split: str, n: int, seed: int = 0, task: str = "facts", kind: str | None = None) -> list[dict]:
    """``n`` records of a zoo task (all of them when the zoo's pool for ``split`` is smaller)."""
    from logit_swarm.zoo.corpora import task_records

    try:
        return task_records(task, split, n, seed, kind)
    except ValueError as exc:
        if "asked for" not in str(exc):
            raise
        return task_records(task, split, None, seed, kind)


def zoo_text_records(split: str, n: int, seed: int = 0, specialty: str = "facts_a",
                     data_dir: str | None = None) -> list[dict]:
    """Held-out documents of a zoo specialty as ``{"text"}`` records.

    The zoo keeps one held-out set per specialty; even positions form dev, odd positions test.
    """
    from logit_swarm.zoo.corpora import heldout_text

    docs = heldout_text(specialty, None, data_dir=data_dir)
    if split not in ("dev", "test"):
        raise ValueError(f"zoo text has splits dev and test, not {split!r}")
    part = docs[0::2] if split == "dev" else docs[1::2]
    return [{"id": f"{specialty}-{split}-{i}", "text": d} for i, d in enumerate(part[:n])]


GENERATORS.add("zoo", zoo_records)
GENERATORS.add("zoo-text", zoo_text_records)


def zoo_spec(task: str, kind: str, dev: int = DEV_SIZE, test: int = TEST_SIZE) -> dict[str, Any]:
    """The spec of zoo task ``task`` as ``kind`` ("exact_match" or "multiple_choice")."""
    data = {"generator": "zoo", "task": task, "kind": kind, "sizes": {"dev": dev, "test": test},
            "seed": 0}
    if kind == "exact_match":
        return {"kind": "exact_match", "data": data, "prompt": "{prompt}", "match": "auto",
                "max_new_tokens": _MAX_NEW.get(task, 32), "budget_unit": "units", "stop": ["\n"]}
    return {"kind": "multiple_choice", "data": data, "prompt": "{prompt}", "scoring": "loglik_per_byte",
            "separator": "", "max_new_tokens": _MAX_NEW.get(task, 32), "budget_unit": "units"}


def _zoo_name(task: str) -> str:
    return "zoo-" + task.replace("_", "-")


def _register() -> None:
    try:
        from logit_swarm.zoo import corpora
    except ImportError:  # the zoo is optional for the task layer
        return
    for task, info in corpora.TASKS.items():
        name = _zoo_name(task)
        aliases = ("zoo-arith",) if task == "arithmetic" else ()
        register_task(name, zoo_spec(task, info.default_kind), aliases=aliases,
                      description=f"zoo {info.default_kind.replace('_', ' ')}: {info.description}")
        for kind in info.kinds:
            if kind == info.default_kind:
                continue
            suffix = "mc" if kind == "multiple_choice" else "em"
            register_task(f"{name}-{suffix}", zoo_spec(task, kind),
                          description=f"zoo {kind.replace('_', ' ')}: {info.description}")
    for specialty in corpora.SPECIALTIES:
        register_task(f"{_zoo_name(specialty)}-text",
                      {"kind": "likelihood", "data": {"generator": "zoo-text", "specialty": specialty,
                                                      "sizes": {"dev": 48, "test": 48}}},
                      description=f"zoo likelihood: −bits per byte of held-out {specialty} text")
    for specialty in getattr(corpora, "DATA_SPECIALTIES", ()):
        def make(data_dir: Path | None, overrides, specialty=specialty):
            return {"kind": "likelihood", "chunk_chars": 2000,
                    "data": {"generator": "zoo-text", "specialty": specialty, "data_dir": str(data_dir),
                             "sizes": {"dev": 48, "test": 48}}}, None

        register_task(f"{_zoo_name(specialty)}-text", make, needs_data=True,
                      files=(_DATA_FILES.get(specialty, ""),),
                      description=f"zoo likelihood: −bits per byte of held-out {specialty} text")
    parts = [n for n in ("zoo-facts", "zoo-arithmetic", "zoo-reasoning", "zoo-dialogue", "zoo-code")
             if n.removeprefix("zoo-").replace("-", "_") in corpora.TASKS]
    if parts:
        register_task("zoo-all", {"kind": "multi", "tasks": parts, "aggregate": "mean"},
                      description="zoo: mean of " + ", ".join(parts))


_register()
