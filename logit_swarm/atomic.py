"""Atomic file writes: the one home of the rule "a reader sees the old file or the new one, never half".

Recipes, search checkpoints, results and tables all go through :func:`atomic_write_text`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write_text"]


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically and durably; returns the path.

    Creates the parent directory, writes a temporary file next to ``path``, fsyncs it,
    ``os.replace``s it over ``path`` and fsyncs the directory so the rename itself survives a
    power cut. On any error (also KeyboardInterrupt) the temporary file is removed and the old
    ``path`` (if any) is left untouched.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(str(p.parent))
    return p


def _fsync_dir(directory: str) -> None:
    """fsync a directory entry (no-op where the platform does not allow opening directories)."""
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
