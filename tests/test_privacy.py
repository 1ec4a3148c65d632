"""Membership inference: AUC and Min-K%++ by hand, a leaky model vs unseen text, the verdict."""

from __future__ import annotations

import math
import zlib

import pytest
import torch

from conftest import CALIBRATION_RECORDS, FORGET_RECORDS, POOL_RECORDS
from unlearnlm.data.texts import Record, Sample, split_records
from unlearnlm.errors import UnlearnError
from unlearnlm.evaluate.privacy import (
    SIGNALS,
    auc,
    forgetting_verdict,
    lowest_k_mean,
    membership_audit,
    membership_scores,
    percentile_of,
    token_scores_from_logits,
)


def _records(texts: list[str]) -> list[Record]:
    return [Record(str(i), text) for i, text in enumerate(texts)]


def test_auc_by_hand():
    """Pairs (3,1) (3,2) (2,1) win, (2,2) ties: (3 + 0.5) / 4 = 0.875."""
    assert auc([3, 2], [1, 2]) == 0.875
    assert auc([3, 2], [1, 2], higher_is_member=False) == 0.125  # lower = member: (0 + .5) / 4
    assert auc([1, 1], [1, 1]) == 0.5  # all ties
    assert auc([5, 6], [1, 2, 3]) == 1.0 and auc([1], [5]) == 0.0
    with pytest.raises(UnlearnError):
        auc([], [1.0])


def test_lowest_k_mean_by_hand():
    """int(5 * 0.4) = 2 smallest of [5, 1, 3, 2, 4] -> (1 + 2) / 2; k=0.1 still keeps one."""
    assert lowest_k_mean([5, 1, 3, 2, 4], 0.4) == 1.5
    assert lowest_k_mean([5, 1, 3, 2, 4], 0.1) == 1.0
    with pytest.raises(UnlearnError):
        lowest_k_mean([1.0], 0.0)


def test_min_k_plus_plus_by_hand():
    """p = (1/2, 1/4, 1/4): log p = (-L, -2L, -2L) with L = ln 2, so mu = -1.5 L,
    E[(log p)^2] = 2.5 L^2, sigma = sqrt(2.5 - 2.25) L = 0.5 L. Target 0: (-L + 1.5 L) / 0.5 L = 1;
    target 1 or 2: (-2L + 1.5L) / 0.5 L = -1."""
    row = torch.log(torch.tensor([0.5, 0.25, 0.25])) + 3.0  # a shift changes nothing
    logits = torch.stack([row, row, row])
    log_probs, normalised = token_scores_from_logits(logits, torch.tensor([0, 1, 2]))
    assert log_probs == pytest.approx([-math.log(2), -2 * math.log(2), -2 * math.log(2)], abs=1e-6)
    assert normalised == pytest.approx([1.0, -1.0, -1.0], abs=1e-5)
    assert lowest_k_mean(normalised, 0.2) == pytest.approx(-1.0, abs=1e-5)  # max(1, int(0.6))


class _DigitTokenizer:
    """Token a decodes to the digit a, tokens joined by spaces."""

    @staticmethod
    def decode(ids, skip_special_tokens=True):
        return " ".join(str(i) for i in ids)


def test_zlib_score_is_mean_nll_over_zlib_entropy_by_hand():
    """Carlini et al. 2021 / MIMIR / open-unlearning: log-perplexity over zlib entropy.

    The lookup model gives P = 1/2 to a + 1 (mod 8) after a and 1/14 to the others.
    [1, 2, 3, 4, 7, 0] predicts 2, 3, 4 and 0 right, 7 wrong (5 after 4): mean NLL =
    (4 ln 2 + ln 14) / 5 = 1.08233. The text "1 2 3 4 7 0" compresses to 19 bytes with zlib, so
    zlib = 1.08233 / 19 = 0.056965 (summing the NLL instead, the former definition, gave 5 times
    that)."""
    from test_generation import lookup_model

    sample = Sample("a", "", [1, 2, 3], [4, 7, 0])
    scores = membership_scores(lookup_model(), _DigitTokenizer(), [sample])
    mean_nll = (4 * math.log(2) + math.log(14)) / 5
    assert len(zlib.compress(b"1 2 3 4 7 0")) == 19
    assert scores["loss"] == pytest.approx([mean_nll], rel=1e-5)
    assert scores["zlib"] == pytest.approx([mean_nll / 19], rel=1e-5)
    assert scores["zlib"][0] == pytest.approx(0.056965, abs=1e-6)


def test_leaky_model_is_caught(leaky_llama_dir):
    """The tiny Llama memorised FORGET_RECORDS; fresh records of the same style are non-members."""
    from unlearnlm.lm.loading import load_model

    model, tokenizer, _ = load_model(str(leaky_llama_dir))
    members = split_records(_records(FORGET_RECORDS), tokenizer, 4, None)
    others = split_records(_records(POOL_RECORDS + CALIBRATION_RECORDS), tokenizer, 4, None)
    audit = membership_audit(model, tokenizer, members, others)
    assert set(audit["auc"]) == set(SIGNALS)
    assert audit["auc"]["loss"] >= 0.9, audit["auc"]
    assert audit["auc"]["min_k"] >= 0.9, audit["auc"]
    assert audit["auc"]["min_k_plus_plus"] >= 0.75, audit["auc"]
    assert len(audit["members"]) == 4 and len(audit["nonmembers"]) == 8
    assert all(row["loss"] > 0 for row in audit["members"] + audit["nonmembers"])


def test_unseen_text_scores_near_chance(tiny_gptneo_dir):
    """Two halves of one list of WikiText sentences, both unseen by a random model: AUC ~ 0.5."""
    from unlearnlm.data.eval_sets import corpus_texts
    from unlearnlm.lm.loading import load_model

    model, tokenizer, _ = load_model(str(tiny_gptneo_dir))
    sentences = [s.strip() + " ." for doc in corpus_texts("wikitext", 30)
                 for s in doc.split(" . ") if 60 < len(s.strip()) < 300][:60]
    samples = split_records(_records(sentences), tokenizer, 4, None)
    audit = membership_audit(model, tokenizer, samples[0::2], samples[1::2])
    for name, value in audit["auc"].items():
        assert abs(value - 0.5) <= 0.2, (name, audit["auc"])


def test_percentile_and_verdict_by_hand():
    """Non-member EL (0.1, 0.2, 0.3), median 0.2: sample 0 (EL 0.1, MA 0.4 <= 0.5) is forgotten,
    sample 1 (EL 0.3 > 0.2) is not, sample 2 (0.2, 0.5: both at the median) is."""
    assert percentile_of(0.2, [0.1, 0.2, 0.3]) == pytest.approx(50.0)
    assert percentile_of(0.0, [0.1, 0.2]) == 0.0 and percentile_of(1.0, [0.1, 0.2]) == 100.0
    nonmember = {"el": [0.1, 0.2, 0.3], "ma": [0.4, 0.5, 0.6]}
    forget = {"el": [0.1, 0.3, 0.2], "ma": [0.4, 0.4, 0.5]}
    verdict = forgetting_verdict(forget, nonmember, {"loss": 0.55})
    assert [row["forgotten"] for row in verdict["samples"]] == [True, False, True]
    assert verdict["share_forgotten"] == pytest.approx(2 / 3)
    assert verdict["forgotten"] and "never saw" in verdict["summary"]
    assert verdict["samples"][1]["el"]["percentile"] == pytest.approx(5 / 6 * 100)
    assert not forgetting_verdict(forget, nonmember, {"loss": 0.9})["forgotten"]  # AUC too high
    assert not forgetting_verdict({"el": [0.3], "ma": [0.4]}, nonmember)["forgotten"]
    with pytest.raises(UnlearnError):
        forgetting_verdict({"x": [1.0]}, {"x": [1.0]})
