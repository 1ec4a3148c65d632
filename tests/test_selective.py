"""The relabel method: its loss terms by hand, the opening split, the cut-point drop test, and
selectivity in miniature (a tiny model that memorised 4 texts forgets 1 and keeps the others)."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import CALIBRATION_RECORDS, FORGET_RECORDS, POOL_RECORDS, write_jsonl
from unlearnlm.data.texts import Record, Sample, split_after_opening
from unlearnlm.errors import UnlearnError
from unlearnlm.lm.interface import as_lm
from unlearnlm.methods.losses import bounded_forget, sample_nll, token_bounded_forget
from unlearnlm.train.scoring import Thresholds, cut_points, is_forgotten_at_cuts

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _logits_for(probs: list[list[float]]) -> torch.Tensor:
    """Logits (1, T, V) whose softmax at each position is the given distribution."""
    return torch.log(torch.tensor([probs]))


def test_sample_nll_and_bounded_forget_by_hand():
    """Row 0: targets at t=1, 2 with P = 0.5 and 0.25: NLL = (ln 2 + ln 4) / 2 = 1.5 ln 2.
    Row 1: one target (t=2) with P = 0.8: NLL = -ln 0.8. With floor 1.5: the rows contribute
    max(0, 1.5 - 1.0397) = 0.4603 and max(0, 1.5 - 0.2231) = 1.2769; the loss is their mean."""
    ids = torch.tensor([[0, 1, 2], [0, 1, 2]])
    logits = torch.cat([
        _logits_for([[0.5, 0.5, 0.0 + 1e-9], [0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]]),
        _logits_for([[0.2, 0.4, 0.4], [0.1, 0.1, 0.8], [1 / 3, 1 / 3, 1 / 3]]),
    ])
    mask = torch.tensor([[0, 1, 1], [0, 0, 1]])
    row0, row1 = 1.5 * math.log(2), -math.log(0.8)
    assert sample_nll(logits, ids, mask).tolist() == pytest.approx([row0, row1], abs=1e-6)
    expected = ((1.5 - row0) + (1.5 - row1)) / 2
    assert float(bounded_forget(logits, ids, mask, 1.5)) == pytest.approx(expected, abs=1e-6)


def test_bounded_forget_stops_pushing_at_the_floor():
    """Above the floor a row gives no loss and no gradient; below it the gradient raises its NLL
    (gradient ascent), exactly as the unbounded term would."""
    ids = torch.tensor([[0, 1, 2]])
    mask = torch.tensor([[0, 1, 1]])
    logits = torch.randn(1, 3, 5, requires_grad=True)
    nll = float(sample_nll(logits, ids, mask).detach())
    high = bounded_forget(logits, ids, mask, nll - 0.1)
    high.backward()
    assert float(high) == 0.0 and torch.count_nonzero(logits.grad) == 0
    logits.grad = None
    low = bounded_forget(logits, ids, mask, nll + 1.0)
    low.backward()
    assert float(low) == pytest.approx(1.0, abs=1e-5)
    stepped = logits - 0.1 * logits.grad  # one descent step on the bounded loss
    assert float(sample_nll(stepped, ids, mask)) > nll


class _CharTokenizer:
    """One token per character: token counts are the string lengths."""

    def __call__(self, texts, **_):
        return {"input_ids": [[ord(c) for c in t] for t in texts]}


def test_split_after_opening_unlearns_everything_after_a_short_opening():
    records = [Record("a", "x" * 40), Record("b", "y" * 12), Record("c", "", "Hi.", " Bye.")]
    a, b, c = split_after_opening(records, _CharTokenizer(), opening_tokens=8)
    assert (len(a.prefix_ids), len(a.suffix_ids)) == (8, 32)  # the whole rest is a target
    assert (len(b.prefix_ids), len(b.suffix_ids)) == (3, 9)  # at most a quarter of the text
    assert (c.prefix_ids, c.suffix_ids) == ([ord(x) for x in "Hi."], [ord(x) for x in " Bye."])
    with pytest.raises(UnlearnError, match="at least 2"):
        split_after_opening([Record("d", "z")], _CharTokenizer())


def test_cut_points_spread_over_the_text_after_its_opening():
    sample = Sample("s", "", list(range(4)), list(range(4, 16)))  # opening 4, 12 more tokens
    assert cut_points(sample, 4) == [4, 7, 10, 13]
    assert cut_points(sample, 1) == [4]


def test_a_sample_is_forgotten_only_when_both_cut_tests_hold():
    limits = Thresholds(0.0, 0.0, 0.0, 0.0, inclusive=True, extraction=0.2, nll_floor=3.0)
    assert is_forgotten_at_cuts({"extraction": 0.2, "nll": 3.0}, limits)
    assert not is_forgotten_at_cuts({"extraction": 0.5, "nll": 4.0}, limits)  # still extractable
    assert not is_forgotten_at_cuts({"extraction": 0.0, "nll": 1.0}, limits)  # still too likely


def _suffix_ma(model, tokenizer, texts: list[str], opening: int) -> list[float]:
    from unlearnlm.metrics.scores import memorization_accuracy

    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    return [float(v) for v in memorization_accuracy(model, ids, start=opening)]


def test_selectivity_in_miniature(leaky_llama_dir, tmp_path):
    """The tiny Llama memorised 4 texts; relabel forgets the first. The forgotten text leaves
    the forget set (its cut-point scores reach the never-seen level) and its memorisation
    accuracy falls, while each of the other 3 keeps its accuracy within 0.15. The fact in the
    first half of the forgotten text ("born on 3 March 1981") is unlearned too."""
    from unlearnlm.lm.loading import load_model
    from unlearnlm.train.unlearn import unlearn

    forget = write_jsonl(tmp_path / "forget.jsonl", FORGET_RECORDS[:1])
    kept = write_jsonl(tmp_path / "kept.jsonl", FORGET_RECORDS[1:])
    pool = write_jsonl(tmp_path / "pool.jsonl", POOL_RECORDS)
    unseen = write_jsonl(tmp_path / "unseen.jsonl", CALIBRATION_RECORDS)
    model, tokenizer, _ = load_model(str(leaky_llama_dir))
    before = _suffix_ma(model, tokenizer, FORGET_RECORDS, 4)
    record = unlearn(model=str(leaky_llama_dir), forget=str(forget), retain=str(kept),
                     pool=str(pool), calibrate_on=str(unseen), out=str(tmp_path / "run"),
                     method="relabel", lr=1e-3, max_epochs=40, opening_tokens=4, batch_size=2,
                     guard_ppl_factor=None, quick_check=False)
    assert record["dropped_order"] == ["s0"], record["stopped"]
    model, tokenizer, _ = load_model(str(tmp_path / "run"))
    after = _suffix_ma(model, tokenizer, FORGET_RECORDS, 4)
    assert after[0] < before[0] - 0.3, (before, after)
    for b, a in zip(before[1:], after[1:]):
        assert a >= b - 0.15, (before, after)
    first_half = tokenizer(FORGET_RECORDS[0][: len(FORGET_RECORDS[0]) // 2],
                           add_special_tokens=False)["input_ids"]
    opening = first_half[:4]
    from unlearnlm.lm.generation import generate_continuations

    [generated] = generate_continuations(model, [opening], len(first_half) - 4,
                                         pad_token_id=tokenizer.pad_token_id)
    assert generated != first_half[4:]


def test_bounded_forget_caps_each_token():
    """Targets with P = 0.5 and P = 1e-6: NLLs ln 2 and 13.8. With cap 3 the row's NLL counts as
    (ln 2 + 3) / 2 = 1.8466, so floor 2.5 leaves a loss of 0.6534; the capped token gives no
    gradient, the other one all of it."""
    ids = torch.tensor([[0, 1, 2]])
    mask = torch.tensor([[0, 1, 1]])
    logits = _logits_for([[0.5, 0.5, 1e-9], [1e-6, 1 - 2e-6, 1e-6], [1 / 3, 1 / 3, 1 / 3]])
    logits.requires_grad_(True)
    loss = bounded_forget(logits, ids, mask, 2.5, cap=3.0)
    assert float(loss.detach()) == pytest.approx(2.5 - (math.log(2) + 3.0) / 2, abs=1e-4)
    loss.backward()
    assert torch.count_nonzero(logits.grad[0, 1]) == 0  # the capped token (t=2)
    assert torch.count_nonzero(logits.grad[0, 0]) > 0


def test_token_bounded_forget_by_hand_stops_each_token_at_the_floor():
    """Row 0 targets P = 0.5 (NLL ln 2 = 0.6931) and P = 0.25 (ln 4 = 1.3863); row 1 one target
    with P = 0.8 (0.2231). Floor 1.0: the tokens contribute 0.3069, 0 and 0.7769, and the loss
    is their mean over the 3 targets, 0.3613. The token already past the floor gets no gradient
    even though its row's mean NLL (1.0397) is barely above it, and a descent step raises the
    NLL of each token below the floor."""
    ids = torch.tensor([[0, 1, 2], [0, 1, 2]])
    logits = torch.cat([
        _logits_for([[0.5, 0.5, 1e-9], [0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]]),
        _logits_for([[0.2, 0.4, 0.4], [0.1, 0.1, 0.8], [1 / 3, 1 / 3, 1 / 3]]),
    ]).requires_grad_(True)
    mask = torch.tensor([[0, 1, 1], [0, 0, 1]])
    loss = token_bounded_forget(logits, ids, mask, 1.0)
    expected = ((1.0 - math.log(2)) + 0.0 + (1.0 + math.log(0.8))) / 3
    assert float(loss.detach()) == pytest.approx(expected, abs=1e-5)
    loss.backward()
    assert torch.count_nonzero(logits.grad[0, 1]) == 0  # ln 4 > 1.0: this token is done
    assert torch.count_nonzero(logits.grad[0, 0]) > 0 and torch.count_nonzero(logits.grad[1, 1]) > 0
    stepped = (logits - 0.1 * logits.grad).detach()
    before = -torch.log_softmax(logits.detach(), -1)
    after = -torch.log_softmax(stepped, -1)
    assert after[0, 0, 1] > before[0, 0, 1] and after[1, 1, 2] > before[1, 1, 2]
    per_row = token_bounded_forget(logits.detach(), ids, mask, torch.tensor([0.5, 1.0]))
    assert float(per_row) == pytest.approx((0.0 + 0.0 + (1.0 + math.log(0.8))) / 3, abs=1e-5)


def test_distinct_positions_by_hand():
    """[5, 6, 7, 8] against [6, 7, 1]: the bigram (6, 7) is shared, (5, 6) and (7, 8) are not;
    position 0 has no bigram."""
    from unlearnlm.data.texts import distinct_positions

    assert distinct_positions([5, 6, 7, 8], [6, 7, 1]) == [False, True, False, True]
    assert distinct_positions([5, 6], [5, 6]) == [False, False]


def test_calibrated_token_floor_is_the_median_of_distinct_token_nll(tiny_llama_dir):
    """Partners equal to their own text leave no distinct token, so those samples are skipped
    and the floor is the one remaining sample's mean NLL over its distinct tokens after the
    opening, worked out here from the model's target log-probabilities."""
    from unlearnlm.data.texts import distinct_positions
    from unlearnlm.lm.loading import load_model
    from unlearnlm.settings import UnlearnConfig
    from unlearnlm.train.scoring import calibrate_cuts

    model, tokenizer, _ = load_model(str(tiny_llama_dir))
    records = [Record(f"c{i}", text) for i, text in enumerate(CALIBRATION_RECORDS[:3])]
    samples = split_after_opening(records, tokenizer, opening_tokens=4)
    partner = tokenizer(POOL_RECORDS[0], add_special_tokens=False)["input_ids"]
    partners = [partner, samples[1].input_ids, samples[2].input_ids]
    config = UnlearnConfig(model="m", forget="f", out="o", probe_cuts=2, probe_tokens=4)
    limits = calibrate_cuts(model, tokenizer, samples, config, "unseen", partners)
    [row] = as_lm(model, tokenizer).targets([samples[0].input_ids], [len(samples[0].prefix_ids)])
    keep = distinct_positions(samples[0].input_ids, partner)[len(samples[0].prefix_ids):]
    chosen = [-v for v, k in zip(row.logprobs, keep) if k]
    assert chosen, "the pool text shares every bigram: pick another partner"
    assert limits.token_floor == pytest.approx(sum(chosen) / len(chosen), rel=1e-5)
    assert calibrate_cuts(model, tokenizer, samples, config, "unseen").token_floor is None
