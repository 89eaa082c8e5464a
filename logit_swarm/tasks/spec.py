"""Task specs and named tasks: ``load_task(spec_path_or_name, data_dir=None, **overrides)``.

A spec is a mapping (from a YAML/JSON file or built in Python)::

    name: zoo-facts                  # optional; default: the file's stem / registered name
    kind: multiple_choice            # a registered kind (base.KINDS)
    data: {dev: facts.dev.jsonl, test: facts.test.jsonl}   # or paper_format.json, or a generator
    fields: {prompt: q, choices: options, answer: label}  # optional field-name mapping
    limit: {dev: 50}                 # optional: split sizes, the first N examples of a split
    version: 1                       # optional: free-form, kept in task.spec for provenance
    data_dir: ../data                # optional: where named sub-tasks (kind: multi) find files
    ...                              # kind-specific options (see each kind's module)

Named tasks (the paper's tasks, the zoo's synthetic tasks) are registered in :data:`TASKS` with
a function that writes their spec; ``load_task("mmlu", data_dir=...)`` builds one, and keyword
overrides (``limit=5``, ``scoring="loglik_per_byte"``, ``scorer=...``) replace spec entries.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .base import KINDS, Task
from .records import resolve_data_dir
from .registry import Registry, UnknownNameError

SPEC_SUFFIXES = (".yaml", ".yml", ".json")

SpecMaker = Callable[[Path | None, Mapping[str, Any]], tuple[dict[str, Any], Path | None]]


@dataclass(frozen=True)
class NamedTask:
    """A registered task: how to write its spec, and what it needs to exist.

    ``make_spec(data_dir, overrides) -> (spec, base_dir)``; ``data_dir`` is the resolved data
    directory when ``needs_data`` (else ``None``). ``files`` are paths the task reads, relative
    to ``files_dir(data_dir)``, used to list only available tasks. ``requires`` says what else
    it needs (e.g. "a local toxicity scorer") for listings and errors.
    """

    name: str
    make_spec: SpecMaker
    description: str = ""
    needs_data: bool = False
    files: tuple[str, ...] = ()
    files_dir: Callable[[Path], Path] | None = None
    requires: str | None = None
    is_available: Callable[[], bool] | None = field(default=None, compare=False)

    def available(self, data_dir: Path | None) -> bool:
        """Whether this task can be built now (its files exist, its requirement is met)."""
        if self.is_available is not None and not self.is_available():
            return False
        if not self.needs_data:
            return True
        if data_dir is None:
            return False
        base = self.files_dir(data_dir) if self.files_dir else data_dir
        return all((base / f).is_file() for f in self.files)


#: Tasks by name (case-insensitive; "-" and "_" are the same).
TASKS: Registry[NamedTask] = Registry("task")


def register_task(name: str, make_spec: SpecMaker | Mapping[str, Any], *, description: str = "",
                  needs_data: bool = False, files: Sequence[str] = (),
                  files_dir: Callable[[Path], Path] | None = None, requires: str | None = None,
                  is_available: Callable[[], bool] | None = None,
                  aliases: Sequence[str] = (), replace: bool = False) -> NamedTask:
    """Register a named task. ``make_spec`` may be a plain spec mapping (no data dir needed)."""
    if isinstance(make_spec, Mapping):
        fixed = dict(make_spec)

        def make_spec(data_dir, overrides, fixed=fixed):  # noqa: ANN001 - simple closure
            return dict(fixed), None

    entry = NamedTask(name, make_spec, description, needs_data, tuple(files), files_dir, requires,
                      is_available)
    return TASKS.add(name, entry, aliases=tuple(aliases), replace=replace)


def read_spec_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML or JSON spec file into a dict (its ``name`` defaults to the file stem)."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    try:
        spec = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot parse task spec {str(p)!r}: {exc}") from None
    if not isinstance(spec, dict):
        raise ValueError(f"task spec {str(p)!r} must be a mapping with at least kind: and data:")
    spec.setdefault("name", p.stem.split(".")[0] if p.suffix.lower() in SPEC_SUFFIXES else p.stem)
    return spec


def _find_spec_file(ref: str, base_dir: Path | None) -> Path | None:
    p = Path(ref).expanduser()
    candidates = [p] if p.is_absolute() else ([base_dir / p] if base_dir else []) + [p]
    for c in candidates:
        if c.is_file():
            return c
    return None


def build_task(spec: Mapping[str, Any], base_dir: str | os.PathLike | None = None,
               data_dir: str | os.PathLike | None = None) -> Task:
    """Build a task from a spec mapping (``kind`` picks the class)."""
    if "kind" not in spec:
        raise ValueError(f"task spec needs kind: one of {', '.join(KINDS.names())}")
    cls = KINDS.get(spec["kind"])
    return cls(spec, base_dir=base_dir, data_dir=data_dir)


def load_task(spec_or_name: Any, data_dir: str | os.PathLike | None = None, *,
              base_dir: str | os.PathLike | None = None, _forward: Mapping[str, Any] | None = None,
              **overrides: Any) -> Task:
    """Build a task from a spec file path, a registered name, a spec mapping, or return a Task.

    ``data_dir`` (else ``$LOGIT_SWARM_DATA``) is where named paper tasks find their files.
    ``overrides`` replace spec entries, e.g. ``limit=5``, ``scoring="loglik_per_byte"``,
    ``max_new_tokens=4``, ``scorer=my_fn``. A path-like string that is not a file raises
    ``FileNotFoundError``; an unknown name raises ``UnknownNameError`` ("did you mean ...").
    """
    if isinstance(spec_or_name, Task):
        if overrides:
            raise ValueError("overrides apply when building a task, not to an existing Task")
        return spec_or_name
    base = Path(base_dir) if base_dir is not None else None
    if isinstance(spec_or_name, Mapping):
        spec = dict(spec_or_name)
    elif isinstance(spec_or_name, (str, os.PathLike)):
        ref = str(spec_or_name)
        path = _find_spec_file(ref, base)
        if path is not None:
            spec, base = read_spec_file(path), path.resolve().parent
        elif ref in TASKS:
            entry = TASKS.get(ref)
            resolved = resolve_data_dir(data_dir) if entry.needs_data else None
            spec, base = entry.make_spec(resolved, overrides)
            spec.setdefault("name", entry.name)
        elif ref.lower().endswith(SPEC_SUFFIXES) or os.sep in ref or "/" in ref:
            raise FileNotFoundError(f"task spec file {ref!r} does not exist")
        else:
            raise UnknownNameError(TASKS.unknown_message(ref) +
                                   ". Or pass a spec file path (.yaml/.json)")
    else:
        raise TypeError(f"load_task takes a spec path, a task name, a mapping or a Task, "
                        f"not {type(spec_or_name).__name__}")
    if "data_dir" in spec and data_dir is None:
        data_dir = spec["data_dir"] if base is None else str(base / str(spec["data_dir"]))
    if _forward:
        cls = KINDS.get(spec.get("kind", "")) if "kind" in spec else None
        spec.update({k: v for k, v in _forward.items() if cls is not None and k in cls.OPTIONS})
    spec.update(overrides)
    return build_task(spec, base_dir=base, data_dir=data_dir)


def list_tasks(data_dir: str | os.PathLike | None = None, available: bool = False) -> list[str]:
    """Registered task names; with ``available=True`` only those whose data (in ``data_dir`` or
    ``$LOGIT_SWARM_DATA``) and requirements are present now."""
    if not available:
        return TASKS.names()
    try:
        root = resolve_data_dir(data_dir)
    except FileNotFoundError:
        root = None
    return [n for n in TASKS.names() if TASKS.get(n).available(root)]
