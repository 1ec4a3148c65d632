"""Scoring forget samples between epochs: the IUR drop test, the stop test, and calibration.

After each epoch ICU generates from every active sample's prefix and compares the generation with
the true suffix (sentence BLEU and BERTScore-F1). A sample whose scores fall under the thresholds
("and" by default, as the paper writes; "or" as the official code does) counts as forgotten and
leaves the forget set. Thresholds are the paper's, or calibrated: the model's own scores on texts
of the same kind it never saw, so "forgotten" means "scores like text the model never saw".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from unlearnlm.data.texts import Sample, distinct_positions
from unlearnlm.lm.interface import as_lm
from unlearnlm.metrics.scores import (
    bertscore_f1,
    bleu_scores,
    continuation_nll,
    extraction_likelihood,
    ngram_overlap,
    whole_text_memorization_accuracy,
)

log = logging.getLogger(__name__)


@dataclass
class Thresholds:
    """Where a sample or the whole forget set counts as forgotten, with where each came from."""

    bleu: float
    bertscore: float
    el: float
    ma: float
    source: str = "settings"
    # calibrated thresholds are met at equality: a forgotten sample scores no higher than the
    # median never-seen text, and that median is often exactly 0 for BLEU-4 and EL_10, where a
    # strict "<" could never hold; the paper's fixed thresholds keep its strict "<"
    inclusive: bool = False
    # the cut-point test of methods that cut a text after its opening (relabel): a sample is
    # forgotten once its greedy continuations overlap the truth no more than ``extraction`` and
    # its true continuation's NLL (nats/token) is at least ``nll_floor``
    extraction: float | None = None
    nll_floor: float | None = None
    nll_cap: float | None = None
    # the per-token bound of ``forget_token_bounded`` with distinct targets: the median over
    # never-seen texts of the mean NLL of their distinct tokens (see ``calibrate_cuts``)
    token_floor: float | None = None

    def as_dict(self) -> dict:
        return {
            "bleu": self.bleu,
            "bertscore": self.bertscore,
            "el": self.el,
            "ma": self.ma,
            "source": self.source,
            "inclusive": self.inclusive,
            "extraction": self.extraction,
            "nll_floor": self.nll_floor,
            "nll_cap": self.nll_cap,
            "token_floor": self.token_floor,
        }

    def under(self, value: float, name: str) -> bool:
        """Whether ``value`` is under the threshold ``name`` (at or under, when inclusive)."""
        limit = getattr(self, name)
        return value <= limit if self.inclusive else value < limit

    @property
    def sign(self) -> str:
        return "<=" if self.inclusive else "<"


def generate_suffixes(model, tokenizer, samples: list[Sample], config) -> list[list[int]]:
    """Generate as many tokens as each sample's true suffix has, from its prefix."""
    num_beams = config.num_beams if config.decoding == "beam" else 1
    return as_lm(model, tokenizer).generate_suffixes(samples, num_beams)


def generation_scores(model, tokenizer, samples: list[Sample], config) -> list[dict]:
    """Per sample: BLEU and BERTScore-F1 of the generated vs. the true suffix."""
    if not samples:
        return []
    generations = generate_suffixes(model, tokenizer, samples, config)
    candidates = [tokenizer.decode(g, skip_special_tokens=True) for g in generations]
    references = [tokenizer.decode(s.suffix_ids, skip_special_tokens=True) for s in samples]
    bleu = bleu_scores(candidates, references)
    bert = bertscore_f1(
        candidates, references, model_dir=config.scorer_model, num_layers=config.scorer_layers
    )
    return [
        {"bleu": float(b), "bertscore": float(f), "generation": c}
        for b, f, c in zip(bleu, bert, candidates)
    ]


def memorisation_scores(
    model, samples: list[Sample], pad_token_id: int, el_n: int, with_el: bool = True
) -> dict:
    """Per sample the whole-text MA (every position, prefix included) and, when asked, EL_n
    (start positions over the suffix): what the stop test and its calibration compare."""
    ma = whole_text_memorization_accuracy(model, samples) if samples else []
    el = el_scores(model, samples, pad_token_id, el_n) if with_el else [None] * len(samples)
    return {"ma": [float(v) for v in ma], "el": el}


def el_scores(model, samples: list[Sample], pad_token_id: int, el_n: int) -> list[float]:
    """Per sample EL_n over its suffix start positions, all samples in shared batches."""
    if not samples:
        return []
    values = extraction_likelihood(model, [s.input_ids for s in samples],
                                   [len(s.prefix_ids) for s in samples], n=el_n,
                                   pad_token_id=pad_token_id)
    return [float(v) for v in values]


def is_forgotten(scores: dict, thresholds: Thresholds, rule: str) -> bool:
    """The IUR drop test: BLEU < b and/or BERTScore-F1 < a (<= for calibrated thresholds)."""
    low_bleu = thresholds.under(scores["bleu"], "bleu")
    low_bert = thresholds.under(scores["bertscore"], "bertscore")
    return (low_bleu and low_bert) if rule == "and" else (low_bleu or low_bert)


def cut_points(sample: Sample, cuts: int) -> list[int]:
    """Up to ``cuts`` distinct positions spread evenly from the end of the sample's opening
    (prefix) over its continuation: the prompts an attacker could start from."""
    start, end = len(sample.prefix_ids), len(sample.input_ids)
    return sorted({start + (end - start) * k // cuts for k in range(cuts)})


def cut_probe_scores(model, tokenizer, samples: list[Sample], config) -> list[dict]:
    """Per sample: greedy continuations from ``config.probe_cuts`` cut points, each compared
    with the true text that follows the cut by n-gram overlap (``config.probe_n``), and the
    teacher-forced NLL of the true continuation after the opening.

    ``extraction`` is the largest overlap over the cuts: a text counts as extractable when any
    later part of it comes back from an earlier part. All cuts of all samples share batches."""
    if not samples:
        return []
    jobs = [(i, cut) for i, s in enumerate(samples) for cut in cut_points(s, config.probe_cuts)]
    lm = as_lm(model, tokenizer)
    generations = lm.generate([samples[i].input_ids[:cut] for i, cut in jobs],
                              config.probe_tokens, eos_token_id=lm.eos_token_id)
    overlaps: list[list[float]] = [[] for _ in samples]
    for (i, cut), generated in zip(jobs, generations):
        truth = samples[i].input_ids[cut : cut + config.probe_tokens]
        overlaps[i].append(ngram_overlap(generated[: len(truth)], truth, config.probe_n))
    nll = continuation_nll(model, [s.input_ids for s in samples],
                           [len(s.prefix_ids) for s in samples])
    return [{"extraction": max(o), "cuts": o, "nll": v} for o, v in zip(overlaps, nll)]


def is_forgotten_at_cuts(scores: dict, thresholds: Thresholds) -> bool:
    """The cut-point drop test: no more extractable than never-seen texts (at or under their
    quantile) and a true continuation at least as unlikely as theirs (the NLL floor)."""
    return (scores["extraction"] <= thresholds.extraction
            and scores["nll"] >= thresholds.nll_floor)


def calibrate_cuts(model, tokenizer, samples: list[Sample], config, path: str,
                   partners: list[list[int]] | None = None) -> Thresholds:
    """Thresholds of the cut-point test from never-seen texts: the ``calibration_quantile`` of
    their largest cut overlap, and the median of their continuation NLL as the floor; and the
    cap of the bounded ascent: the 90th percentile of their single tokens' NLL (no token of a
    forgotten text needs to be less likely than the rarest tenth of a stranger's tokens).

    With ``partners`` (one similar text per sample, token ids), also the per-token floor: the
    median over samples of the mean NLL of the tokens that tell a sample apart from its partner
    (``data.texts.distinct_positions``), i.e. how unlikely a stranger's own details are."""
    q = config.calibration_quantile
    with torch.no_grad():
        scores = cut_probe_scores(model, tokenizer, samples, config)
        tokens = as_lm(model, tokenizer).targets([s.input_ids for s in samples],
                                                 [len(s.prefix_ids) for s in samples])
    token_nll = [-v for row in tokens for v in row.logprobs]
    token_floor = None
    if partners is not None:
        means = []
        for sample, row, partner in zip(samples, tokens, partners, strict=True):
            distinct = distinct_positions(sample.input_ids, partner)[len(sample.prefix_ids):]
            chosen = [-v for v, keep in zip(row.logprobs, distinct, strict=True) if keep]
            if chosen:
                means.append(sum(chosen) / len(chosen))
        token_floor = float(np.median(means)) if means else None
    return Thresholds(
        bleu=config.bleu_threshold, bertscore=config.bertscore_threshold,
        el=config.el_threshold, ma=config.ma_threshold,
        source=(f"calibrated on {len(samples)} texts in {path}: cut-point overlap at quantile "
                f"{q}, NLL floor at their median, token NLL cap at their 90th percentile"),
        inclusive=True,
        extraction=float(np.quantile([s["extraction"] for s in scores], q)),
        nll_floor=float(np.median([s["nll"] for s in scores])),
        nll_cap=float(np.quantile(token_nll, 0.9)),
        token_floor=token_floor,
    )


def calibrate(model, tokenizer, samples: list[Sample], config, path: str) -> Thresholds:
    """Thresholds from the model's own scores on never-seen texts.

    The drop test compares one sample's BLEU and BERTScore with a quantile (default: median) of
    the never-seen texts' scores. The stop test compares the forget set's *mean* EL_n and MA, so
    by default its thresholds are the never-seen texts' means too, as Jang et al. set theirs;
    ``calibration_stop="quantile"`` takes the quantile instead.
    """
    q = config.calibration_quantile
    with torch.no_grad():
        gen = generation_scores(model, tokenizer, samples, config)
        mem = memorisation_scores(model, samples, tokenizer.pad_token_id, config.el_n,
                                  with_el=config.calibrate_el)

    def stop_value(values: list[float]) -> float:
        return float(np.mean(values) if config.calibration_stop == "mean"
                     else np.quantile(values, q))

    stop = "the mean" if config.calibration_stop == "mean" else f"quantile {q}"
    source = (f"calibrated on {len(samples)} texts in {path}: BLEU and BERTScore at quantile "
              f"{q} of the model's scores, EL and MA at {stop}")
    if not config.calibrate_el:
        source += f"; EL threshold {config.el_threshold} from the settings"
    return Thresholds(
        bleu=float(np.quantile([g["bleu"] for g in gen], q)),
        bertscore=float(np.quantile([g["bertscore"] for g in gen], q)),
        el=stop_value(mem["el"]) if config.calibrate_el else config.el_threshold,
        ma=stop_value(mem["ma"]),
        source=source,
        inclusive=True,
    )
