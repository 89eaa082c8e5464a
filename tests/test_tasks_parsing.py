"""Answer parsing and matchers, on hand-checkable cases (paper rules and the cleaner ones)."""

from __future__ import annotations

import pytest

from logit_swarm.tasks import MATCHERS, UnknownNameError
from logit_swarm.tasks.parsing import (
    find_rating,
    last_number,
    numbers_in,
    parse_choice_paper,
    parse_rating,
    parse_yes_no,
    same_number,
    says_false,
)

L4 = ["A", "B", "C", "D"]
T4 = ["Paris", "London", "Rome", "Berlin"]


@pytest.mark.parametrize("output, expected", [
    ("B", "B"),                                  # direct answer
    (": C. Rome", "C"),                          # label within the first 5 characters
    ("The answer is D", "D"),                    # no label in "The a"; "D" in the last 5
    ("it's the city of rome, I think", "C"),     # option text, case-insensitive
    ("i do not know", None),                     # nothing: counted wrong
    ("", None),                                  # empty output
    ("AB", "A"),                                 # several labels: option order decides
    ("berlin or paris", "A"),                    # several texts: option order decides, too
    ("ローマ Rome", "C"),                          # unicode before the text
])
def test_paper_choice_parser(output, expected):
    assert parse_choice_paper(output, L4, T4) == expected


def test_paper_parser_keeps_its_substring_quirk():
    labels = list("ABCDEFGHIJ")
    texts = [str(i) for i in range(10)]
    # "I think" has the label "I" in its first 5 characters: the paper reads option I.
    assert parse_choice_paper("I think 3", labels, texts) == "I"


def test_paper_parser_head_beats_tail_and_skips_empty_options():
    assert parse_choice_paper("B is right, not A", L4, T4) == "B"
    assert parse_choice_paper("none of these", ["A", "B"], ["", "x"]) is None


@pytest.mark.parametrize("text, nums", [
    ("The answer is 42.", ["42"]),
    ("$1,250.50 in total", ["1250.50"]),
    ("1,2,3", ["1", "2", "3"]),
    ("from 3-5 to -7", ["3", "5", "-7"]),
    ("x=12,3456", ["12", "3456"]),
    ("no digits here", []),
    ("٣ is Arabic-Indic, 7 is ASCII", ["٣", "7"]),  # Unicode digits count (float() reads them)
])
def test_numbers_in(text, nums):
    assert numbers_in(text) == nums


def test_last_number_and_numeric_equality():
    assert last_number("so 5 + 7 = 12 apples.") == "12"
    assert last_number("") is None
    assert same_number("150", "150.0") and same_number("1,000", "1000")
    assert not same_number("15", "150") and not same_number(None, "1") and not same_number("x", "x")
    assert same_number("٣", "3")


def test_paper_gsm8k_keeps_5_words_on_dev_and_10_on_test():
    m = MATCHERS.get("paper_gsm8k")
    out = "the total is 18 so we have one two three four five"
    assert not m(out, "18", "dev")  # "18" is 7 words from the end
    assert m(out, "18", "test")
    assert m("answer: 150", "15", "dev")  # substring, as in the paper


def test_clean_matchers():
    assert MATCHERS.get("last-number")("so the answer is 1,250.", "1250", "dev")
    assert not MATCHERS.get("last-number")("18 then 19", "18", "dev")
    assert MATCHERS.get("substring")("Yes, there is a path", "Yes", "dev")
    assert not MATCHERS.get("substring")("yes", "Yes", "dev")  # the paper's rule is case-sensitive
    assert MATCHERS.get("yes_no")("Yes, there is.", "yes", "dev")
    assert not MATCHERS.get("yes_no")("Not sure; yes", "No", "dev")
    assert not MATCHERS.get("yes_no")("nobody knows", "no", "dev")  # whole words only
    with pytest.raises(ValueError, match="auto"):
        MATCHERS.get("yes_no")("yes", "12", "dev")
    assert MATCHERS.get("exact")('  "Moulean." ', "moulean", "dev")
    auto = MATCHERS.get("auto")
    assert auto("No.", "No", "dev") and auto("it is 7", "7", "dev") and auto("Skeadri", " Skeadri", "dev")
    assert not auto("", "7", "dev")


def test_parse_yes_no():
    assert parse_yes_no("YES!") == "yes" and parse_yes_no("no way") == "no"
    assert parse_yes_no("maybe") is None and parse_yes_no("") is None


@pytest.mark.parametrize("reply, rating", [
    ("Rating: 7/10. Clear and correct.", 7.0),
    ("rating:  8 / 10", 8.0),
    ("**Rating: 9/10**", 9.0),
    ("Rating: 7.5/10", 7.5),
    ("Rating: 11/10", 10.0),
    ("Rating: 0/10", 1.0),
    ("Rating: ?/10", 1.0),      # the template's placeholder is no rating
    ("I would give it 8", 1.0),
    ("", 1.0),
])
def test_parse_rating(reply, rating):
    assert parse_rating(reply) == rating


def test_find_rating_reports_failures():
    assert find_rating("no rating") is None and find_rating("Rating: 3/10") == 3.0


def test_says_false():
    assert says_false("False.") and says_false("that is FALSE") and not says_false("True")
    assert not says_false("")


def test_unknown_matcher_suggests():
    with pytest.raises(UnknownNameError, match="Did you mean: last-number"):
        MATCHERS.get("last_numbr")
