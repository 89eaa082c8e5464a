"""Metrics as pure functions: tie handling, effective reliability, means, bits per byte."""

from __future__ import annotations

import math

import numpy as np
import pytest

from logit_swarm.tasks.metrics import (
    bits_per_byte,
    choice_credit,
    effective_reliability,
    harmonic_mean,
    minmax_normalise,
    weighted_mean,
)


def test_choice_credit_unique_best_and_ties():
    scores = np.array([[-1.0, -2.0, -3.0],    # gold 0 is the unique best
                       [-1.0, -1.0, -5.0],    # gold 1 tied with 0: half credit
                       [-2.0, -2.0, -2.0],    # all tied: a third
                       [-3.0, -1.0, -2.0]])   # gold 0 is not best
    credit = choice_credit(scores, np.array([0, 1, 2, 0]))
    np.testing.assert_allclose(credit, [1.0, 0.5, 1 / 3, 0.0])


def test_choice_credit_batched_over_particles_and_masked_options():
    scores = np.array([[[-1.0, -2.0, 0.0]], [[-3.0, -2.0, 0.0]]])  # [P=2, n=1, C=3]
    valid = np.array([[True, True, False]])                       # option 2 does not exist
    np.testing.assert_allclose(choice_credit(scores, np.array([0]), valid), [[1.0], [0.0]])


def test_choice_credit_with_impossible_options_gets_nothing():
    scores = np.array([[-np.inf, -np.inf]])
    assert choice_credit(scores, np.array([0]))[0] == 0.0


def test_effective_reliability_by_hand():
    correct = np.array([[1, 0, 1, 0, 1]], bool)
    abstain = np.array([[0, 0, 1, 1, 0]], bool)
    # answered: q0 right, q1 wrong, q4 right -> (2 - 1) / 5
    assert effective_reliability(correct, abstain)[0] == pytest.approx(0.2)
    assert effective_reliability(correct, np.ones_like(abstain))[0] == 0.0
    assert effective_reliability(np.zeros((1, 4), bool), np.zeros((1, 4), bool))[0] == -1.0
    assert effective_reliability(np.zeros((2, 0), bool), np.zeros((2, 0), bool)).tolist() == [0.0, 0.0]


def test_harmonic_mean():
    x = np.array([[0.5, 0.5], [0.2, 0.6], [0.0, 0.9], [0.0, 0.0]])
    np.testing.assert_allclose(harmonic_mean(x), [0.5, 0.3, 0.0, 0.0])
    np.testing.assert_allclose(harmonic_mean(np.array([[1.0, 2.0, 4.0]])), [3 / (1 + 0.5 + 0.25)])
    with pytest.raises(ValueError, match="non-negative"):
        harmonic_mean(np.array([[-0.1, 0.5]]))


def test_weighted_mean():
    x = np.array([[1.0, 3.0], [-1.0, 1.0]])
    np.testing.assert_allclose(weighted_mean(x), [2.0, 0.0])
    np.testing.assert_allclose(weighted_mean(x, [3, 1]), [1.5, -0.5])
    with pytest.raises(ValueError, match="weights"):
        weighted_mean(x, [1, 1, 1])
    with pytest.raises(ValueError, match="weights"):
        weighted_mean(x, [0, 0])


def test_bits_per_byte_by_hand():
    # Two texts: 4 and 4 bytes; log-probs ln(1/2) per byte -> exactly 1 bit per byte.
    lp = np.array([[4 * math.log(0.5), 4 * math.log(0.5)]])
    assert bits_per_byte(lp, np.array([4, 4]))[0] == pytest.approx(1.0)
    # Corpus level: (8 + 0) bits over 8 bytes = 1, not the mean of per-text values.
    lp2 = np.array([[8 * math.log(0.5), 0.0]])
    assert bits_per_byte(lp2, np.array([2, 6]))[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="byte"):
        bits_per_byte(np.zeros((1, 1)), np.array([0]))


def test_minmax_normalise():
    np.testing.assert_allclose(minmax_normalise(np.array([-4.0, -3.06, 0.0, 3.0]), -3.06, 2.656),
                               [0.0, 0.0, 3.06 / 5.716, 1.0])
    np.testing.assert_allclose(minmax_normalise(np.array([2.0]), 0.0, 1.0, clip=False), [2.0])
    with pytest.raises(ValueError, match="high > low"):
        minmax_normalise(np.zeros(1), 1.0, 1.0)


def test_chunk_text_keeps_every_character_and_prefers_word_boundaries():
    from logit_swarm.tasks.likelihood import chunk_text

    text = "The quick brown fox jumps over the lazy dog. 日本語 😀"
    pieces = chunk_text(text, 12)
    assert "".join(pieces) == text
    assert all(0 < len(p) <= 12 for p in pieces)
    assert pieces[0] == "The quick "  # cut after a space, not inside "brown"
    assert chunk_text("abcdefgh", 3) == ["abc", "def", "gh"]  # no space: hard cuts
    assert chunk_text("", 5) == []
    with pytest.raises(ValueError, match="chunk_chars"):
        chunk_text("x", 0)
