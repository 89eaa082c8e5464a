"""The code corpus: the running Python's own standard-library source.

It exists on every machine that can run the project, so the code expert needs no download.
Files are listed in a fixed order (sorted relative POSIX paths, machine-specific and test files
excluded) and cut into chunks of whole lines; every tenth file is held out for evaluation. The
corpus differs between Python versions, so its digest is part of the zoo's recipe hash.
"""

from __future__ import annotations

import functools
import hashlib
import os
import random
import sysconfig
from pathlib import Path

# Directories that are tests, GUI demos, vendored or machine-specific, skipped at any depth.
_EXCLUDED_DIRS = {
    "test", "tests", "idlelib", "tkinter", "turtledemo", "lib2to3", "site-packages",
    "dist-packages", "__pycache__", "ensurepip", "pydoc_data", "encodings", "venv",
}
# Machine-specific (build paths, generated tables) or huge generated files.
_EXCLUDED_PREFIXES = ("_sysconfigdata", "_pydecimal", "__phello__", "__hello__", "sre_")
_MAX_FILE_BYTES = 200_000
HELDOUT_EVERY = 10  # file i is held out when i % HELDOUT_EVERY == HELDOUT_EVERY - 1
CHUNK_CHARS = 1000  # chunks fit a 256-token window for every zoo tokenizer
_CHUNK_SEED = 7


def stdlib_root() -> Path:
    """The standard-library directory of the running interpreter."""
    return Path(sysconfig.get_paths()["stdlib"])


@functools.lru_cache(maxsize=4)
def stdlib_files(root: str | None = None) -> tuple[str, ...]:
    """Relative POSIX paths of the corpus files, sorted (the corpus order)."""
    base = Path(root) if root else stdlib_root()
    if not base.is_dir():
        raise FileNotFoundError(f"standard-library source not found at {base}; the code corpus "
                                "needs a Python installed with its .py sources")
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(base):
        # Prune in place so os.walk never descends into site-packages (slow and machine-specific).
        dirnames[:] = sorted(d for d in dirnames if d not in _EXCLUDED_DIRS)
        for fn in filenames:
            if not fn.endswith(".py") or fn.startswith(_EXCLUDED_PREFIXES) or fn.startswith("test_"):
                continue
            p = Path(dirpath, fn)
            if p.stat().st_size > _MAX_FILE_BYTES:
                continue
            out.append(p.relative_to(base).as_posix())
    if not out:
        raise FileNotFoundError(f"no .py files found under {base}; the code corpus needs the "
                                "standard-library sources")
    return tuple(sorted(out))


def _read(root: Path, rel: str) -> str:
    # Normalise newlines and drop trailing spaces: identical text on every OS.
    text = (root / rel).read_bytes().decode("utf-8", errors="replace")
    return "\n".join(line.rstrip() for line in text.replace("\r\n", "\n").splitlines())


def chunk_source(text: str, max_chars: int = CHUNK_CHARS) -> list[str]:
    """Cut source into chunks of whole lines, each at most ``max_chars`` (long lines cut)."""
    chunks: list[str] = []
    cur: list[str] = []
    size = 0
    for line in text.split("\n"):
        line = line[:max_chars]
        if cur and size + len(line) + 1 > max_chars:
            chunks.append("\n".join(cur))
            cur, size = [], 0
        if not cur and not line.strip():
            continue  # chunks never start with blank lines
        cur.append(line)
        size += len(line) + 1
    if cur:
        chunks.append("\n".join(cur))
    return [c.strip("\n") for c in chunks if c.strip()]


@functools.lru_cache(maxsize=4)
def _split_chunks(root: str | None = None) -> tuple[tuple[tuple[str, ...], ...], tuple[tuple[str, ...], ...]]:
    """(train files, held-out files), each file as its tuple of chunks."""
    base = Path(root) if root else stdlib_root()
    train: list[tuple[str, ...]] = []
    held: list[tuple[str, ...]] = []
    for i, rel in enumerate(stdlib_files(root)):
        chunks = tuple(chunk_source(_read(base, rel)))
        if chunks:
            (held if i % HELDOUT_EVERY == HELDOUT_EVERY - 1 else train).append(chunks)
    return tuple(train), tuple(held)


def file_chunks(split: str, root: str | None = None) -> tuple[tuple[str, ...], ...]:
    """The chunks of every ``"train"`` or ``"heldout"`` file, file by file in corpus order."""
    if split not in ("train", "heldout"):
        raise ValueError(f"unknown code split {split!r}; use 'train' or 'heldout'")
    return _split_chunks(root)[0 if split == "train" else 1]


def code_chunks(split: str, max_chars_total: int | None = None, root: str | None = None) -> list[str]:
    """Code chunks of the ``"train"`` or ``"heldout"`` files.

    With ``max_chars_total``, chunks are taken file by file in a fixed shuffled order (so a
    budget samples the whole library rather than its alphabetical start) until the budget is
    spent. Without it, every chunk is returned in corpus order.
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"unknown code split {split!r}; use 'train' or 'heldout'")
    per_file = _split_chunks(root)[0 if split == "train" else 1]
    if max_chars_total is None:
        return [c for chunks in per_file for c in chunks]
    order = list(range(len(per_file)))
    random.Random(_CHUNK_SEED).shuffle(order)
    out: list[str] = []
    total = 0
    for i in order:
        for c in per_file[i]:
            if total >= max_chars_total:
                return out
            out.append(c)
            total += len(c)
    return out


@functools.lru_cache(maxsize=4)
def corpus_digest(root: str | None = None) -> str:
    """SHA-256 of the corpus (file names and contents): part of the zoo's recipe hash."""
    base = Path(root) if root else stdlib_root()
    h = hashlib.sha256()
    for rel in stdlib_files(root):
        h.update(rel.encode() + b"\x00")
        h.update((base / rel).read_bytes())
        h.update(b"\x01")
    return h.hexdigest()
