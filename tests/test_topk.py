"""The leftover-mass rule (logit_swarm/experts/topk.py): exact when k covers the vocabulary,
stated behaviour otherwise."""

import math

import numpy as np
import pytest
import torch

from logit_swarm.experts.topk import SENTINEL, dense_logprobs, dense_rows, merge_topk


def _dist(v=50, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=v) * 3
    return x - np.log(np.exp(x).sum())


def test_exact_when_k_covers_vocabulary():
    lp = _dist()
    order = np.random.default_rng(1).permutation(len(lp))
    got = dense_logprobs(order, lp[order], len(lp), dtype=torch.float64).numpy()
    assert np.allclose(got, lp, atol=1e-12)


def test_exact_up_to_rounding_of_float32_values():
    lp = _dist(300).astype(np.float32).astype(np.float64)  # what a server sends
    got = dense_logprobs(np.arange(300), lp, 300).numpy()
    assert got.dtype == np.float32
    assert np.abs(got - lp).max() < 1e-5


def test_leftover_is_spread_uniformly_over_unlisted():
    lp = _dist(40)
    top = np.argsort(-lp)[:5]
    got = dense_logprobs(top, lp[top], 40, dtype=torch.float64).numpy()
    assert np.allclose(got[top], lp[top])  # listed tokens keep their probabilities
    rest = np.setdiff1d(np.arange(40), top)
    left = 1 - np.exp(lp[top]).sum()
    assert np.allclose(np.exp(got[rest]), left / 35)
    assert math.isclose(np.exp(got).sum(), 1.0, rel_tol=1e-12)
    # a truthful top-k never lets an unlisted token outrank a listed one
    assert np.exp(got[rest]).max() <= np.exp(lp[top]).min()


def test_k1_and_empty_answers():
    got = dense_logprobs([3], [math.log(0.6)], 5, dtype=torch.float64).numpy()
    assert np.allclose(np.exp(got), [0.1, 0.1, 0.1, 0.6, 0.1])
    # nothing usable: uniform (no information), never NaN
    got = dense_logprobs([], [], 4, dtype=torch.float64).numpy()
    assert np.allclose(np.exp(got), 0.25)


def test_sentinels_and_nan_are_not_listed():
    got = dense_logprobs([0, 1, 2], [math.log(0.5), SENTINEL, float("nan")], 4, dtype=torch.float64).numpy()
    assert np.allclose(np.exp(got), [0.5, 0.5 / 3, 0.5 / 3, 0.5 / 3])
    got = dense_logprobs([0, 1], [math.log(0.5), -1e5], 3, dtype=torch.float64).numpy()
    assert np.allclose(np.exp(got), [0.5, 0.25, 0.25])
    got = dense_logprobs([0, 1], [0.0, -math.inf], 3, dtype=torch.float64).numpy()
    assert got[0] == 0.0 and np.isneginf(got[1:]).all()  # nothing left over: unlisted get zero


def test_duplicates_keep_largest_and_k_plus_one_entry():
    ids, lps = merge_topk([([1, 2], [math.log(0.5), math.log(0.3)]), ([2], [math.log(0.3)]),
                           ([0], [math.log(0.01)])])
    assert list(ids) == [1, 2, 2, 0]
    got = dense_logprobs(ids, lps, 4, dtype=torch.float64).numpy()
    assert np.allclose(np.exp(got), [0.01, 0.5, 0.3, 0.19])


def test_out_of_range_ids_leave_the_total():
    # mass on a padded embedding row (id 4 >= vocab 4) is removed, like a local expert's mask
    got = dense_logprobs([0, 1, 2, 3, 4], np.log([0.2, 0.2, 0.2, 0.2, 0.2]), 4, dtype=torch.float64).numpy()
    assert np.allclose(np.exp(got), 0.25)
    got = dense_logprobs([0, 9], np.log([0.4, 0.2]), 3, dtype=torch.float64).numpy()
    assert np.allclose(np.exp(got), [0.5, 0.25, 0.25])


def test_overfull_answers_are_renormalised():
    got = dense_logprobs([0, 1], np.log([0.7, 0.5]), 3, dtype=torch.float64).numpy()
    assert np.allclose(np.exp(got), [0.7 / 1.2, 0.5 / 1.2, 0.0])


def test_rows_and_validation():
    rows = dense_rows([(np.array([0]), np.array([0.0])), (np.array([1]), np.array([math.log(0.5)]))], 2)
    assert rows.shape == (2, 2) and rows.dtype == torch.float32
    assert dense_rows([], 7).shape == (0, 7)
    with pytest.raises(ValueError, match="differ in length"):
        dense_logprobs([0, 1], [0.0], 3)
    with pytest.raises(ValueError, match="vocab_size"):
        dense_logprobs([], [], 0)


def test_positive_logprobs_are_clamped_not_nan():
    from logit_swarm.experts.topk import dense_logprobs

    d = dense_logprobs([0, 1], [710.0, -30.0], 4)
    assert not torch.isnan(d).any() and abs(float(torch.logsumexp(d, 0))) < 1e-6
