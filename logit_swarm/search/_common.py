"""Small helpers shared by the search modules: utility validation, JSON encoding, RNG state, files.

Nothing here knows about swarms; it is the plumbing that keeps the optimisers themselves short.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from logit_swarm.atomic import atomic_write_text  # noqa: F401 - re-exported for the search modules

#: A utility: rows of a weight matrix in, one utility per row out (higher is better, NaN = failed).
Evaluate = Callable[[np.ndarray], np.ndarray]


# --------------------------------------------------------------------------------------------
# Utilities
# --------------------------------------------------------------------------------------------


def check_utilities(utilities: Any, n_rows: int) -> np.ndarray:
    """Validate what a utility function returned for ``n_rows`` weight vectors.

    Args:
        utilities: the raw return value of ``evaluate(W)``; anything ``np.asarray`` accepts.
        n_rows: the number of rows of ``W``.

    Returns:
        A fresh float64 array of shape ``(n_rows,)``. NaN and infinities are kept as they are;
        use :func:`rank_scores` to turn them into comparable scores.

    Raises:
        ValueError: if the values are not numbers or the shape is not ``(n_rows,)``.
    """
    try:
        u = np.array(utilities, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"evaluate() must return numbers, got {type(utilities).__name__}: {exc}") from None
    if u.shape != (n_rows,):
        raise ValueError(
            f"evaluate() returned shape {u.shape} for {n_rows} weight vectors; "
            f"it must return one utility per row, shape ({n_rows},)"
        )
    return u


def rank_scores(utilities: np.ndarray) -> np.ndarray:
    """Map utilities to scores that can be compared: a failure ranks as the worst, never the best.

    NaN (a failed particle) and +inf (which no real utility produces, so it is treated as a bug in
    the utility, not as a perfect score) become -inf; finite values and -inf are kept.

    Args:
        utilities: float array of any shape.

    Returns:
        A new float64 array of the same shape with no NaN and no +inf.
    """
    u = np.asarray(utilities, dtype=np.float64)
    return np.where(np.isnan(u) | (u == np.inf), -np.inf, u)


# --------------------------------------------------------------------------------------------
# JSON: floats that survive a round trip bit-exactly, including non-finite ones
# --------------------------------------------------------------------------------------------


def float_to_json(x: float) -> float | str | None:
    """Encode one float for strict JSON: NaN -> None, +-inf -> "inf"/"-inf", else the float.

    Python's ``json`` writes floats with ``repr``, which round-trips float64 exactly.
    """
    x = float(x)
    if math.isnan(x):
        return None
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def float_from_json(x: float | str | None) -> float:
    """Inverse of :func:`float_to_json`."""
    if x is None:
        return math.nan
    if isinstance(x, str):
        if x not in ("inf", "-inf"):
            raise ValueError(f"bad float in JSON: {x!r} (expected a number, null, 'inf' or '-inf')")
        return math.inf if x == "inf" else -math.inf
    return float(x)


def array_to_json(a: np.ndarray) -> list:
    """Encode a float array as nested lists using :func:`float_to_json` for every element."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 0:
        return float_to_json(a)  # type: ignore[return-value]
    return [array_to_json(row) for row in a] if a.ndim > 1 else [float_to_json(v) for v in a]


def array_from_json(obj: list, ndim: int, width: int | None = None) -> np.ndarray:
    """Decode what :func:`array_to_json` wrote back to a float64 array with ``ndim`` dimensions.

    Args:
        obj: nested lists.
        ndim: expected number of dimensions (1 or 2).
        width: for ``ndim == 2``, the number of columns (needed when there are zero rows).
    """
    if ndim == 1:
        return np.array([float_from_json(v) for v in obj], dtype=np.float64)
    if ndim == 2:
        rows = [[float_from_json(v) for v in row] for row in obj]
        out = np.array(rows, dtype=np.float64)
        if out.size == 0:
            out = out.reshape(len(rows), width or 0)
        return out
    raise ValueError(f"array_from_json supports ndim 1 or 2, got {ndim}")


def frozen_array(a: Any, dtype: Any = np.float64) -> np.ndarray:
    """Return a read-only copy of ``a``, so frozen state objects cannot be changed in place."""
    out = np.array(a, dtype=dtype, copy=True)
    out.flags.writeable = False
    return out


# --------------------------------------------------------------------------------------------
# Random number generators: explicit, and their state serialisable without pickle
# --------------------------------------------------------------------------------------------


def make_rng(seed: int | np.random.Generator | np.random.SeedSequence | None) -> np.random.Generator:
    """Build a ``numpy.random.Generator`` from a seed; a Generator is returned as is.

    ``None`` is refused on purpose: every search must be reproducible, so pick a seed.
    """
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None:
        raise ValueError("a seed is required (an int, a SeedSequence or a numpy Generator); "
                         "searches are reproducible by design")
    if isinstance(seed, (bool, float)) or not isinstance(seed, (int, np.integer, np.random.SeedSequence)):
        raise ValueError(f"seed must be an int, a SeedSequence or a numpy Generator, got {seed!r}")
    return np.random.default_rng(seed)


def _jsonable(obj: Any) -> Any:
    """Turn a bit-generator state (dicts, ints, numpy arrays) into plain JSON values."""
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _unjsonable(obj: Any) -> Any:
    """Inverse of :func:`_jsonable`."""
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            return np.array(obj["__ndarray__"], dtype=obj["dtype"])
        return {k: _unjsonable(v) for k, v in obj.items()}
    return obj


def rng_state(rng: np.random.Generator) -> dict:
    """The JSON-able state of a Generator's bit generator (a snapshot; later draws don't change it)."""
    return _jsonable(rng.bit_generator.state)


def rng_from_state(state: dict) -> np.random.Generator:
    """Rebuild a Generator positioned exactly at the snapshot :func:`rng_state` took."""
    name = state.get("bit_generator")
    cls = getattr(np.random, str(name), None)
    if cls is None or not isinstance(cls, type) or not issubclass(cls, np.random.BitGenerator):
        raise ValueError(f"unknown bit generator {name!r} in saved RNG state")
    bg = cls()
    bg.state = _unjsonable(state)
    return np.random.Generator(bg)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def dumps(obj: Any) -> str:
    """Strict JSON (no NaN/Infinity literals): callers must encode non-finite floats first."""
    return json.dumps(obj, allow_nan=False, sort_keys=False)
