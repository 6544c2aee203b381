"""Power-law fits recover known exponents (exactly without noise, within their standard error
with it), the compute-optimal frontier, the size family's depth/width rule and the paper's
LR / batch fits."""

import numpy as np
import pytest

from polar_jax.scaling import fit, sizes


@pytest.mark.parametrize("a, b, lo, hi", [(0.9, -0.0425, 5e7, 1e9), (2.4, -0.0342, 1e-3, 1e2), (3.0, 0.5, 1, 10)])
def test_exact_points_give_back_the_exponent_and_r2_one(a, b, lo, hi):
    x_n = np.geomspace(lo, hi, 7)
    law = fit.fit_power_law(x_n, a * x_n**b)
    assert law.b == pytest.approx(b, abs=1e-12)
    assert law.a == pytest.approx(a, rel=1e-10)
    assert law.r2 == pytest.approx(1.0, abs=1e-12)
    assert law.b_stderr == pytest.approx(0.0, abs=1e-10)
    assert (law.n, law.x_min, law.x_max) == (7, pytest.approx(lo), pytest.approx(hi))
    np.testing.assert_allclose(law(x_n), a * x_n**b, rtol=1e-10)


def test_noisy_points_give_the_exponent_within_its_standard_error():
    # The paper's law over its range (50M-1B), 1% multiplicative noise: the paper's R^2 territory.
    a, b, sigma = 0.9, -0.0425, 0.01
    x_n = np.geomspace(5e7, 1e9, 30)
    dx_n = np.log(x_n) - np.log(x_n).mean()
    expected_stderr = sigma / np.sqrt(dx_n @ dx_n)  # 0.0018 here
    rng = np.random.default_rng(0)
    laws = [fit.fit_power_law(x_n, a * x_n**b * np.exp(sigma * rng.standard_normal(30))) for _ in range(400)]
    b_n = np.array([law.b for law in laws])
    # Unbiased, with the spread the theory says, and each fit's reported standard error matches it.
    assert abs(b_n.mean() - b) < 4 * expected_stderr / np.sqrt(len(laws))
    assert b_n.std() == pytest.approx(expected_stderr, rel=0.1)
    assert np.median([law.b_stderr for law in laws]) == pytest.approx(expected_stderr, rel=0.1)
    # One fit, as a study makes it: within 3 standard errors, prefactor within 10%, R^2 high but below 1.
    one = laws[0]
    assert abs(one.b - b) < 3 * expected_stderr
    assert one.a == pytest.approx(a, rel=0.1)
    assert 0.9 < one.r2 < 1.0


def test_r2_falls_with_noise_and_is_zero_for_a_flat_cloud():
    x_n = np.geomspace(1, 1000, 50)
    rng = np.random.default_rng(1)
    eps_n = rng.standard_normal(50)
    r2 = [fit.fit_power_law(x_n, x_n**-0.3 * np.exp(s * eps_n)).r2 for s in (0.01, 0.1, 0.5)]
    assert r2[0] > 0.99 and r2[0] > r2[1] > r2[2]
    flat = fit.fit_power_law(x_n, np.exp(0.1 * eps_n))
    assert flat.r2 < 0.1 and abs(flat.b) < 3 * flat.b_stderr


def test_fits_refuse_what_they_cannot_fit():
    with pytest.raises(ValueError, match="at least 2 points"):
        fit.fit_power_law([1.0], [1.0])
    with pytest.raises(ValueError, match="positive"):
        fit.fit_power_law([1.0, 2.0], [1.0, -1.0])
    with pytest.raises(ValueError, match="same x"):
        fit.fit_power_law([3.0, 3.0], [1.0, 2.0])
    assert fit.fit_power_law([1.0, 10.0], [1.0, 0.5]).to_dict()["b_stderr"] is None  # 2 points: no error bar


def test_pareto_frontier_keeps_points_no_cheaper_point_beats():
    x_n = np.array([1.0, 2.0, 2.0, 3.0, 4.0, 5.0])
    y_n = np.array([5.0, 4.0, 3.0, 3.5, 2.0, 2.0])
    assert fit.pareto_frontier(x_n, y_n).tolist() == [0, 2, 4]


def test_compute_frontier_follows_the_envelope_of_loss_curves():
    # Three sizes; loss(N, C) = N^-0.1 + 10 (C/N)^-0.5 as each trains (compute C = N x steps):
    # small models win at small compute, big ones later, so the frontier holds all three sizes.
    curves = {n: np.geomspace(n * 10, n * 1e4, 20) for n in (1e3, 1e4, 1e5)}
    c_n = np.concatenate(list(curves.values()))
    n_n = np.concatenate([np.full(20, n) for n in curves])
    l_n = n_n**-0.1 + 10 * (c_n / n_n) ** -0.5
    out = fit.compute_frontier(c_n, l_n, n_n)
    idx = np.array(out["indices"])
    assert np.all(np.diff(c_n[idx]) > 0) and np.all(np.diff(l_n[idx]) < 0)
    # By brute force: a point is on the frontier iff no point of less or equal compute has a lower loss.
    brute = [i for i in range(len(c_n)) if not np.any((c_n <= c_n[i]) & (l_n < l_n[i]))]
    assert sorted(idx.tolist()) == brute
    assert set(n_n[idx]) == {1e3, 1e4, 1e5}
    assert out["loss_vs_compute"].b < 0
    assert out["optimal_params"].b > 0  # the optimal size grows with compute
    one = fit.compute_frontier(c_n[:20], l_n[:20], n_n[:20])
    assert one["optimal_params"] is None and "1 size" in one["note"]


def test_depth_width_rule_and_the_main_family_span_1m_to_1b():
    family = sizes.family(sizes.MAIN_RULE, sizes.MAIN_LAYERS)
    counts = [sizes.non_embedding_params(s) for s in family.values()]
    assert counts == sorted(counts)
    assert 1e6 <= counts[0] < 2e6 and 1e9 <= counts[-1] < 1.2e9
    assert list(family)[0] == "1.3M" and list(family)[-1] == "1.1B"
    for shape in family.values():
        d, layers = shape["d_model"], shape["num_layers"]
        assert d == 64 * layers and shape["num_heads"] * shape["head_dim"] == d
        assert shape["mlp_dim"] % 64 == 0 and 8 * d / 3 <= shape["mlp_dim"] < 8 * d / 3 + 64
        assert sizes.non_embedding_params(shape) == pytest.approx(12 * layers * d**2, rel=0.05)
    gqa = sizes.DepthWidthRule(kv_group=2).shape(8)
    assert (gqa["num_heads"], gqa["num_kv_heads"]) == (8, 4)
    with pytest.raises(ValueError, match="multiple of head_dim"):
        sizes.DepthWidthRule(aspect_ratio=48, head_dim=64).shape(1)


def test_short_count_names():
    assert [sizes.short_count(n) for n in (13_440, 100_736, 1_328_640, 202_409_984, 1_082_299_904, 12)] == [
        "13K",
        "101K",
        "1.3M",
        "202M",
        "1.1B",
        "12",
    ]


def test_paper_fits_evaluate_the_reference_formulas():
    assert sizes.paper_batch(1.0, 1.0) == pytest.approx(31.9032)
    assert sizes.paper_lr(1.0, 1.0, 1.0) == pytest.approx(2.306e-4)
    n, dp, drm = 1800.0, 2.5e6, 5e5
    assert sizes.paper_lr(n, dp, drm) == pytest.approx(2.306e-4 * n**0.01125 * dp**-0.66587 * drm**0.33916)
    assert sizes.paper_batch(n, drm) == pytest.approx(31.9032 * n**0.06944 * drm**0.52997)
    assert sizes.paper_batch(100, 1000) > sizes.paper_batch(10, 1000)  # bigger models, bigger batches
    with pytest.raises(ValueError, match="base_tokens_m=0"):
        sizes.paper_lr(100.0, 0.0, 100.0)
    assert sizes.rows_for_samples(1940, pairs_per_row=15, multiple=8) == 136
    assert sizes.rows_for_samples(1, pairs_per_row=2) == 1
