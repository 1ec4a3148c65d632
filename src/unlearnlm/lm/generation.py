"""Batched generation from token-id prefixes through a Hugging Face model's own ``generate``.

``generate_continuations`` takes prefixes of any lengths, left-pads them into batches (shortest
first, to waste little on padding), runs plain greedy search, beam search or sampling at a given
temperature through the model's own ``generate`` and hands back only the new tokens of each
prefix, in the order given. ``lm.interface.LM.generate`` calls it for a plain model; models that
``generate`` cannot run (an ensemble) decode step by step in ``lm.stepwise``.

Greedy here means argmax at every step and nothing else: a model's saved generation settings
(sampling, repetition penalties, banned n-grams) are switched off explicitly, because the exact
shortcut of ``metrics.scores.extraction_likelihood`` relies on greedy being the teacher-forced
argmax. ``context_limit`` gives the longest input a model takes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from tqdm.auto import tqdm

from unlearnlm.data.batches import left_padded
from unlearnlm.errors import UnlearnError

# Settings a model's own generation_config may carry that would make "greedy" differ from argmax.
_PLAIN_SEARCH = {
    "do_sample": False,
    "min_new_tokens": 0,
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "temperature": None,
    "top_k": None,
    "top_p": None,
    "return_dict_in_generate": False,
}


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (where its inputs must go)."""
    return next(model.parameters()).device


@contextmanager
def evaluation_mode(model: torch.nn.Module) -> Iterator[None]:
    """Put the model in eval mode for the block, then restore its previous train/eval mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Run the block with the global torch random state seeded by ``seed`` (nothing when None),
    restoring the previous state after, so sampling is reproducible and leaves no trace."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _cut_at_eos(tokens: list[int], eos_token_id: int | None) -> list[int]:
    """The tokens before the first ``eos_token_id`` (all of them when there is none)."""
    if eos_token_id is not None and eos_token_id in tokens:
        return tokens[: tokens.index(eos_token_id)]
    return tokens


def check_arguments(
    prefixes: list[list[int]],
    max_new_tokens: int,
    num_beams: int,
    batch_size: int,
    temperature: float | None = None,
) -> None:
    """One-line errors for generation arguments that cannot work."""
    if temperature is not None and not temperature > 0:
        raise UnlearnError(f"temperature is {temperature}; give a number > 0 to sample")
    if temperature is not None and num_beams > 1:
        raise UnlearnError("sampling runs with num_beams=1; give a temperature or beams, not both")
    if max_new_tokens < 0:
        raise UnlearnError(f"max_new_tokens is {max_new_tokens}; give 0 or more")
    if num_beams < 1:
        raise UnlearnError(f"num_beams is {num_beams}; give 1 (greedy) or more (beam search)")
    if batch_size < 1:
        raise UnlearnError(f"batch_size is {batch_size}; give 1 or more")
    empty = [i for i, prefix in enumerate(prefixes) if len(prefix) == 0]
    if empty:
        raise UnlearnError(
            f"prefix {empty[0]} is empty ({len(empty)} empty in all); generation needs at least "
            "one token of context per prefix"
        )


def generate_continuations(
    model,
    prefixes: list[list[int]],
    max_new_tokens: int,
    *,
    pad_token_id: int,
    eos_token_id: int | None = None,
    num_beams: int = 1,
    temperature: float | None = None,
    seed: int | None = None,
    batch_size: int = 32,
    progress: bool = False,
) -> list[list[int]]:
    """Generate up to ``max_new_tokens`` after each prefix; return only the new tokens.

    Greedy when ``num_beams == 1``, beam search otherwise; with a ``temperature``, sampling from
    the whole next-token distribution divided by it (no top-k, no top-p), seeded by ``seed``
    without touching the global random state. Each continuation ends before the first
    ``eos_token_id`` (the eos itself is dropped); with ``eos_token_id=None`` nothing stops
    generation early, so every continuation has exactly ``max_new_tokens`` tokens. The result is
    in the order of ``prefixes``. The model's train/eval mode is restored after.
    """
    check_arguments(prefixes, max_new_tokens, num_beams, batch_size, temperature)
    if max_new_tokens == 0:
        return [[] for _ in prefixes]
    order = sorted(range(len(prefixes)), key=lambda i: len(prefixes[i]))
    results: list[list[int]] = [[] for _ in prefixes]
    settings = dict(
        _PLAIN_SEARCH,
        max_new_tokens=max_new_tokens,
        num_beams=num_beams,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
    )
    if temperature is not None:
        settings.update(do_sample=True, temperature=temperature)
    device = model_device(model)
    starts = range(0, len(order), batch_size)
    with evaluation_mode(model), torch.inference_mode(), seeded(seed, device):
        for first in tqdm(starts, desc="generating", unit="batch", disable=not progress):
            chunk = order[first : first + batch_size]
            batch = [prefixes[i] for i in chunk]
            input_ids, attention_mask = left_padded(batch, pad_token_id, device)  # (B, L)
            output = model.generate(input_ids=input_ids, attention_mask=attention_mask, **settings)
            new_tokens = output[:, input_ids.shape[1] :].tolist()  # (B, <= max_new_tokens)
            for index, tokens in zip(chunk, new_tokens, strict=True):
                results[index] = _cut_at_eos(tokens, eos_token_id)
    return results


def context_limit(model, cap: int = 1024) -> int:
    """The longest input the model takes (its position limit), at most ``cap``."""
    config = model.config
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", 0)
    return min(int(limit), cap) if limit else cap
