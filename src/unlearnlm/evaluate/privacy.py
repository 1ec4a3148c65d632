"""Membership inference against the forget set, and a plain-words verdict on forgetting.

A membership-inference attack (MIA) scores each text by how "familiar" the model finds it; the
ROC AUC between members (the forget set) and non-members (text of the same kind the model never
saw) says how well that score tells them apart. Before unlearning a leaky model gives an AUC near
1.0; after successful unlearning it should fall to about 0.5 (chance).

Signals, all from one teacher-forced pass per batch (log p_t = log P(x_t | x_<t), t = 1..T-1):

- ``loss``: mean NLL (Yeom et al. 2018). Lower = more likely a member.
- ``zlib``: log-perplexity (the mean NLL, as ``loss``) / zlib entropy of the text (the length in
  bytes of its zlib-compressed UTF-8), as Carlini et al. 2021 ("Extracting Training Data from
  Large Language Models") define it and MIMIR and open-unlearning compute it. Lower = more likely
  a member.
- ``min_k``: mean of the lowest k% of the log p_t, k = 20 (Shi et al. 2024, "Detecting
  Pretraining Data from Large Language Models"). Higher = more likely a member.
- ``min_k_plus_plus``: per token (log p_t - mu_t) / sigma_t, where mu_t and sigma_t are the
  mean and standard deviation of log p(v) for v drawn from the model's own next-token
  distribution at t; then the mean of the lowest k% (Zhang et al. 2024, "Min-K%++").
  Higher = more likely a member.

The lowest k% of n values are the ``max(1, int(n * k))`` smallest.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from unlearnlm.data.texts import Sample
from unlearnlm.errors import UnlearnError
from unlearnlm.lm.interface import as_lm

MIN_K = 0.2
# signal name -> whether a HIGHER score means "more likely a member"
SIGNALS: dict[str, bool] = {"loss": False, "zlib": False, "min_k": True, "min_k_plus_plus": True}
VERDICT_METRICS = ("el", "ma", "bleu", "bertscore")


# --- pure per-token functions ------------------------------------------------------------------


def lowest_k_mean(values: Sequence[float], k: float = MIN_K) -> float:
    """Mean of the ``max(1, int(len(values) * k))`` smallest values."""
    if not 0 < k <= 1:
        raise UnlearnError(f"k is {k}; give a fraction in (0, 1], e.g. 0.2 for 20%")
    if len(values) == 0:
        raise UnlearnError("min-k% needs at least one token log-probability")
    count = max(1, int(len(values) * k))
    return float(sum(sorted(values)[:count]) / count)


def token_scores_from_logits(
    logits: torch.Tensor, targets: torch.Tensor
) -> tuple[list[float], list[float]]:
    """Per position: log p(target) and its Min-K%++ normalisation (Zhang et al. 2024).

    ``logits`` (T, V) predict ``targets`` (T,). mu_t = sum_v p(v) log p(v) and
    sigma_t^2 = sum_v p(v) (log p(v))^2 - mu_t^2, both under p = softmax(logits_t).
    """
    log_probs = F.log_softmax(logits.float(), dim=-1)  # (T, V)
    probs = log_probs.exp()
    target_lp = log_probs.gather(-1, targets[:, None]).squeeze(-1)  # (T,)
    mu = (probs * log_probs).sum(-1)
    second = (probs * log_probs.square()).sum(-1)
    sigma = (second - mu.square()).clamp_min(1e-12).sqrt()
    return target_lp.tolist(), ((target_lp - mu) / sigma).tolist()


def token_scores(
    model, sequences: list[list[int]], batch_size: int = 4
) -> list[tuple[list[float], list[float]]]:
    """``token_scores_from_logits`` for every sequence (at least 2 tokens each), batched by
    ``LM.score``; ``model`` is an ``LM`` or a Hugging Face model."""
    short = [i for i, seq in enumerate(sequences) if len(seq) < 2]
    if short:
        raise UnlearnError(f"membership scores need 2 or more tokens; sequence {short[0]} has less")
    return as_lm(model).score(
        sequences, lambda _, logits, targets: token_scores_from_logits(logits, targets), batch_size
    )


def membership_scores(
    model, tokenizer, samples: list[Sample], k: float = MIN_K
) -> dict[str, list[float]]:
    """The four MIA signals (see the module docstring) for each sample's whole text."""
    per_token = token_scores(model, [s.input_ids for s in samples])
    scores: dict[str, list[float]] = {name: [] for name in SIGNALS}
    for sample, (log_probs, normalised) in zip(samples, per_token, strict=True):
        mean_nll = -sum(log_probs) / len(log_probs)
        text = tokenizer.decode(sample.input_ids, skip_special_tokens=True)
        scores["loss"].append(mean_nll)
        scores["zlib"].append(mean_nll / len(zlib.compress(text.encode("utf-8"))))
        scores["min_k"].append(lowest_k_mean(log_probs, k))
        scores["min_k_plus_plus"].append(lowest_k_mean(normalised, k))
    return scores


# --- AUC -----------------------------------------------------------------------------------------


def auc(
    member_scores: Sequence[float],
    nonmember_scores: Sequence[float],
    higher_is_member: bool = True,
) -> float:
    """ROC AUC by the Mann-Whitney count: the share of (member, non-member) pairs where the member
    looks more like a member, ties counting half. 1.0 = members perfectly separated, 0.5 = chance.
    """
    if not member_scores or not nonmember_scores:
        raise UnlearnError("AUC needs at least one member score and one non-member score")
    sign = 1.0 if higher_is_member else -1.0
    wins = 0.0
    for m in member_scores:
        for n in nonmember_scores:
            diff = sign * (m - n)
            wins += 1.0 if diff > 0 else 0.5 if diff == 0 else 0.0
    return wins / (len(member_scores) * len(nonmember_scores))


def membership_audit(
    model, tokenizer, members: list[Sample], nonmembers: list[Sample], k: float = MIN_K
) -> dict:
    """Per-sample MIA scores for members and non-members and the AUC of each signal."""
    if not members or not nonmembers:
        raise UnlearnError("a membership audit needs forget samples and non-member samples")
    member = membership_scores(model, tokenizer, members, k)
    other = membership_scores(model, tokenizer, nonmembers, k)
    return {
        "auc": {name: auc(member[name], other[name], high) for name, high in SIGNALS.items()},
        "members": _rows(members, member),
        "nonmembers": _rows(nonmembers, other),
        "k": k,
    }


def _rows(samples: list[Sample], scores: dict[str, list[float]]) -> list[dict]:
    return [
        {"id": s.id, **{name: values[i] for name, values in scores.items()}}
        for i, s in enumerate(samples)
    ]


# --- verdict -----------------------------------------------------------------------------------


def percentile_of(value: float, reference: Sequence[float]) -> float:
    """Mid-rank percentile (0..100) of ``value`` among ``reference``: below + half of ties."""
    below = sum(r < value for r in reference)
    equal = sum(r == value for r in reference)
    return 100.0 * (below + 0.5 * equal) / len(reference)


def _quantile(values: Sequence[float], q: float) -> float:
    return float(torch.quantile(torch.tensor(list(values), dtype=torch.float64), q))


def forgetting_verdict(
    forget: dict[str, list[float]],
    nonmember: dict[str, list[float]],
    aucs: dict[str, float] | None = None,
    quantile: float = 0.5,
    majority: float = 0.5,
    auc_band: tuple[float, float] = (0.4, 0.6),
) -> dict:
    """Does the forget set now score like text the model never saw?

    ``forget`` and ``nonmember`` map metric names (EL, MA, BLEU, BERTScore: the keys of
    ``VERDICT_METRICS`` present in both) to per-sample values. The exact rule:

    - a forget sample is **forgotten** when, for every metric, its value is <= the ``quantile``
      (default 0.5, the median; linear interpolation) of that metric over the non-member samples;
      each value's mid-rank percentile among the non-member values is reported with it;
    - the forget set is **forgotten** when more than ``majority`` (default half) of its samples
      are forgotten AND every MIA AUC given lies within ``auc_band`` (default [0.4, 0.6]); with
      no AUCs only the first condition applies.

    Note: with the median, a non-member itself passes each metric half the time, so raise
    ``quantile`` (e.g. 0.9) for a test that unseen text passes most of the time.
    """
    metrics = [m for m in VERDICT_METRICS if m in forget and m in nonmember and nonmember[m]]
    if not metrics:
        raise UnlearnError(f"the verdict needs per-sample values for one of {VERDICT_METRICS}")
    cut = {m: _quantile(nonmember[m], quantile) for m in metrics}
    count = len(forget[metrics[0]])
    samples = []
    for i in range(count):
        row = {m: {"value": forget[m][i], "percentile": percentile_of(forget[m][i], nonmember[m])}
               for m in metrics}
        row["forgotten"] = all(forget[m][i] <= cut[m] for m in metrics)
        samples.append(row)
    share = sum(row["forgotten"] for row in samples) / max(count, 1)
    aucs_ok = all(auc_band[0] <= v <= auc_band[1] for v in (aucs or {}).values())
    forgotten = share > majority and aucs_ok
    summary = ("the forget set now scores like text the model never saw" if forgotten
               else "the forget set still scores unlike text the model never saw")
    return {"forgotten": forgotten, "summary": summary, "share_forgotten": share,
            "thresholds": cut, "quantile": quantile, "aucs_within_band": aucs_ok,
            "auc_band": list(auc_band), "samples": samples}

