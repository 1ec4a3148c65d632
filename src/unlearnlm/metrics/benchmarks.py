"""The scores of the TOFU and MUSE benchmarks, as pure functions of numbers and strings.

TOFU (Maini et al. 2024, "TOFU: A Task of Fictitious Unlearning for LLMs") and MUSE (Shi et al.
2024, "MUSE: Machine Unlearning Six-Way Evaluation for Language Models") define their metrics
on per-token log-probabilities, generated answers and membership-inference scores. Each function
below takes those inputs (``bench.tofu`` and ``bench.muse`` compute them from a model) and says
which definition it follows; where the open-unlearning framework (locuslab/open-unlearning,
``src/evals/metrics/``) computes a definition in a particular way, the docstring says so, and
``scripts/check_benchmark_metrics.py`` checks the two side by side.

- ``normalised_probability``: P(a | q)^(1/|a|), the length-normalised answer probability.
- ``truth_ratio`` and its two aggregates, ``forget_truth_ratio`` and ``utility_truth_ratio``.
- ``option_probability``: a correct answer's share among the answer options.
- ``forget_quality``: the KS-test p-value between two truth-ratio samples.
- ``harmonic_mean``: model utility's aggregate.
- ``rouge_l``: ROUGE-L recall or F1 of a generation against the true answer.
- ``min_k_percent``, ``min_k_plus_plus``: membership scores of one text from its tokens.
- ``membership_auc``, ``privleak``: MUSE's privacy leakage from two AUCs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

from unlearnlm.errors import UnlearnError


def normalised_probability(logprobs: Sequence[float]) -> float:
    """exp(mean_t log P(a_t | q, a_<t)): the answer's probability normalised by its length.

    TOFU's "Probability" of an answer (Maini et al. 2024, section 2.5.1: P(a|q)^(1/|a|));
    open-unlearning's ``evaluate_probability`` computes the same as exp(-mean token loss).
    Example: token log-probabilities log 0.5 and log 0.125 give exp((log 0.5 + log 0.125) / 2)
    = sqrt(0.0625) = 0.25.
    """
    if len(logprobs) == 0:
        raise UnlearnError("an answer with no tokens has no probability; give non-empty answers")
    return math.exp(sum(logprobs) / len(logprobs))


def truth_ratio(correct: Sequence[float], wrong: Sequence[Sequence[float]]) -> float:
    """The truth ratio of one question: wrong answers' probability over the correct one's.

    ``correct``: the token log-probabilities of the correct answer (TOFU: its paraphrase on
    TOFU's own questions, the answer itself on real authors and world facts); ``wrong``: those of
    each perturbed (wrong) answer. Each answer's mean token log-probability L is averaged over the
    wrong answers, so R = exp(mean_j L_wrong_j) / exp(L_correct): the geometric mean of the wrong
    answers' normalised probabilities over the correct one's. This is how TOFU's released code and
    open-unlearning's ``truth_ratio`` compute it (the paper's formula, section 2.5.1, writes the
    arithmetic mean over the wrong answers; docs/tofu-muse.md shows the difference).
    Example: correct tokens log 0.5, log 0.5 (L = log 0.5); wrong answers with L = log 0.25 and
    L = log 0.0625 -> exp((log 0.25 + log 0.0625) / 2) / 0.5 = 0.125 / 0.5 = 0.25.
    """
    if not wrong:
        raise UnlearnError("a truth ratio needs at least one wrong answer; give perturbed answers")
    mean_logprob = [_mean_logprob(w) for w in wrong]
    return math.exp(sum(mean_logprob) / len(mean_logprob) - _mean_logprob(correct))


def _mean_logprob(logprobs: Sequence[float]) -> float:
    return math.log(normalised_probability(logprobs))


def forget_truth_ratio(ratios: Sequence[float]) -> float:
    """mean min(R, 1/R): 1 when wrong and correct answers are equally likely (TOFU's forget-set
    aggregate; open-unlearning's ``closer_to_1_better``, without its 1e-10 guard)."""
    _check_nonempty(ratios, "truth ratios")
    return sum(min(r, 1 / r) for r in ratios) / len(ratios)


def utility_truth_ratio(ratios: Sequence[float]) -> float:
    """mean max(0, 1 - R): high when the correct answer is the likelier (TOFU's aggregate on the
    retain set, real authors and world facts; open-unlearning's ``true_better``)."""
    _check_nonempty(ratios, "truth ratios")
    return sum(max(0.0, 1 - r) for r in ratios) / len(ratios)


def option_probability(correct: Sequence[float], wrong: Sequence[Sequence[float]]) -> float:
    """P_norm(correct) / (P_norm(correct) + sum_j P_norm(wrong_j)), P_norm the normalised
    probability: TOFU's "Probability" on real authors and world facts, where the answer options
    are known (open-unlearning's ``probability_w_options``, without its 1e-10 guard).
    Example: correct 0.5, wrong 0.25 and 0.25 -> 0.5 / 1.0 = 0.5."""
    right = normalised_probability(correct)
    return right / (right + sum(normalised_probability(w) for w in wrong))


def forget_quality(unlearned: Sequence[float], retain: Sequence[float]) -> float:
    """TOFU's forget quality: the p-value of the two-sample Kolmogorov-Smirnov test between the
    unlearned model's and the retain model's truth ratios on the forget set (Maini et al. 2024,
    section 2.5.2; ``scipy.stats.ks_2samp``, two-sided, exact for small samples, as
    open-unlearning's ``ks_test`` calls it). High: the unlearned model cannot be told from one
    never trained on the forget set. The test depends on the ranks only, so R and 1/R (TOFU's
    released code tests the latter) give the same p-value."""
    from scipy.stats import ks_2samp

    _check_nonempty(unlearned, "truth ratios of the unlearned model")
    _check_nonempty(retain, "truth ratios of the retain model")
    return float(ks_2samp(list(unlearned), list(retain)).pvalue)


def harmonic_mean(values: Sequence[float]) -> float:
    """n / sum(1/x): TOFU's model utility over its nine scores (one zero makes it zero, as in
    ``scipy.stats.hmean``, which open-unlearning's ``hm_aggregate`` calls).
    Example: 1, 0.5 and 0.25 -> 3 / (1 + 2 + 4) = 3/7."""
    _check_nonempty(values, "values")
    if any(v < 0 for v in values):
        raise UnlearnError(f"a harmonic mean of negative values ({min(values)}) is undefined")
    if any(v == 0 for v in values):
        return 0.0
    return len(values) / sum(1 / v for v in values)


@functools.lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(generated: str, reference: str, kind: str = "recall") -> float:
    """ROUGE-L (longest common subsequence of words, Porter-stemmed; Lin 2004, ``rouge_score``)
    of ``generated`` against ``reference``: ``recall`` (LCS / reference words, TOFU's ROUGE) or
    ``f1`` (MUSE's VerbMem and KnowMem as open-unlearning scores them).
    Example: reference "the cat sat on the mat", generated "the cat on a mat": LCS "the cat on
    mat" = 4 words; recall 4/6, precision 4/5, F1 2 * (4/6 * 4/5) / (4/6 + 4/5) = 8/11."""
    if kind not in ("recall", "f1"):
        raise UnlearnError(f"ROUGE-L kind must be recall or f1, not '{kind}'")
    score = _rouge_scorer().score(reference, generated)["rougeL"]
    return float(score.recall if kind == "recall" else score.fmeasure)


def _lowest_mean(values: torch.Tensor, k: float) -> float:
    """Mean of the max(1, floor(k * n)) lowest values."""
    if not 0 < k <= 1:
        raise UnlearnError(f"k is {k}; give a fraction in (0, 1]")
    if values.numel() == 0:
        raise UnlearnError("a membership score needs at least one scored token")
    count = max(1, int(values.numel() * k))
    return float(values.sort().values[:count].mean())


def min_k_percent(logits: torch.Tensor, targets: torch.Tensor, k: float = 0.4) -> float:
    """Min-K% Prob (Shi et al. 2024, "Detecting Pretraining Data from Large Language Models"):
    the mean of the lowest k fraction of log P(x_t | x_<t). ``logits`` (T, V) predict ``targets``
    (T,). Higher: more likely a member. open-unlearning's ``MinKProbAttack`` returns its
    negative; MUSE uses k = 0.4 (open-unlearning's default for it)."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return _lowest_mean(logprobs.gather(-1, targets[:, None]).squeeze(-1), k)


def min_k_plus_plus(logits: torch.Tensor, targets: torch.Tensor, k: float = 0.4) -> float:
    """Min-K%++ (Zhang et al. 2024, "Min-K%++: Improved Baseline for Detecting Pre-Training Data
    from Large Language Models"): each token's log-probability standardised by the model's
    next-token distribution, z_t = (log p(x_t) - mu_t) / sigma_t with mu_t = E_v[log p(v)] and
    sigma_t^2 = E_v[(log p(v))^2] - mu_t^2 (v ~ p), then the mean of the lowest k fraction.
    Higher: more likely a member. As in open-unlearning's ``MinKPlusPlusAttack``, sigma_t^2 is
    floored at 1e-6 (a one-hot distribution) and the sign is flipped there.
    Example: two tokens, V = 2, p = (0.5, 0.5) at both: sigma = 0, floored, z = 0 for both."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # (T, V), float32: T may be 2,048
    probs = logprobs.exp()
    mu = (probs * logprobs).sum(-1)
    sigma = ((probs * logprobs.square()).sum(-1) - mu.square()).clamp(min=1e-6).sqrt()
    token = logprobs.gather(-1, targets[:, None]).squeeze(-1)
    return _lowest_mean((token - mu) / sigma, k)


def membership_auc(members: Sequence[float], nonmembers: Sequence[float]) -> float:
    """ROC AUC of telling members from non-members by a score that is higher for members:
    P(member score > non-member score) + P(tie) / 2 (Mann-Whitney). 1: every forget text scores
    above every holdout text. open-unlearning's ``mia_auc`` gives the same number (its scores
    are negated and its labels swapped).
    Example: members (3, 1), non-members (2, 0): pairs won 3 of 4 -> 0.75."""
    _check_nonempty(members, "member scores")
    _check_nonempty(nonmembers, "non-member scores")
    wins = sum(1.0 if m > n else 0.5 if m == n else 0.0 for m in members for n in nonmembers)
    return wins / (len(members) * len(nonmembers))


def privleak(auc_unlearned: float, auc_retain: float) -> float:
    """MUSE's PrivLeak in percent: (AUC_u - AUC_r) / AUC_r x 100 with MUSE's AUC, which is 1 minus
    ``membership_auc`` (MUSE scores a text by its loss-like Min-K% value and counts the holdout
    as positive; open-unlearning's ``privleak`` converts the same way). Near 0: the unlearned
    model leaks as much as the retain model; -100: the forget set is told apart perfectly.
    NaN when the retain model itself tells them apart perfectly (MUSE's denominator is 0).
    Example: membership AUCs 0.9 (unlearned) and 0.6 (retain) -> (0.1 - 0.4) / 0.4 = -75 %."""
    unlearned, retain = 1 - auc_unlearned, 1 - auc_retain
    if retain == 0:
        return math.nan
    return (unlearned - retain) / retain * 100


def _check_nonempty(values: Sequence[float], what: str) -> None:
    if len(values) == 0:
        raise UnlearnError(f"no {what} to aggregate; score at least one question")
