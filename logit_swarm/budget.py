"""Generation budgets in the unit the user means: the one rule for counting ``max_new_tokens``.

An ensemble decodes in its own *units*: tokens when the experts share a tokenizer, bytes
otherwise. A budget is stated in one of:

* ``"tokens"`` (the default): tokens of a stated **reference tokenizer** — the expert at index
  ``budget_tokenizer`` (default 0, the first expert). At token level that is the ensemble's own
  unit. At byte level the generated text is counted by encoding it alone with the reference
  tokenizer (no special tokens; an incomplete trailing UTF-8 character is not counted) and the
  output is the longest one whose count does not exceed the budget: the byte that would make it
  exceed it is not emitted and the row finishes with reason "length".
* ``"bytes"``: UTF-8 bytes of the generated text. At byte level that is the unit; at token level
  the token that would take the text beyond the budget is not emitted.
* ``"units"``: the ensemble's own units, whatever they are (the behaviour before budgets had a
  unit; the zoo's tasks state their short answer lengths this way).

:func:`plan` turns (experts, ensemble unit, budget, budget unit, reference) into the number of
decode steps to allow and, where units and budget differ, a :class:`BudgetRule` that the decoder
asks before emitting each unit (``decode.generate_rows(budget=...)``). ``Ensemble.generate``, the
task layer and the server use this module; nothing else counts budgets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: The units a budget can be stated in.
BUDGET_UNITS = ("tokens", "bytes", "units")


def check_budget_unit(unit: str) -> str:
    """``unit`` if it is one of :data:`BUDGET_UNITS`, else a ``ValueError`` naming them."""
    if unit not in BUDGET_UNITS:
        raise ValueError(f"budget_unit must be one of {', '.join(BUDGET_UNITS)}, got {unit!r}")
    return unit


def reference_expert(experts: Sequence[Any], budget_tokenizer: int | str = 0) -> Any:
    """The expert whose tokenizer counts a token budget: by index, or by name."""
    if isinstance(budget_tokenizer, str) and not budget_tokenizer.lstrip("-").isdigit():
        names = [getattr(e, "name", None) for e in experts]
        if budget_tokenizer not in names:
            raise ValueError(f"budget_tokenizer {budget_tokenizer!r} names no expert; experts: {names}")
        return experts[names.index(budget_tokenizer)]
    i = int(budget_tokenizer)
    if not -len(experts) <= i < len(experts):
        raise ValueError(f"budget_tokenizer {i} is out of range for {len(experts)} experts "
                         "(an expert index, 0 = the first)")
    return experts[i]


def count_tokens(tokenizer: Any, text: str) -> int:
    """Tokens of ``text`` encoded alone by ``tokenizer``, without special tokens."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


@dataclass(frozen=True)
class BudgetRule:
    """Asked by the decoder before a row emits a unit: would it go beyond the row's budget?

    ``limits``: the budget of each row; ``unit``: the ensemble's unit ("token"/"byte");
    ``budget_unit``: "tokens" or "bytes"; ``tokenizer``: the reference tokenizer (token budgets
    at byte level) or the shared tokenizer (byte budgets at token level).
    """

    limits: tuple[int, ...]
    unit: str
    budget_unit: str
    tokenizer: Any

    def over(self, row: int, units: Sequence[int], new: int) -> bool:
        """Whether row ``row``, having emitted ``units``, exceeds its budget by emitting ``new``."""
        limit = self.limits[row]
        if self.unit == "byte":
            n_bytes = len(units) + 1
            # Every token of the count carries a byte, plus at most one for a prepended
            # word marker: no count can exceed the budget before the text is that long.
            if n_bytes + 1 <= limit:
                return False
            text = bytes([*units, new]).decode("utf-8", errors="ignore")
            return count_tokens(self.tokenizer, text) > limit
        # Token units with a byte budget.
        text = self.tokenizer.decode([*units, new], skip_special_tokens=True)
        return len(text.encode("utf-8")) > limit


def _per_row(max_new_tokens: int | Sequence[int], n_rows: int) -> list[int]:
    if isinstance(max_new_tokens, (list, tuple)):
        if len(max_new_tokens) != n_rows:
            raise ValueError(f"got {len(max_new_tokens)} budgets for {n_rows} rows")
        return [int(m) for m in max_new_tokens]
    return [int(max_new_tokens)] * n_rows


def plan(experts: Sequence[Any], unit: str, max_new_tokens: int | Sequence[int], n_rows: int,
         budget_unit: str = "tokens", budget_tokenizer: int | str = 0) -> tuple[list[int], BudgetRule | None]:
    """Per-row decode-step caps and the rule (or None) that enforces a budget in another unit.

    The caps never bind before the budget does: a budget of N reference tokens at byte level
    allows N × (the reference's longest token in bytes) steps; N bytes at token level allows N
    steps (every ordinary token carries at least one byte).
    """
    check_budget_unit(budget_unit)
    limits = _per_row(max_new_tokens, n_rows)
    if budget_unit == "units" or (unit == "token" and budget_unit == "tokens") or \
            (unit == "byte" and budget_unit == "bytes"):
        return limits, None
    if unit == "byte":
        ref = reference_expert(experts, budget_tokenizer)
        longest = max(1, int(ref.vocab_bytes.max_len))
        caps = [m * longest + 1 if m > 0 else 0 for m in limits]
        return caps, BudgetRule(tuple(limits), unit, budget_unit, ref.tokenizer)
    return limits, BudgetRule(tuple(limits), unit, budget_unit, experts[0].tokenizer)
