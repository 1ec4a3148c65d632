"""Zero-shot downstream scoring: multiple choice by log-likelihood, LAMBADA, dialogue F1.

- Multiple choice (``choice_accuracy``): each choice is scored by the SUM of the log-probs of its
  continuation tokens given its context, log P(continuation | context); the prediction is the
  highest sum (``acc``). ``acc_norm`` divides each sum by the choice's length in characters
  first, without the one space that joins it to the context: lm-evaluation-harness's definition
  (Gao et al. 2021), checked against it in tests/test_harness.py.
- LAMBADA (Paperno et al. 2016, ``lambada_accuracy``): right when greedy decoding after the
  passage reproduces every token of its last word, read from one teacher-forced pass.
- Dialogue (``dialogue_f1``): unigram F1 of a greedy reply against the gold reply after
  ParlAI-style normalisation (Miller et al. 2017): lowercase, strip punctuation and the articles
  a/an/the, collapse whitespace.

Context and continuation are tokenized separately (no special tokens) and joined; a sequence
longer than ``max_tokens`` loses tokens from the start of its context. ``model`` is an
``lm.interface.LM`` or a Hugging Face model; scores come from ``LM.targets``, replies from
``LM.generate``.
"""

from __future__ import annotations

import re
import string
from collections import Counter

from unlearnlm.data.eval_sets import ChoiceItem
from unlearnlm.lm.interface import as_lm
from unlearnlm.metrics.scores import mean


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _joined(context: list[int], continuation: list[int], max_tokens: int) -> list[int]:
    """Context + continuation, the context cut from the left to fit ``max_tokens`` (keeping at
    least one context token, and the continuation's last tokens if even that is too long)."""
    room = max(max_tokens - len(continuation), 1)
    return (context[-room:] + continuation)[-max(max_tokens, len(continuation) + 1):]


def continuation_scores(
    model, tokenizer, pairs: list[tuple[str, str]], max_tokens: int = 1024, batch_size: int = 8
) -> list[tuple[float, bool]]:
    """Per (context, continuation): (sum of log P(continuation tokens | everything before),
    whether every continuation token is the teacher-forced argmax, i.e. greedy decoding)."""
    contexts = _encode(tokenizer, [c for c, _ in pairs])
    continuations = _encode(tokenizer, [c for _, c in pairs])
    sequences = [_joined(c or [tokenizer.eos_token_id], k, max_tokens)
                 for c, k in zip(contexts, continuations, strict=True)]
    starts = [len(s) - len(k) for s, k in zip(sequences, continuations, strict=True)]
    scored = as_lm(model, tokenizer).targets(sequences, starts, batch_size)
    return [(float(sum(row.logprobs)), row.predicted == sequence[start:])
            for row, sequence, start in zip(scored, sequences, starts, strict=True)]


def pick_choice(log_likelihoods: list[float], lengths: list[int] | None = None) -> int:
    """Index of the best choice: highest log-likelihood, or highest per unit of ``lengths``.
    Ties go to the first."""
    values = log_likelihoods if lengths is None else [
        ll / max(n, 1) for ll, n in zip(log_likelihoods, lengths, strict=True)
    ]
    return max(range(len(values)), key=lambda i: (values[i], -i))


def choice_length(continuation: str) -> int:
    """The length ``acc_norm`` divides by: characters of the choice, less its joining space."""
    return len(continuation[1:] if continuation.startswith(" ") else continuation)


def choice_accuracy(
    model, tokenizer, items: list[ChoiceItem], max_tokens: int = 1024, batch_size: int = 8
) -> dict:
    """Zero-shot multiple-choice accuracy (``acc`` and ``acc_norm``, see the module docstring)."""
    pairs = [(ctx, cont) for item in items
             for ctx, cont in zip(item.contexts, item.continuations, strict=True)]
    scores = iter(continuation_scores(model, tokenizer, pairs, max_tokens, batch_size))
    rows = []
    for item in items:
        lls = [next(scores)[0] for _ in item.continuations]
        sizes = [choice_length(c) for c in item.continuations]
        rows.append({"id": item.id, "answer": item.answer, "log_likelihoods": lls,
                     "prediction": pick_choice(lls), "prediction_norm": pick_choice(lls, sizes)})
    acc = [float(r["prediction"] == r["answer"]) for r in rows]
    acc_norm = [float(r["prediction_norm"] == r["answer"]) for r in rows]
    return {"aggregate": {"acc": mean(acc), "acc_norm": mean(acc_norm), "n": len(rows)},
            "samples": rows}


def lambada_accuracy(
    model, tokenizer, items: list[tuple[str, str]], max_tokens: int = 1024, batch_size: int = 8
) -> dict:
    """LAMBADA last-word accuracy (greedy) and the mean log-likelihood of the last word."""
    scores = continuation_scores(model, tokenizer, items, max_tokens, batch_size)
    rows = [{"target": target, "log_likelihood": ll, "correct": greedy}
            for (_, target), (ll, greedy) in zip(items, scores, strict=True)]
    return {"aggregate": {"acc": mean([float(r["correct"]) for r in rows]),
                          "log_likelihood": mean([r["log_likelihood"] for r in rows]),
                          "n": len(rows)},
            "samples": rows}


# --- dialogue ------------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """ParlAI's normalisation: lowercase, drop punctuation and a/an/the, collapse whitespace."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def unigram_f1(prediction: str, gold: str) -> float:
    """Unigram F1 of two texts after ``normalize_answer`` (0.0 when they share no word)."""
    predicted, wanted = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = sum((Counter(predicted) & Counter(wanted)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(wanted)
    return 2 * precision * recall / (precision + recall)


def dialogue_f1(
    model,
    tokenizer,
    items: list[tuple[list[str], str]],
    max_new_tokens: int = 32,
    max_tokens: int = 1024,
    batch_size: int = 8,
) -> dict:
    """Prompt: the earlier turns, each followed by a newline; reply: greedy, up to
    ``max_new_tokens`` tokens, cut at its first newline; score: ``unigram_f1`` vs the last turn."""
    prompts = _encode(tokenizer, ["".join(t.strip() + "\n" for t in turns) for turns, _ in items])
    room = max(max_tokens - max_new_tokens, 1)
    outputs = as_lm(model, tokenizer).generate(
        [p[-room:] or [tokenizer.eos_token_id] for p in prompts], max_new_tokens,
        eos_token_id=tokenizer.eos_token_id, batch_size=batch_size,
    )
    rows = []
    for (_, gold), output in zip(items, outputs, strict=True):
        reply = tokenizer.decode(output, skip_special_tokens=True).strip().split("\n")[0]
        rows.append({"reply": reply, "gold": gold, "f1": unigram_f1(reply, gold)})
    return {"aggregate": {"f1": mean([r["f1"] for r in rows]), "n": len(rows)}, "samples": rows}
