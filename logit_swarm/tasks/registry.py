"""A small name -> object registry whose errors suggest close names.

Every pluggable piece of the task layer (task kinds, answer matchers, multiple-choice scorings,
named tasks) lives in one of these. Names are case-insensitive and ``-`` / ``_`` are the same
character, so ``mmlu_pro``, ``MMLU-Pro`` and ``mmlu-pro`` all find one entry; the canonical
spelling is the one given to :meth:`Registry.add`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


def normalise_name(name: str) -> str:
    """The lookup key of ``name``: lower case, with ``_`` and spaces read as ``-``."""
    return str(name).strip().lower().replace("_", "-").replace(" ", "-")


class UnknownNameError(KeyError, ValueError):
    """An unknown registry name. A ``KeyError`` for dict-like callers and a ``ValueError`` for
    the command line; ``str()`` is the plain message (``KeyError`` would quote it)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Maps names to objects; unknown names raise :class:`UnknownNameError` ("did you mean ...").

    ``what`` names the kind of thing registered ("task", "matcher", ...) and appears in errors.
    """

    def __init__(self, what: str):
        self.what = what
        self._items: dict[str, tuple[str, T]] = {}

    def add(self, name: str, obj: T, *, aliases: tuple[str, ...] = (), replace: bool = False) -> T:
        """Register ``obj`` under ``name`` (and ``aliases``); refuses silent overwrites."""
        for key in (name, *aliases):
            k = normalise_name(key)
            if k in self._items and not replace and self._items[k][1] is not obj:
                raise ValueError(
                    f"{self.what} {key!r} is already registered; pass replace=True to override it"
                )
            self._items[k] = (name, obj)
        return obj

    def register(self, name: str, *, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""

        def deco(obj: T) -> T:
            return self.add(name, obj, aliases=aliases)

        return deco

    def get(self, name: str) -> T:
        """Look ``name`` up; a miss raises :class:`UnknownNameError` naming close matches."""
        k = normalise_name(name)
        if k in self._items:
            return self._items[k][1]
        raise UnknownNameError(self.unknown_message(name))

    def unknown_message(self, name: str) -> str:
        """The one-line error for an unknown ``name``: close matches first, then what exists."""
        close = difflib.get_close_matches(normalise_name(name), list(self._items), n=3, cutoff=0.6)
        close_names = sorted({self._items[c][0] for c in close})
        hint = f" Did you mean: {', '.join(close_names)}?" if close_names else ""
        known = ", ".join(self.names())
        return f"unknown {self.what} {name!r}.{hint} Known: {known}"

    def canonical(self, name: str) -> str:
        """The canonical spelling of a registered ``name`` (raises like :meth:`get`)."""
        self.get(name)
        return self._items[normalise_name(name)][0]

    def names(self) -> list[str]:
        """Canonical names, sorted, without aliases."""
        return sorted({canon for canon, _ in self._items.values()})

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and normalise_name(name) in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())
