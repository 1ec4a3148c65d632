"""Greedy continuations from many start positions of known sequences, from their own caches.

The exact shortcut of ``metrics.scores.extraction_likelihood`` needs, for some (sample, start t)
jobs, the greedy continuation of x_<t up to the end of the sample. One teacher-forced pass over
each sequence already holds the keys and values of every prefix x_<t, so the prefix is never run
again: each job starts from its row of that cache (left-padded to the longest prefix of its
batch, positions continuing at t) and its first token is the teacher-forced argmax at t - 1.
Models that expose no per-layer key/value tensors fall back to ``generate`` on the prefixes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from unlearnlm.data.batches import right_padded_batches
from unlearnlm.lm.generation import evaluation_mode, model_device

Job = tuple[int, int]  # (sequence index, start position t)
Generate = Callable[[list[list[int]], int, int], list[list[int]]]  # prefixes, tokens, batch


def greedy_to_the_end(
    model,
    sequences: list[list[int]],
    predictions: list[list[int]],
    jobs: list[Job],
    generate: Generate,
    batch_size: int,
) -> dict[Job, list[int]]:
    """Greedy continuation of ``sequences[i][:t]`` for ``len(sequences[i]) - t`` tokens, per job
    (i, t); ``predictions[i][t - 1]`` is the teacher-forced argmax at t - 1. Sequences go in
    groups of 32, to bound the memory their caches take; ``generate`` is the fallback."""
    device = model_device(model)
    results: dict[Job, list[int]] = {}
    group = 32
    with evaluation_mode(model), torch.inference_mode():
        for first in range(0, len(sequences), group):
            members = range(first, min(first + group, len(sequences)))
            mine = [(i - first, t) for i, t in jobs if i in members]
            if not mine:
                continue
            part = [sequences[i] for i in members]
            caches = _prefix_caches(model, part, device)
            if caches is None:
                done = generate_jobs(part, mine, generate, batch_size)
            else:
                mine.sort(key=lambda job: (len(part[job[0]]) - job[1], job[1]), reverse=True)
                done = _from_caches(model, part, predictions[first:], mine, caches, batch_size,
                                    device)
            results.update({(i + first, t): out for (i, t), out in done.items()})
    return results


def generate_jobs(
    sequences: list[list[int]], jobs: list[Job], generate: Generate, batch_size: int
) -> dict[Job, list[int]]:
    """The same continuations by re-reading the prefixes: batches of jobs that need similar
    lengths (the longest needed in a batch is generated, then each is cut)."""
    jobs = sorted(jobs, key=lambda job: len(sequences[job[0]]) - job[1], reverse=True)
    results: dict[Job, list[int]] = {}
    for first in range(0, len(jobs), batch_size):
        chunk = jobs[first : first + batch_size]
        wanted = [len(sequences[i]) - t for i, t in chunk]
        outputs = generate([sequences[i][:t] for i, t in chunk], max(wanted), batch_size)
        for job, size, output in zip(chunk, wanted, outputs, strict=True):
            results[job] = output[:size]
    return results


def _prefix_caches(model, sequences: list[list[int]], device) -> list[tuple] | None:
    """Keys and values of every position of every sequence, one teacher-forced pass per batch:
    per layer (keys, values), each (N, kv_heads, T_max, head_dim); None when the model gives no
    per-layer key/value tensors."""
    layers: list[tuple[list, list]] | None = None
    longest, order = max(len(s) for s in sequences), []
    for chunk, input_ids, mask in right_padded_batches(sequences, 16, device):
        output = model(input_ids=input_ids, attention_mask=mask, use_cache=True)
        cache = getattr(output.past_key_values, "layers", None)
        if not cache or getattr(cache[0], "keys", None) is None:
            return None
        if layers is None:
            layers = [([], []) for _ in cache]
        pad = longest - input_ids.shape[1]
        for (keys, values), layer in zip(layers, cache, strict=True):
            keys.append(F.pad(layer.keys, (0, 0, 0, pad)))
            values.append(F.pad(layer.values, (0, 0, 0, pad)))
        order += chunk
    back = torch.tensor(order, device=device).argsort()  # batched in length order: restore
    return [(torch.cat(k)[back], torch.cat(v)[back]) for k, v in layers]


def _from_caches(
    model, sequences, predictions, jobs, caches, batch_size: int, device
) -> dict[Job, list[int]]:
    """Greedy continuations of the jobs from the sequences' own key/value caches."""
    from transformers import DynamicCache

    results: dict[Job, list[int]] = {}
    for first in range(0, len(jobs), batch_size):
        chunk = jobs[first : first + batch_size]
        wanted = [len(sequences[i]) - t for i, t in chunk]
        width = max(t for _, t in chunk)
        cache = DynamicCache()
        for index, (keys, values) in enumerate(caches):
            shape = (len(chunk), keys.shape[1], width, keys.shape[3])
            k_rows, v_rows = keys.new_zeros(shape), values.new_zeros(shape)
            for r, (i, t) in enumerate(chunk):
                k_rows[r, :, width - t :] = keys[i, :, :t]
                v_rows[r, :, width - t :] = values[i, :, :t]
            cache.update(k_rows, v_rows, index)
        mask = torch.zeros(len(chunk), width, dtype=torch.long, device=device)
        for r, (_, t) in enumerate(chunk):
            mask[r, width - t :] = 1
        token = torch.tensor([[predictions[i][t - 1]] for i, t in chunk], device=device)
        position = torch.tensor([[t] for _, t in chunk], device=device)
        steps = [token]
        for _ in range(max(wanted) - 1):
            mask = torch.cat([mask, mask.new_ones(len(chunk), 1)], dim=1)
            logits = model(input_ids=token, attention_mask=mask, position_ids=position,
                           past_key_values=cache, use_cache=True).logits
            token = logits[:, -1:].argmax(dim=-1)
            position = position + 1
            steps.append(token)
        generated = torch.cat(steps, dim=1).tolist()
        for job, size, output in zip(chunk, wanted, generated, strict=True):
            results[job] = output[:size]
    return results
