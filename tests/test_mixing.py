"""The mixing rules against a float64 plain-loop reference, and weight validation."""

import numpy as np
import pytest
import torch

from logit_swarm.mixing import as_weight_matrix, mix_logprobs, mix_reference, sample_units


def _rand_logp(rng, n, r, u, zeros=False):
    x = rng.normal(size=(n, r, u)) * 3
    lp = x - np.log(np.exp(x).sum(-1, keepdims=True))
    if zeros:  # byte level has exact zeros
        lp[:, :, : u // 4] = -np.inf
        lp[0, :, u // 4] = -np.inf
        lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
    return lp


@pytest.mark.parametrize("mode", ["probs", "logits"])
@pytest.mark.parametrize("zeros", [False, True])
def test_mix_matches_reference(mode, zeros):
    rng = np.random.default_rng(0)
    lp = _rand_logp(rng, 3, 5, 17, zeros)
    W = rng.normal(size=(5, 3))
    if mode == "probs":
        W[:, 0] = np.abs(W[:, 0]) + 0.1  # at least one positive weight per row
    before = lp.copy()
    t = torch.tensor(lp)
    got = mix_logprobs(t, W, mode).numpy()
    assert np.array_equal(t.numpy(), before, equal_nan=True)  # input untouched
    for r in range(5):
        ref = mix_reference(lp[:, r, :], W[r], mode)
        fin = np.isfinite(ref)
        assert np.array_equal(fin, np.isfinite(got[r]))
        np.testing.assert_allclose(got[r][fin], ref[fin], atol=1e-12)
        assert abs(np.exp(got[r]).sum() - 1) < 1e-12


def test_one_hot_reproduces_expert():
    rng = np.random.default_rng(1)
    lp = _rand_logp(rng, 3, 2, 11)
    for mode in ("probs", "logits"):
        got = mix_logprobs(torch.tensor(lp), np.array([[0, 1.0, 0], [0, 1.0, 0]]), mode).numpy()
        np.testing.assert_allclose(got, lp[1], atol=1e-12)


def test_probs_ignores_negative_and_scale():
    rng = np.random.default_rng(2)
    lp = torch.tensor(_rand_logp(rng, 3, 1, 9))
    a = mix_logprobs(lp, np.array([[0.2, -5.0, 0.6]]), "probs")
    b = mix_logprobs(lp, np.array([[1.0, 0.0, 3.0]]), "probs")
    torch.testing.assert_close(a, b)


def test_weight_validation():
    with pytest.raises(ValueError, match="2 weights for 3 experts"):
        as_weight_matrix([0.5, 0.5], 3)
    with pytest.raises(ValueError, match="NaN or inf"):
        as_weight_matrix([0.5, float("nan"), 0.1], 3)
    with pytest.raises(ValueError, match="NaN or inf"):
        as_weight_matrix([0.5, float("inf"), 0.1], 3)
    with pytest.raises(ValueError, match="at least one positive"):
        as_weight_matrix([0.0, -1.0], 2, mode="probs")
    as_weight_matrix([0.0, -1.0, 2.0], 3, mode="probs")
    as_weight_matrix([-1.0, -1.0], 2, mode="logits")  # any real weights in logits
    with pytest.raises(ValueError, match="unknown mixing mode"):
        as_weight_matrix([1.0], 1, mode="average")
    with pytest.raises(ValueError, match="one row per prompt"):
        as_weight_matrix(np.ones((3, 2)), 2, n_rows=4)


def test_sampling_greedy_and_streams():
    lp = torch.log_softmax(torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]]), -1)
    assert sample_units(lp, 0.0, 1.0, None).tolist() == [1, 0]
    u = np.array([0.999999, 0.0])
    assert sample_units(lp, 1.0, 1.0, u).tolist() == [2, 0]
    # top_p small keeps only the most likely unit
    assert sample_units(lp, 1.0, 0.01, np.array([0.99, 0.99])).tolist() == [1, 0]
    # a zero-probability unit is never drawn
    lp0 = torch.log(torch.tensor([[0.0, 0.5, 0.0, 0.5]]))
    draws = {int(sample_units(lp0, 1.0, 1.0, np.array([x]))[0]) for x in np.linspace(0, 0.9999, 50)}
    assert draws == {1, 3}


def test_tiny_temperature_is_greedy_and_huge_weights_normalise():
    from logit_swarm.mixing import normalised_probs_weights, sample_units

    lp = torch.log_softmax(torch.randn(4, 50, generator=torch.Generator().manual_seed(0)) * 3, -1)
    got = sample_units(lp, 1e-308, 1.0, np.array([0.1, 0.4, 0.6, 0.99]))
    assert got.tolist() == lp.argmax(-1).tolist()
    assert np.allclose(normalised_probs_weights(np.array([[1.7e308, 1.7e308, 0.0]])), [[0.5, 0.5, 0.0]])
