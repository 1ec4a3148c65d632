"""Generation one token at a time from any next-token distribution: greedy, sampled, beam.

Hugging Face's ``generate`` runs only a single ``PreTrainedModel``; a model built from several
(``lm.composite.EnsembleLM``) decodes here instead. ``next_logprobs(sequences)`` gives, for each
token list, log P(. | that list) as a (B, V) tensor; every step re-reads the whole sequence (no
key/value cache), which is slow for long outputs but the same for any model.

- Greedy: the argmax at every step, so it agrees with the teacher-forced argmax (what the exact
  shortcut of ``metrics.scores.extraction_likelihood`` relies on).
- Sampled: from softmax(log P / temperature), with a private generator seeded by ``seed``.
- Beam: ``num_beams`` live hypotheses ranked by summed log-probability; at the end the best of
  the finished and live ones by summed log-probability per generated token (Hugging Face's
  default length penalty of 1), running to ``max_new_tokens`` without an early stop.

As in ``lm.generation``, a continuation ends before the first ``eos_token_id`` (dropped).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from unlearnlm.lm.generation import check_arguments

NextLogprobs = Callable[[list[list[int]]], torch.Tensor]


def stepwise_generate(
    next_logprobs: NextLogprobs,
    prefixes: list[list[int]],
    max_new_tokens: int,
    *,
    eos_token_id: int | None = None,
    num_beams: int = 1,
    temperature: float | None = None,
    seed: int | None = None,
    batch_size: int = 32,
) -> list[list[int]]:
    """The new tokens after each prefix, in the order given (see the module docstring)."""
    check_arguments(prefixes, max_new_tokens, num_beams, batch_size, temperature)
    if num_beams > 1:
        return [_beam_search(next_logprobs, list(p), max_new_tokens, num_beams, eos_token_id)
                for p in prefixes]
    generator = None
    if temperature is not None:
        generator = torch.Generator()
        if seed is None:
            generator.seed()  # a fresh random seed; the global random state is left alone
        else:
            generator.manual_seed(seed)
    results: list[list[int]] = []
    for first in range(0, len(prefixes), batch_size):
        chunk = [list(p) for p in prefixes[first : first + batch_size]]
        results += _decode_batch(next_logprobs, chunk, max_new_tokens, eos_token_id,
                                 temperature, generator)
    return results


def _decode_batch(
    next_logprobs: NextLogprobs,
    prefixes: list[list[int]],
    max_new_tokens: int,
    eos_token_id: int | None,
    temperature: float | None,
    generator: torch.Generator | None,
) -> list[list[int]]:
    """Greedy (``temperature`` None) or sampled continuations of one batch of prefixes."""
    new: list[list[int]] = [[] for _ in prefixes]
    live = list(range(len(prefixes)))
    for _ in range(max_new_tokens):
        if not live:
            break
        log_probs = next_logprobs([prefixes[r] + new[r] for r in live]).float().cpu()  # (B, V)
        if temperature is None:
            tokens = log_probs.argmax(dim=-1).tolist()
        else:
            probs = torch.softmax(log_probs / temperature, dim=-1)
            tokens = torch.multinomial(probs, 1, generator=generator).squeeze(1).tolist()
        still = []
        for row, token in zip(live, tokens, strict=True):
            if token != eos_token_id:
                new[row].append(token)
                still.append(row)
        live = still
    return new


def _beam_search(
    next_logprobs: NextLogprobs,
    prefix: list[int],
    max_new_tokens: int,
    num_beams: int,
    eos_token_id: int | None,
) -> list[int]:
    """The best continuation of one prefix by beam search (see the module docstring)."""
    live: list[tuple[list[int], float]] = [([], 0.0)]
    finished: list[tuple[list[int], float, int]] = []  # tokens, summed log-prob, length
    for _ in range(max_new_tokens):
        log_probs = next_logprobs([prefix + tokens for tokens, _ in live]).float().cpu()
        totals = torch.tensor([score for _, score in live])[:, None] + log_probs  # (beams, V)
        vocab = totals.shape[1]
        values, flat = totals.flatten().topk(min(2 * num_beams, totals.numel()))
        following: list[tuple[list[int], float]] = []
        for value, index in zip(values.tolist(), flat.tolist(), strict=True):
            beam, token = divmod(index, vocab)
            tokens = live[beam][0]
            if token == eos_token_id:
                finished.append((tokens, value, len(tokens) + 1))  # the eos counts as generated
            else:
                following.append((tokens + [token], value))
            if len(following) == num_beams:
                break
        live = following
        if not live:
            break
    candidates = finished + [(tokens, score, len(tokens)) for tokens, score in live]
    best = max(candidates, key=lambda c: c[1] / max(c[2], 1))
    return best[0]
