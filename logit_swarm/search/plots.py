"""PNG plots of a swarm search, drawn from its ``history.jsonl`` (matplotlib, optional).

Two figures:

``utility.png``  per iteration: the all-time best utility (the global best g), the mean utility of
                 the particles evaluated in that iteration, and the all-time worst.
``weights.png``  one panel per expert: every particle's weight on that expert over the iterations
                 (mode "probs": the mixing weight max(w,0)/sum that the ensemble actually uses;
                 mode "logits": the raw weight), with the global best's weight in black.

matplotlib is an optional extra (``pip install logit_swarm[plots]``). Without it
:func:`plot_history` raises :class:`PlotsUnavailable`, whose message says how to install it; the
command line turns that into a skipped step, never a failed search.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._common import array_from_json, float_from_json

__all__ = ["PlotsUnavailable", "plot_history", "read_history", "matplotlib_available", "save_figure"]

UTILITY_PNG = "utility.png"
WEIGHTS_PNG = "weights.png"


class PlotsUnavailable(RuntimeError):
    """matplotlib is not installed."""


def matplotlib_available() -> bool:
    """Whether matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def read_history(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a ``history.jsonl`` (or of the ``history.jsonl`` inside a run directory)."""
    p = Path(path)
    if p.is_dir():
        p = p / "history.jsonl"
    if not p.is_file():
        raise FileNotFoundError(f"no search history at {str(p)!r}; run a search with an output directory first")
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_history(history: str | os.PathLike | Sequence[Mapping[str, Any]], out_dir: str | os.PathLike,
                 expert_names: Sequence[str] | None = None, mode: str = "probs",
                 title: str | None = None) -> list[Path]:
    """Write ``utility.png`` and ``weights.png`` for a search into ``out_dir``.

    Args:
        history: records (``SearchResult.history``) or a path to ``history.jsonl`` / a run dir.
        out_dir: where the PNGs go (created if needed).
        expert_names: panel titles (default ``expert 0`` ...).
        mode: mixing mode of the search, to plot the weights the mixture actually uses.
        title: figure title prefix (e.g. the task name).

    Returns:
        The paths written.

    Raises:
        PlotsUnavailable: matplotlib is missing. ValueError: an empty history.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; never needs a display
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise PlotsUnavailable("plots need matplotlib: pip install 'logit_swarm[plots]' "
                               "(or pip install matplotlib)") from None
    records = read_history(history) if isinstance(history, (str, os.PathLike)) else list(history)
    if not records:
        raise ValueError("the search history is empty; nothing to plot")
    it = np.array([r.get("step", k) for k, r in enumerate(records)])
    best = np.array([float_from_json(r.get("best_utility")) for r in records])
    mean = np.array([np.nan if r.get("mean_utility") is None else r["mean_utility"] for r in records])
    worst = np.array([float_from_json(r["worst_utility"]) if "worst_utility" in r else np.nan for r in records])
    rows_w = [array_from_json(r["weights"], 2) for r in records]  # the mixtures evaluated, per step
    g = np.stack([array_from_json(r["best_weights"], 1) for r in records])  # [steps, N]
    n_exp = g.shape[1]
    names = list(expert_names) if expert_names is not None else [f"expert {i}" for i in range(n_exp)]
    if len(names) != n_exp:
        raise ValueError(f"{len(names)} expert names for {n_exp} experts in the history")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prefix = f"{title}: " if title else ""
    written = []

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.plot(it, best, "-o", ms=3, color="tab:green", label="best so far")
    ax.plot(it, mean, "-", color="tab:blue", label="mean of evaluated particles")
    finite_worst = np.isfinite(worst)
    if finite_worst.any():
        ax.plot(it[finite_worst], worst[finite_worst], ":", color="tab:red", label="global worst (all time)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step (swarm: iteration; 0 = initial swarm)")
    ax.set_ylabel("dev utility")
    ax.set_title(f"{prefix}utility per iteration")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = out / UTILITY_PNG
    _save(fig, path)
    plt.close(fig)
    written.append(path)

    gw = g
    cols = min(3, n_exp)
    rows = math.ceil(n_exp / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 2.6 * rows), dpi=110, squeeze=False,
                             sharex=True)
    for i in range(n_exp):
        ax = axes[i // cols][i % cols]
        xs = np.concatenate([np.full(len(w), t) for t, w in zip(it, rows_w)])
        ys = np.concatenate([w[:, i] for w in rows_w])
        ax.plot(xs, ys, ".", ms=2, alpha=0.45)
        ax.plot(it, gw[:, i], color="black", lw=1.8, label="best so far")
        ax.set_title(names[i], fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if mode == "probs":
            ax.set_ylim(-0.03, 1.03)
    for j in range(n_exp, rows * cols):
        axes[j // cols][j % cols].axis("off")
    axes[0][0].legend(loc="upper right", fontsize=7)
    label = "mixing weight" if mode == "probs" else "log-linear weight"
    fig.supylabel(label)
    fig.supxlabel("step")
    fig.suptitle(f"{prefix}{label} of every evaluated row, per expert")
    fig.tight_layout()
    path = out / WEIGHTS_PNG
    _save(fig, path)
    plt.close(fig)
    written.append(path)
    return written


def save_figure(fig: Any, path: str | os.PathLike) -> Path:
    """Save a matplotlib figure as PNG atomically (the rule every plot of the project follows)."""
    _save(fig, Path(path))
    return Path(path)


def _save(fig: Any, path: Path) -> None:
    """Save atomically: a temporary file in the same directory, then a rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
