"""The zoo's on-disk cache: where it lives, how completion is marked, crash-safe writes.

Layout of a zoo directory::

    <zoo>/zoo.json              completion marker, written last (recipe hash, experts, timings)
    <zoo>/<expert>/             one standard HF directory per expert (see ``build``)
    <zoo>/_tokenizers/<name>/   each trained tokenizer once (experts copy its files)
    <zoo>/.lock                 serialises concurrent builds of this zoo

Crash safety: every expert and tokenizer is written to a temporary directory next to its target
(``.<name>.tmp-<pid>``) and moved into place with ``os.replace``; ``zoo.json`` is removed before
anything is rebuilt and written atomically only after every expert is in place, so a partly
built zoo is never taken for a complete one. Leftover temporary directories are removed by the
next build.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

ENV_ZOO = "LOGIT_SWARM_ZOO"
MARKER = "zoo.json"
TOKENIZER_DIR = "_tokenizers"


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/logit_swarm/zoo`` (default ``~/.cache/logit_swarm/zoo``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "logit_swarm" / "zoo"


def read_marker(out: str | os.PathLike) -> dict | None:
    """The zoo's completion marker (``zoo.json``), or None if absent or unreadable."""
    try:
        return json.loads((Path(out) / MARKER).read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None


def read_card(expert_dir: str | os.PathLike) -> dict | None:
    """An expert's ``card.json``, or None if absent or unreadable."""
    try:
        return json.loads((Path(expert_dir) / "card.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON to ``path`` via a temporary file and ``os.replace`` (never half-written)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def temp_dir_for(target: Path) -> Path:
    """A fresh temporary directory name next to ``target`` (same file system, so renames are atomic)."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def replace_dir(tmp: Path, target: Path) -> None:
    """Move the finished directory ``tmp`` to ``target``, replacing an older zoo directory.

    ``os.replace`` cannot overwrite a non-empty directory, so an old target is first moved
    aside: at every instant ``target`` is the complete old directory, absent, or the complete
    new one. A directory that is not ours (no ``card.json``/``recipe_hash``) is never replaced.
    """
    if target.exists():
        ours = read_card(target) is not None or (target / "recipe_hash").is_file()
        if not ours and any(target.iterdir()):
            raise ValueError(f"{target} exists and is not a zoo expert; choose another --out")
        trash = target.with_name(f".{target.name}.old-{os.getpid()}")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(target, trash)
        os.replace(tmp, target)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)


@contextlib.contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on the zoo ``out`` (POSIX ``flock``; a no-op elsewhere)."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(out / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def clean_leftovers(out: Path) -> None:
    """Remove temporary files and directories of crashed builds (``.<name>.tmp-*``/``.old-*``)."""
    dirs = [out] + ([out / TOKENIZER_DIR] if (out / TOKENIZER_DIR).is_dir() else [])
    for parent in dirs:
        for p in parent.iterdir():
            if p.name.startswith(".") and (".tmp-" in p.name or ".old-" in p.name):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)


def remove_stale_experts(out: Path, keep: set[str]) -> None:
    """Remove expert directories of an older recipe that are not in ``keep``.

    Only directories carrying a zoo card are touched; nothing else in ``out`` is.
    """
    for d in out.iterdir():
        if d.is_dir() and not d.name.startswith((".", "_")) and d.name not in keep:
            card = read_card(d)
            if card and "zoo_version" in card:
                shutil.rmtree(d)
