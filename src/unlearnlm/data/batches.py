"""Padding token-id sequences into batches: the one home of padding for training and scoring.

``collate`` builds a training batch with a loss mask; ``right_padded_batches`` groups sequences
of similar length for the teacher-forced scores (``lm.interface.LM.score``); ``left_padded``
lines prefixes up at their ends for generation.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from unlearnlm.errors import UnlearnError


def collate(
    sequences: list[list[int]], starts: list[int], pad_token_id: int, device
) -> dict[str, torch.Tensor]:
    """Right-padded batch; ``loss_mask`` marks targets at positions >= start (and >= 1)."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    loss_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, (seq, start) in enumerate(zip(sequences, starts)):
        input_ids[row, : len(seq)] = torch.tensor(seq)
        attention_mask[row, : len(seq)] = 1
        loss_mask[row, max(start, 1) : len(seq)] = 1
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": attention_mask.to(device),
        "loss_mask": loss_mask.to(device),
    }



def right_padded_batches(
    sequences: list[list[int]], batch_size: int, device: torch.device
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """Yield (indices, input_ids, attention_mask), similar lengths together, pads on the right."""
    if batch_size < 1:
        raise UnlearnError(f"batch_size is {batch_size}; give 1 or more")
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    for first in range(0, len(order), batch_size):
        chunk = order[first : first + batch_size]
        width = max(len(sequences[i]) for i in chunk)
        input_ids = torch.zeros((len(chunk), width), dtype=torch.long)
        attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, index in enumerate(chunk):
            tokens = sequences[index]
            input_ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            attention_mask[row, : len(tokens)] = 1
        yield chunk, input_ids.to(device), attention_mask.to(device)


def left_padded(
    prefixes: list[list[int]], pad_token_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack token lists into (B, L) ``input_ids`` and ``attention_mask``, pads on the left."""
    width = max(len(p) for p in prefixes)
    input_ids = torch.full((len(prefixes), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prefixes), width), dtype=torch.long)
    for row, prefix in enumerate(prefixes):
        if prefix:
            input_ids[row, width - len(prefix) :] = torch.tensor(prefix, dtype=torch.long)
            attention_mask[row, width - len(prefix) :] = 1
    return input_ids.to(device), attention_mask.to(device)
