"""The interface every search method implements, and the registry that lists them.

Two kinds of method:

``search`` methods
    propose mixing weights and are told their utilities: an ask/tell :class:`Searcher`, built
    by the method's ``make(ctx)`` from a :class:`SearchContext` (number of experts, mixing space,
    seed, budget, options). Every one of them -- the swarm, random search, DE, Nelder-Mead,
    CMA-ES, NGOpt, but also best single, uniform, greedy and EM, which just ask fewer rows -- runs
    through the one generic driver (:func:`logit_swarm.search.driver.run_method`), so they all
    get the same budget accounting, history, checkpoint and exact resume. ``ask()`` returns
    coordinates; the driver maps them to mixtures with the context's
    :class:`~logit_swarm.search.space.MixingSpace` and evaluates the mixtures.
``output`` methods
    need more than one weight vector: per-prompt weights (PackLLM) or a vote of the experts'
    answers (prediction merge). They implement :class:`OutputMethod` and report per-question
    results of a split directly.

Resume works by *replay*: a searcher's asks depend only on its seed, options and the utilities
it was told, so the driver rebuilds it and tells it the utilities saved in ``history.jsonl``
(checking that every replayed ask equals the saved one) instead of pickling optimiser objects.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from logit_swarm.tasks import backend
from logit_swarm.tasks.registry import Registry

from .._common import check_utilities
from ..space import MixingSpace

__all__ = ["SearchContext", "Searcher", "OutputMethod", "OutputResult", "MethodInfo", "MethodUnavailable",
           "GeneratorSearcher", "METHODS", "register_method", "method_names", "Steps"]

#: What a step generator yields (coordinates to evaluate) and is sent (their utilities).
Steps = Generator[np.ndarray, np.ndarray, None]


class MethodUnavailable(ValueError):
    """This method does not apply here (missing optional package, wrong mode or task kind)."""


@dataclass(frozen=True)
class SearchContext:
    """Everything a method needs to build its searcher.

    Attributes:
        n_experts: N.
        space: the mixing space (simplex for "probs", box for "logits").
        seed: the method's seed.
        budget: utility evaluations allowed (None: the method's own fixed number).
        batch: rows per ask for population methods (one swarm iteration).
        options: method-specific settings (e.g. the swarm's config).
        task, experts: for methods that read the task's targets (EM); None otherwise.
    """

    n_experts: int
    space: MixingSpace
    seed: int = 0
    budget: int | None = None
    batch: int = 20
    options: Mapping[str, Any] = field(default_factory=dict)
    task: Any = None
    experts: Any = None


@runtime_checkable
class Searcher(Protocol):
    """An ask/tell optimiser over coordinate vectors (rows of an (k, N) array)."""

    @property
    def done(self) -> bool:
        """True when the method has nothing more to ask."""
        ...

    def ask(self) -> np.ndarray:
        """The next coordinates to evaluate, (k, N) with k >= 1; the same rows until ``tell``."""
        ...

    def tell(self, coords: np.ndarray, utilities: np.ndarray) -> None:
        """The utilities (higher is better, NaN = failed) of the rows the last ``ask`` returned."""
        ...

    def info(self) -> dict[str, Any]:
        """JSON-able extras for the history record of the step just told (may be empty)."""
        ...


@dataclass
class OutputResult:
    """A per-question method's result on one split.

    Attributes:
        utility: the task's utility on the split.
        per_question: [n] score of each question.
        details: JSON-able extras; ``details["tuned"]`` is what the dev run chose and the test
            run reuses (e.g. PackLLM's temperature).
        summary: a short text for the weights column of a table.
    """

    utility: float
    per_question: np.ndarray | None
    details: dict[str, Any] = field(default_factory=dict)
    summary: str = "per question"


@runtime_checkable
class OutputMethod(Protocol):
    """A method that answers each question itself (not one weight vector for all)."""

    def __call__(self, task: Any, experts: Any, split: str, mode: str, allow_test: bool,
                 tuned: Mapping[str, Any] | None) -> OutputResult:
        """Run on ``split``; ``tuned`` is None on dev (choose there) and the dev choice on test."""
        ...


@dataclass(frozen=True)
class MethodInfo:
    """One registered method.

    Attributes:
        name: registry name (``--methods`` on the command line).
        label: what a table calls it.
        family: the file under ``search/methods/`` it lives in.
        kind: "search" (ask/tell, through the driver) or "output" (per question).
        budgeted: takes the shared evaluation budget (the swarm's count); else a fixed number.
        make: ``SearchContext -> Searcher`` for search methods.
        run: the :class:`OutputMethod` for output methods.
        modes: mixing modes it applies to.
        mapping: one sentence: which baseline of the paper this is and how it maps to mixing.
        default: run by ``compare`` unless a subset is asked for.
    """

    name: str
    label: str
    family: str
    kind: str
    budgeted: bool = False
    make: Callable[[SearchContext], Searcher] | None = None
    run: OutputMethod | None = None
    modes: tuple[str, ...] = ("probs", "logits")
    mapping: str = ""
    default: bool = True


#: Every method by name (``METHODS.names()`` is alphabetical; :func:`method_names` is table order).
METHODS: Registry[MethodInfo] = Registry("search method")
_ORDER: list[str] = []


#: Table order of the built-in methods (imports are sorted by name, so registration order is not it).
TABLE_ORDER = ("swarm", "swarm_restarts", "best_single", "uniform", "prediction_merge", "greedy", "packllm", "em",
               "differential_evolution", "nelder_mead", "random", "cma_es", "ngopt", "slerp")


def method_names() -> list[str]:
    """Registered method names in table order (:data:`TABLE_ORDER`, then any others as registered)."""
    return [n for n in TABLE_ORDER if n in _ORDER] + [n for n in _ORDER if n not in TABLE_ORDER]


def register_method(info: MethodInfo) -> MethodInfo:
    """Add ``info`` to :data:`METHODS` (done at import time by each family's module)."""
    if info.kind not in ("search", "output"):
        raise ValueError(f"method kind must be 'search' or 'output', got {info.kind!r}")
    if (info.kind == "search") != (info.make is not None) or (info.kind == "output") != (info.run is not None):
        raise ValueError(f"method {info.name!r}: a search method needs make=, an output method run=")
    METHODS.add(info.name, info)
    _ORDER.append(info.name)
    return info


class GeneratorSearcher:
    """A :class:`Searcher` written as a generator: ``u = yield coords`` per step.

    The generator yields (k, N) coordinates and receives their utilities; returning ends the
    search. Most methods are a short loop in this style; asks are deterministic given the seed
    and the utilities told, which is what replay-based resume needs.
    """

    def __init__(self, steps: Steps, n_experts: int) -> None:
        self._steps, self._n = steps, n_experts
        self._pending: np.ndarray | None = None
        self._done = False
        self._info: dict[str, Any] = {}
        self._advance(None)

    def _advance(self, utilities: np.ndarray | None) -> None:
        try:
            out = next(self._steps) if utilities is None else self._steps.send(utilities)
        except StopIteration:
            self._pending, self._done = None, True
            return
        x = np.atleast_2d(np.asarray(out, dtype=np.float64))
        if x.ndim != 2 or x.shape[1] != self._n or len(x) == 0:
            raise ValueError(f"a method asked for coordinates of shape {x.shape}; expected (k >= 1, {self._n})")
        self._pending = x

    @property
    def done(self) -> bool:
        """True once the generator has returned."""
        return self._done

    def ask(self) -> np.ndarray:
        """The pending coordinates (a copy)."""
        if self._pending is None:
            raise RuntimeError("the method is done; read the driver's result")
        return self._pending.copy()

    def tell(self, coords: np.ndarray, utilities: np.ndarray) -> None:
        """Send the utilities of the pending rows into the generator."""
        if self._pending is None:
            raise RuntimeError("tell() after the method finished")
        if not np.array_equal(np.asarray(coords, dtype=np.float64), self._pending):
            raise ValueError("tell() got coordinates that differ from the last ask()")
        self._advance(check_utilities(utilities, len(self._pending)))

    def info(self) -> dict[str, Any]:
        """No extras by default."""
        return dict(self._info)


def option(ctx: SearchContext, name: str, default: Any) -> Any:
    """``ctx.options[name]`` or ``default``."""
    return ctx.options.get(name, default) if ctx.options else default


def losses(utilities: np.ndarray) -> np.ndarray:
    """Utilities (maximise) -> finite losses (minimise): failures and -inf get 1e30."""
    u = np.asarray(utilities, dtype=np.float64)
    bad = ~np.isfinite(u) | np.isnan(u)
    return np.where(bad, 1e30, -np.where(bad, 0.0, u))


def require_budget(ctx: SearchContext, name: str, minimum: int = 1) -> int:
    """The budget of a budgeted method, with an error that says what to pass."""
    b = ctx.budget
    if b is None or isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < minimum:
        raise ValueError(f"{name} needs an evaluation budget >= {minimum} (budget=...), got {b!r}")
    return int(b)


class GlobalNumpyRandom:
    """A private copy of numpy's *global* random state, for libraries that draw from it
    (``cma``, parts of ``nevergrad``): entering swaps it in, leaving saves it and puts the
    caller's global state back, so the method's draws neither depend on nor disturb the rest of
    the program (which would break replay-based resume)."""

    def __init__(self, seed: int) -> None:
        self._state = np.random.RandomState(seed).get_state()
        self._outside: Any = None

    def __enter__(self) -> GlobalNumpyRandom:
        self._outside = np.random.get_state()
        np.random.set_state(self._state)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._state = np.random.get_state()
        np.random.set_state(self._outside)


def task_pool(experts: Any, W: np.ndarray, mode: str) -> Any:
    """The tasks' pool of experts and weights (for the output methods that decode or score with
    per-example weights through ``tasks.backend``)."""
    return backend.Pool(list(experts), backend.weight_matrix(W, len(experts), mode), mode)
