"""fmri metrics: parity with slow obvious loops, known cases (identical -> 1, random
pairing -> chance), the noise ceiling against its closed form."""

import numpy as np
import pytest

from modaflow.modalities.fmri.metrics import (
    noise_ceiling,
    pixcorr,
    sample_cosine,
    sample_r,
    ssim,
    top1_retrieval,
    two_way_identification,
    voxel_r,
)


def _slow_two_way(pred, true):
    n = len(pred)
    total = 0.0
    for i in range(n):
        own = np.corrcoef(pred[i].ravel(), true[i].ravel())[0, 1]
        wins = 0.0
        for j in range(n):
            if j != i:
                other = np.corrcoef(pred[i].ravel(), true[j].ravel())[0, 1]
                wins += 1.0 if own > other else (0.5 if own == other else 0.0)
        total += wins / (n - 1)
    return total / n


def test_voxel_and_sample_r_match_numpy_corrcoef() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 7)), rng.normal(size=(40, 7))
    b[:, 0] += 2 * a[:, 0]
    slow_v = [np.corrcoef(a[:, v], b[:, v])[0, 1] for v in range(7)]
    slow_s = [np.corrcoef(a[i], b[i])[0, 1] for i in range(40)]
    np.testing.assert_allclose(voxel_r(a, b), slow_v, atol=1e-12)
    np.testing.assert_allclose(sample_r(a, b), slow_s, atol=1e-12)
    slow_cos = [a[i] @ b[i] / np.sqrt((a[i] @ a[i]) * (b[i] @ b[i])) for i in range(40)]
    np.testing.assert_allclose(sample_cosine(a, b), slow_cos, atol=1e-12)
    np.testing.assert_allclose(sample_cosine(a, 3 * a), 1.0, atol=1e-12)  # scale-free, unlike r not centred:
    assert sample_cosine(a + 10, a)[0] != pytest.approx(sample_r(a + 10, a)[0])
    assert sample_cosine(np.zeros((2, 7)), b[:2]).tolist() == [0.0, 0.0]


def test_two_way_matches_slow_loop() -> None:
    rng = np.random.default_rng(1)
    true = rng.normal(size=(25, 6, 6))
    pred = true + 1.5 * rng.normal(size=true.shape)
    assert two_way_identification(pred, true) == pytest.approx(_slow_two_way(pred, true), abs=1e-12)


def test_top1_retrieval_matches_slow_loop() -> None:
    rng = np.random.default_rng(2)
    true = rng.normal(size=(60, 10))
    pred = true + 1.0 * rng.normal(size=true.shape)
    got = top1_retrieval(pred, true, n_candidates=20, seed=3)
    sel = np.random.default_rng(3)
    hits = 0
    for i in range(60):
        pool = sel.choice(np.delete(np.arange(60), i), 19, replace=False)
        own = np.corrcoef(pred[i], true[i])[0, 1]
        hits += all(own > np.corrcoef(pred[i], true[j])[0, 1] for j in pool)
    assert got == hits / 60


def test_identical_images_score_perfectly() -> None:
    rng = np.random.default_rng(3)
    imgs = rng.uniform(size=(30, 16, 16))
    assert pixcorr(imgs, imgs) == pytest.approx(1.0)
    assert ssim(imgs, imgs) == pytest.approx(1.0)
    assert two_way_identification(imgs, imgs) == 1.0
    assert top1_retrieval(imgs, imgs) == 1.0
    noisy = np.clip(imgs + 0.3 * rng.normal(size=imgs.shape), 0, 1)
    assert ssim(noisy, imgs) < 0.9


def test_random_pairing_is_at_chance() -> None:
    rng = np.random.default_rng(4)
    true, pred = rng.normal(size=(300, 64)), rng.normal(size=(300, 64))
    assert two_way_identification(pred, true) == pytest.approx(0.5, abs=0.02)
    assert top1_retrieval(pred, true, n_candidates=300) <= 0.02  # chance 1/300
    assert abs(pixcorr(pred, true)) < 0.02


def test_noise_ceiling_closed_form() -> None:
    # signal sd 1, noise sd 1, R = 4 repeats: ncsnr = 1, NC = 1 / (1 + 1/4) = 0.8, r = sqrt(0.8)
    rng = np.random.default_rng(5)
    signal = rng.normal(size=(4000, 1, 3))
    trials = signal + rng.normal(size=(4000, 4, 3))
    nc = noise_ceiling(trials)
    np.testing.assert_allclose(nc, np.sqrt(0.8), atol=0.01)
    empirical = voxel_r(signal[:, 0], trials.mean(1))  # a perfect model's r on the averages
    np.testing.assert_allclose(empirical, nc, atol=0.02)
    assert noise_ceiling(rng.normal(size=(20000, 3, 2))).max() < 0.2  # pure noise: (almost) no ceiling
    with pytest.raises(ValueError, match="R >= 2"):
        noise_ceiling(trials[:, :1])


def test_noise_ceiling_with_mixed_repeat_counts_is_nsds_formula() -> None:
    # signal sd 1, noise sd 1; a third of the stimuli shown once, twice, three times (NaN rows for the
    # missing repeats): NC = sqrt(1 / (1 + mean 1/n)) = sqrt(1 / (1 + 11/18))
    rng = np.random.default_rng(6)
    n, v = 30000, 3
    signal = rng.normal(size=(n, 1, v))
    trials = signal + rng.normal(size=(n, 3, v))
    counts = np.repeat([1, 2, 3], n // 3)
    trials[np.arange(3)[None, :] >= counts[:, None]] = np.nan
    nc = noise_ceiling(trials)
    np.testing.assert_allclose(nc, np.sqrt(1 / (1 + 11 / 18)), atol=0.01)
    averages = np.nanmean(trials, 1)  # what a test set of these stimuli holds
    np.testing.assert_allclose(voxel_r(signal[:, 0], averages), nc, atol=0.02)
    equal = trials[counts == 3]  # every stimulus shown R times: the same as without NaN rows
    np.testing.assert_allclose(noise_ceiling(np.concatenate([equal, np.full((5, 3, v), np.nan)])), noise_ceiling(equal),
                               rtol=1e-12)


def test_stimulus_means_average_the_repeats_of_each_input() -> None:
    from modaflow.modalities.fmri.baselines import stimulus_means

    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], np.float32)
    y = np.array([[1.0], [10.0], [3.0], [20.0], [5.0]], np.float32)
    xu, ym = stimulus_means(x, y)
    assert xu.shape == (2, 2)
    got = {tuple(a): float(b[0]) for a, b in zip(xu.tolist(), ym)}
    assert got == {(1.0, 0.0): 3.0, (0.0, 1.0): 15.0}


def test_one_sample_is_refused_by_the_identification_metrics() -> None:
    one = np.random.default_rng(0).standard_normal((1, 5))
    with pytest.raises(ValueError, match="^top-1 retrieval needs at least 2 samples$"):  # was numpy's empty max()
        top1_retrieval(one, one, 10)
    with pytest.raises(ValueError, match="^two-way identification needs at least 2 samples$"):
        two_way_identification(one, one)


def test_encoding_metrics_warn_when_the_ceiling_rests_on_few_test_stimuli() -> None:
    import warnings

    from modaflow.modalities.fmri.evaluation import CEILING_MIN_STIMULI, encoding_metrics

    rng = np.random.default_rng(0)
    for n, warns in ((CEILING_MIN_STIMULI - 1, True), (CEILING_MIN_STIMULI, False)):
        signal = rng.normal(size=(n, 1, 6))
        trials = signal + 0.5 * rng.normal(size=(n, 3, 6))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = encoding_metrics(signal[:, 0], trials.mean(1), trials, n_candidates=n)
        assert any("noise ceiling comes from" in str(w.message) for w in caught) == warns
        assert 0 < out["enc.noise_ceiling_median"] <= 1
