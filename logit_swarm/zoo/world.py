"""The invented world behind the synthetic ``facts`` domain.

Every fact is about an invented country (``Zorblax``) and one of three relations: its capital
(an invented city, unique per country), the language spoken there (from a small invented pool)
and its national animal (from a pool of real animals). The world is fixed: it is generated from
``WORLD_SEED`` and does not depend on the zoo's build seed, so task files written today stay
valid for every zoo built later with any seed.

The countries are split into two disjoint halves, ``a`` and ``b``. The expert ``facts_a`` is
trained only on half A's facts and ``facts_b`` only on half B's, so on questions about both
halves a mixture of the two can beat each of them alone.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

# Changing any constant here changes every fact; bump zoo.spec.ZOO_VERSION with it.
WORLD_SEED = 20241015
N_COUNTRIES = 96  # 48 per half
RELATIONS = ("capital", "language", "animal")

_ONSETS = ["b", "br", "d", "dr", "f", "g", "gl", "k", "kr", "l", "m", "n", "p", "pl", "r", "s",
           "sk", "t", "tr", "v", "z", "zh", "qu", "th", "w"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ou", "ea", "y"]
_CODAS = ["", "", "", "n", "r", "x", "l", "th", "sk", "m", "nd", "st"]

ANIMALS = ["otter", "heron", "lynx", "badger", "falcon", "tortoise", "salmon", "beaver",
           "camel", "panda", "walrus", "gecko", "raven", "moose", "dolphin", "hedgehog"]
N_LANGUAGES = 12


@dataclass(frozen=True)
class Fact:
    """One fact: ``relation(country) = value``; ``half`` is "a" or "b"; ``fid`` is stable."""

    fid: int
    country: str
    relation: str
    value: str
    half: str


@dataclass(frozen=True)
class World:
    """The fixed set of invented countries and their facts (see the module docstring)."""

    countries: tuple[str, ...]
    capitals: tuple[str, ...]
    languages: tuple[str, ...]
    facts: tuple[Fact, ...]

    def half(self, which: str) -> list[Fact]:
        """Facts of half ``"a"`` or ``"b"``; ``"ab"`` (or ``"both"``) gives all facts."""
        if which in ("ab", "both"):
            return list(self.facts)
        if which not in ("a", "b"):
            raise ValueError(f"unknown facts half {which!r}; use 'a', 'b' or 'ab'")
        return [f for f in self.facts if f.half == which]

    def values(self, relation: str) -> list[str]:
        """Every possible answer of ``relation`` (the pool distractors are drawn from)."""
        if relation == "capital":
            return list(self.capitals)
        if relation == "language":
            return list(self.languages)
        if relation == "animal":
            return list(ANIMALS)
        raise ValueError(f"unknown relation {relation!r}; use one of {RELATIONS}")


def _name(rng: random.Random, syllables: int) -> str:
    parts = []
    for i in range(syllables):
        # Codas only at the end keep names pronounceable ("Zorblax", not "Zorxblax").
        coda = rng.choice(_CODAS) if i == syllables - 1 else ""
        parts.append(rng.choice(_ONSETS) + rng.choice(_VOWELS) + coda)
    return "".join(parts).capitalize()


def _unique_names(rng: random.Random, n: int, taken: set[str], syllables: tuple[int, ...]) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        name = _name(rng, rng.choice(syllables))
        # Short names collide with English words and each other; keep them distinctive.
        if name in taken or len(name) < 5:
            continue
        taken.add(name)
        out.append(name)
    return out


@functools.lru_cache(maxsize=1)
def world() -> World:
    """The one fixed world (cached; generated from ``WORLD_SEED`` only)."""
    rng = random.Random(WORLD_SEED)
    taken: set[str] = set()
    countries = _unique_names(rng, N_COUNTRIES, taken, (2, 3))
    capitals = _unique_names(rng, N_COUNTRIES, taken, (2, 2, 3))
    languages = [n + "i" if not n.endswith(("i", "y")) else n + "sh"
                 for n in _unique_names(rng, N_LANGUAGES, taken, (2,))]
    # Halves are a seeded shuffle of the countries, not "first 48", so that neither half
    # is special in generation order.
    order = list(range(N_COUNTRIES))
    rng.shuffle(order)
    half_of = {c: ("a" if rank < N_COUNTRIES // 2 else "b") for rank, c in enumerate(order)}
    facts: list[Fact] = []
    for c in range(N_COUNTRIES):
        values = {
            "capital": capitals[c],
            "language": rng.choice(languages),
            "animal": rng.choice(ANIMALS),
        }
        for rel in RELATIONS:
            facts.append(Fact(len(facts), countries[c], rel, values[rel], half_of[c]))
    return World(tuple(countries), tuple(capitals), tuple(languages), tuple(facts))
