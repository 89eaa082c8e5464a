"""Answer parsing: from a generated text to a choice, a number, a yes/no, a rating.

The paper-faithful parsers reproduce ``evaluate.py`` of BunsenFeng/model_swarm (commit 63e6404)
including its quirks, because utilities must be comparable with the paper's numbers; the
cleaner alternatives sit beside them under their own names. Exact-match *matchers* (output,
gold, split) -> bool are registered in :data:`MATCHERS` so a task spec can name one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

from .registry import Registry

# A number as people write it: optional sign, digits (commas only in proper thousands groups, so
# "1,2,3" is three numbers), optional decimals. The sign counts only when it does not follow a
# word character, so "3-5" yields 3 and 5, not 3 and -5.
_NUMBER = re.compile(r"(?:(?<![\w.])-)?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?")
_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)
_RATING = re.compile(r"rating:\s*\**\s*(\d+(?:\.\d+)?)\s*/\s*10", re.IGNORECASE)


def parse_choice_paper(output: str, labels: Sequence[str], texts: Sequence[str]) -> str | None:
    """The paper's multiple-choice parser; returns a label, or ``None`` (counted wrong).

    In order: the first label (in option order) that occurs in the first 5 characters of
    ``output``; else the first that occurs in the last 5 characters; else the first option whose
    text occurs, case-insensitively, anywhere in ``output``. Like the paper this is a substring
    test, so "I think" matches option "I" of a ten-option question. One deliberate difference:
    an empty option text is skipped, since the empty string occurs in every output.
    """
    head, tail = output[:5], output[-5:]
    for label in labels:
        if label and label in head:
            return label
    for label in labels:
        if label and label in tail:
            return label
    low = output.lower()
    for label, text in zip(labels, texts, strict=True):
        if text and text.lower() in low:
            return label
    return None


def numbers_in(text: str) -> list[str]:
    """All numbers in ``text``, in order, thousands commas removed ("1,250.5" -> "1250.5")."""
    out = []
    for m in _NUMBER.finditer(text):
        out.append(m.group(0).replace(",", ""))
    return out


def last_number(text: str) -> str | None:
    """The last number written in ``text`` (the clean GSM8K extractor), or ``None``."""
    nums = numbers_in(text)
    return nums[-1] if nums else None


def to_number(s: str) -> float | None:
    """``s`` as a float (commas, ``$`` and spaces ignored), or ``None`` when it is no number."""
    try:
        return float(str(s).replace(",", "").replace("$", "").strip())
    except ValueError:
        return None


def same_number(a: str | None, b: str | None, rel_tol: float = 1e-9) -> bool:
    """Whether two numeric strings denote the same number ("150" == "150.0" == "1,50" is not)."""
    if a is None or b is None:
        return False
    x, y = to_number(a), to_number(b)
    if x is None or y is None:
        return False
    return math.isclose(x, y, rel_tol=rel_tol, abs_tol=1e-9)


def parse_yes_no(text: str) -> str | None:
    """The first standalone "yes" or "no" in ``text``, lower-cased, or ``None``."""
    m = _YES_NO.search(text)
    return m.group(1).lower() if m else None


def find_rating(text: str) -> float | None:
    """A judge's "Rating: N/10" clipped to [1, 10], or ``None`` when there is none.

    More lenient than the paper's ``split("Rating: ")`` (case, spaces, markdown bold and
    decimals are accepted).
    """
    m = _RATING.search(text)
    if not m:
        return None
    return float(min(10.0, max(1.0, float(m.group(1)))))


def parse_rating(text: str) -> float:
    """Like :func:`find_rating`, but a reply without a rating scores 1, as in the paper."""
    r = find_rating(text)
    return 1.0 if r is None else r


def says_false(reply: str) -> bool:
    """AbstainQA's abstain rule: the self-check reply contains "false" (any case)."""
    return "false" in reply.lower()


def normalise_answer(text: str) -> str:
    """Case-folded, whitespace-collapsed, without surrounding punctuation or quotes."""
    return " ".join(str(text).casefold().split()).strip(" .,!?;:'\"`")


# --------------------------------------------------------------------------------------------
# Exact-match matchers: (output, gold, split) -> bool.

Matcher = Callable[[str, str, str], bool]
MATCHERS: Registry[Matcher] = Registry("exact-match matcher")


@MATCHERS.register("substring")
def match_substring(output: str, gold: str, split: str) -> bool:
    """The paper's NLGraph rule: the gold string occurs in the output (case-sensitive)."""
    return str(gold) in output


def paper_gsm8k_words(split: str) -> int:
    """How many trailing words the paper keeps for GSM8K: 5 on dev, 10 on test."""
    return 10 if split == "test" else 5


@MATCHERS.register("paper-gsm8k")
def match_paper_gsm8k(output: str, gold: str, split: str) -> bool:
    """The paper's GSM8K rule: keep the last 5 (dev) or 10 (test) space-separated words of the
    output, then test whether the gold number occurs in them as a substring. Substring means
    gold "15" also matches "150": that is the paper's behaviour, kept for comparability."""
    k = paper_gsm8k_words(split)
    kept = " ".join(output.split(" ")[-k:])
    return str(gold) in kept


@MATCHERS.register("last-number")
def match_last_number(output: str, gold: str, split: str) -> bool:
    """The cleaner rule: the last number in the output equals the gold number numerically."""
    return same_number(last_number(output), str(gold))


@MATCHERS.register("yes-no")
def match_yes_no(output: str, gold: str, split: str) -> bool:
    """NLGraph connectivity: the first standalone yes/no in the output equals the gold one."""
    g = normalise_answer(gold)
    if g not in ("yes", "no"):
        raise ValueError(f"matcher 'yes-no' needs a yes/no gold answer, got {gold!r}; use 'auto'")
    return parse_yes_no(output) == g


@MATCHERS.register("exact")
def match_exact(output: str, gold: str, split: str) -> bool:
    """Whole-output equality after case folding, whitespace collapsing and trimming punctuation."""
    return normalise_answer(output) == normalise_answer(gold)


@MATCHERS.register("auto")
def match_auto(output: str, gold: str, split: str) -> bool:
    """Per record: yes/no gold -> ``yes-no``; numeric gold -> ``last-number``; else ``exact``."""
    g = normalise_answer(gold)
    if g in ("yes", "no"):
        return match_yes_no(output, gold, split)
    if to_number(gold) is not None:
        return match_last_number(output, gold, split)
    return match_exact(output, gold, split)
