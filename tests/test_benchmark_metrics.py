"""TOFU's and MUSE's scores (``metrics.benchmarks``) against values worked out by hand."""

from __future__ import annotations

import math
import random

import pytest
import torch

from unlearnlm.errors import UnlearnError
from unlearnlm.metrics import benchmarks as bm

LOG = math.log


def test_normalised_probability_is_the_geometric_mean_of_token_probabilities():
    # sqrt(0.5 * 0.125) = 0.25
    assert bm.normalised_probability([LOG(0.5), LOG(0.125)]) == pytest.approx(0.25)
    with pytest.raises(UnlearnError, match="no tokens"):
        bm.normalised_probability([])


def test_truth_ratio_averages_the_wrong_answers_log_probabilities():
    # correct: normalised 0.5; wrong: 0.25 and 0.25 -> 0.5; then 0.25 and 0.0625, geometric
    # mean 0.125 -> 0.125 / 0.5
    correct = [LOG(0.5), LOG(0.5)]
    wrong = [[LOG(0.25)], [LOG(0.5), LOG(0.125)]]  # 0.25 and sqrt(0.0625) = 0.25
    assert bm.truth_ratio(correct, wrong) == pytest.approx(0.5)
    wrong = [[LOG(0.25)], [LOG(0.0625)]]
    assert bm.truth_ratio(correct, wrong) == pytest.approx(0.25)
    # the arithmetic mean of the wrong probabilities would give (0.25 + 0.0625) / 2 / 0.5
    assert bm.truth_ratio(correct, wrong) != pytest.approx(0.3125)
    with pytest.raises(UnlearnError, match="wrong answer"):
        bm.truth_ratio(correct, [])


def test_truth_ratio_aggregates():
    # forget: min(0.25, 4) and min(2, 0.5) -> (0.25 + 0.5) / 2
    assert bm.forget_truth_ratio([0.25, 2.0]) == pytest.approx(0.375)
    # utility: max(0, 1 - 0.25) and max(0, 1 - 2) -> (0.75 + 0) / 2
    assert bm.utility_truth_ratio([0.25, 2.0]) == pytest.approx(0.375)
    assert bm.utility_truth_ratio([0.5]) == pytest.approx(0.5)
    assert bm.forget_truth_ratio([1.0, 1.0]) == 1.0


def test_option_probability_is_the_correct_share():
    assert bm.option_probability([LOG(0.5)], [[LOG(0.25)], [LOG(0.25)]]) == pytest.approx(0.5)
    assert bm.option_probability([LOG(0.6)], [[LOG(0.2)]]) == pytest.approx(0.75)


def test_forget_quality_is_the_ks_p_value():
    from scipy.stats import ks_2samp

    # disjoint samples of 3: D = 1; exact two-sided p = 2 / C(6, 3) = 0.1
    assert bm.forget_quality([1, 2, 3], [4, 5, 6]) == pytest.approx(0.1)
    # identical samples: D = 0, p = 1
    assert bm.forget_quality([0.3, 0.5, 0.9], [0.3, 0.5, 0.9]) == pytest.approx(1.0)
    rng = random.Random(0)
    a = [rng.lognormvariate(0, 1) for _ in range(40)]
    b = [rng.lognormvariate(0.5, 1) for _ in range(30)]
    assert bm.forget_quality(a, b) == pytest.approx(ks_2samp(a, b).pvalue)
    # ranks only: TOFU's released code tests 1/R, with the same p-value
    assert bm.forget_quality([1 / x for x in a], [1 / x for x in b]) == pytest.approx(
        bm.forget_quality(a, b))
    with pytest.raises(UnlearnError, match="retain model"):
        bm.forget_quality(a, [])


def test_harmonic_mean():
    assert bm.harmonic_mean([1.0, 0.5, 0.25]) == pytest.approx(3 / 7)
    assert bm.harmonic_mean([0.4, 0.0, 0.9]) == 0.0
    with pytest.raises(UnlearnError, match="negative"):
        bm.harmonic_mean([0.5, -0.1])


def test_rouge_l_recall_and_f1():
    # LCS of "the cat sat on the mat" and "the cat on a mat" is "the cat on mat", 4 words
    assert bm.rouge_l("the cat on a mat", "the cat sat on the mat") == pytest.approx(4 / 6)
    assert bm.rouge_l("the cat on a mat", "the cat sat on the mat", "f1") == pytest.approx(8 / 11)
    # stemmed: "cats" and "cat" match
    assert bm.rouge_l("Cats sleeping", "cat sleeps") == pytest.approx(1.0)
    assert bm.rouge_l("", "an answer") == 0.0
    with pytest.raises(UnlearnError, match="recall or f1"):
        bm.rouge_l("a", "a", "precision")


def _logits(rows: list[tuple[float, ...]]) -> torch.Tensor:
    return torch.log(torch.tensor(rows, dtype=torch.float64))


def test_min_k_percent_takes_the_lowest_token_log_probabilities():
    logits = _logits([(0.5, 0.5), (0.9, 0.1), (0.2, 0.8)])
    targets = torch.tensor([0, 1, 1])
    # k = 0.4 of 3 tokens: int(1.2) = 1 token, the lowest: log 0.1
    assert bm.min_k_percent(logits, targets, 0.4) == pytest.approx(LOG(0.1))
    # k = 1: all three
    assert bm.min_k_percent(logits, targets, 1.0) == pytest.approx(
        (LOG(0.5) + LOG(0.1) + LOG(0.8)) / 3)
    with pytest.raises(UnlearnError, match="fraction"):
        bm.min_k_percent(logits, targets, 0.0)


def test_min_k_plus_plus_standardises_by_the_next_token_distribution():
    # p = (0.9, 0.1), a = log 0.9, b = log 0.1: mu = 0.9a + 0.1b, sigma = 0.3 |a - b|;
    # z(token 1) = 0.9 (b - a) / (0.3 (a - b)) = -3, z(token 0) = 0.1 (a - b) / (0.3 (a - b)) = 1/3
    logits = _logits([(0.9, 0.1), (0.9, 0.1)])
    targets = torch.tensor([1, 0])
    assert bm.min_k_plus_plus(logits, targets, 0.5) == pytest.approx(-3.0)
    assert bm.min_k_plus_plus(logits, targets, 1.0) == pytest.approx((-3 + 1 / 3) / 2)
    # a uniform distribution has no spread: sigma floored, z = 0
    assert bm.min_k_plus_plus(_logits([(0.5, 0.5)]), torch.tensor([1]), 1.0) == 0.0
    # the same logits shifted by a constant per position give the same score
    shifted = logits + torch.tensor([[3.0], [-2.0]], dtype=torch.float64)
    assert bm.min_k_plus_plus(shifted, targets, 1.0) == pytest.approx((-3 + 1 / 3) / 2)


def test_membership_auc_and_privleak():
    assert bm.membership_auc([3, 1], [2, 0]) == pytest.approx(0.75)
    assert bm.membership_auc([1, 1], [1, 1]) == pytest.approx(0.5)
    assert bm.membership_auc([5, 6], [1, 2]) == 1.0
    # MUSE's AUC is 1 - ours: (0.1 - 0.4) / 0.4 x 100
    assert bm.privleak(0.9, 0.6) == pytest.approx(-75.0)
    assert bm.privleak(0.5, 0.5) == 0.0
    assert math.isnan(bm.privleak(0.7, 1.0))
