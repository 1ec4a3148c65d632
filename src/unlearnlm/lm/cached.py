"""Key/value caches reused instead of re-reading tokens: the EL shortcut and a fixed prompt's cache.

The exact shortcut of ``metrics.scores.extraction_likelihood`` needs, for some (sample, start t)
jobs, the greedy continuation of x_<t up to the end of the sample. One teacher-forced pass over
each sequence already holds the keys and values of every prefix x_<t, so the prefix is never run
again: each job starts from its row of that cache (left-padded to the longest prefix of its
batch, positions continuing at t) and its first token is the teacher-forced argmax at t - 1.
Models that expose no per-layer key/value tensors fall back to ``generate`` on the prefixes.

A fixed prompt before every input (``lm.composite.PromptedLM``) is read once: ``prompt_cache``
keeps its keys and values, and every later pass runs only the input tokens after them, positions
continuing at P (the prompt's length). ``greedy_to_the_end`` and ``continue_after_prompt`` then
lay each row out as a plain left-padded batch of prompt + input would be, pads first, so that a
model whose attention depends on where tokens sit in the cache (GPT-Neo's local layers) sees the
same thing as when the prompt is re-read.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from unlearnlm.data.batches import right_padded_batches
from unlearnlm.lm.generation import _cut_at_eos, evaluation_mode, model_device, seeded

Job = tuple[int, int]  # (sequence index, start position t)
Generate = Callable[[list[list[int]], int, int], list[list[int]]]  # prefixes, tokens, batch
KeyValues = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values), (N, heads, T, d)


def greedy_to_the_end(
    model,
    sequences: list[list[int]],
    predictions: list[list[int]],
    jobs: list[Job],
    generate: Generate,
    batch_size: int,
    prompt: KeyValues | None = None,
) -> dict[Job, list[int]]:
    """Greedy continuation of ``sequences[i][:t]`` for ``len(sequences[i]) - t`` tokens, per job
    (i, t); ``predictions[i][t - 1]`` is the teacher-forced argmax at t - 1. Sequences go in
    groups of 32, to bound the memory their caches take; ``generate`` is the fallback. With a
    ``prompt`` cache (``prompt_cache``), every sequence is read after that prompt and only the
    sequences' own keys are kept per group; each job's row is prompt + x_<t."""
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
            caches = _prefix_caches(model, part, device, prompt)
            if caches is None:
                done = generate_jobs(part, mine, generate, batch_size)
            else:
                mine.sort(key=lambda job: (len(part[job[0]]) - job[1], job[1]), reverse=True)
                done = _from_caches(model, part, predictions[first:], mine, caches, batch_size,
                                    device, prompt)
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


def _layers(cache) -> list | None:
    """The per-layer entries of a Hugging Face cache when each holds its full keys and values
    (a plain ``DynamicLayer``; not a sliding window that drops old positions), else None."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer or getattr(layer, "keys", None) is None
                         for layer in layers):
        return None
    return list(layers)


def prompt_cache(model, prompt: list[int], device) -> KeyValues | None:
    """The keys and values of ``prompt`` read once, per layer (1, kv_heads, P, head_dim); None
    when the model's cache is not full per-layer tensors (then the prompt is re-read)."""
    ids = torch.tensor([prompt], dtype=torch.long, device=device)
    output = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
    layers = _layers(output.past_key_values)
    if layers is None or layers[0].keys.shape[-2] != len(prompt):
        return None
    return [(layer.keys, layer.values) for layer in layers]


def expanded(prompt: KeyValues, rows: int):
    """A fresh ``DynamicCache`` holding the prompt's keys and values for ``rows`` rows (a
    forward pass grows a cache in place, so every pass gets its own)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    for index, (keys, values) in enumerate(prompt):
        cache.update(keys.expand(rows, -1, -1, -1), values.expand(rows, -1, -1, -1), index)
    return cache


def after_prompt(model, prompt: KeyValues, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """One forward pass over a right-padded batch read after the cached prompt: position j of a
    row is position P + j, the prompt fully visible. Returns the model's output (its cache holds
    prompt + input)."""
    rows, length = input_ids.shape
    size = prompt[0][0].shape[-2]
    mask = torch.cat([attention_mask.new_ones(rows, size), attention_mask], dim=1)
    positions = torch.arange(size, size + length, device=input_ids.device).expand(rows, -1)
    return model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                 past_key_values=expanded(prompt, rows), use_cache=True)


def _prefix_caches(model, sequences: list[list[int]], device,
                   prompt: KeyValues | None = None) -> list[tuple] | None:
    """Keys and values of every position of every sequence, one teacher-forced pass per batch
    (after the ``prompt`` cache when given; its positions are not kept): per layer (keys,
    values), each (N, kv_heads, T_max, head_dim); None when the model gives no per-layer
    key/value tensors."""
    layers: list[tuple[list, list]] | None = None
    longest, order = max(len(s) for s in sequences), []
    skip = 0 if prompt is None else prompt[0][0].shape[-2]
    for chunk, input_ids, mask in right_padded_batches(sequences, 16, device):
        if prompt is None:
            output = model(input_ids=input_ids, attention_mask=mask, use_cache=True)
        else:
            output = after_prompt(model, prompt, input_ids, mask)
        cache = _layers(output.past_key_values)
        if cache is None:
            return None
        if layers is None:
            layers = [([], []) for _ in cache]
        pad = longest - input_ids.shape[1]
        for (keys, values), layer in zip(layers, cache, strict=True):
            keys.append(F.pad(layer.keys[:, :, skip:], (0, 0, 0, pad)))
            values.append(F.pad(layer.values[:, :, skip:], (0, 0, 0, pad)))
        order += chunk
    back = torch.tensor(order, device=device).argsort()  # batched in length order: restore
    return [(torch.cat(k)[back], torch.cat(v)[back]) for k, v in layers]


def _from_caches(
    model, sequences, predictions, jobs, caches, batch_size: int, device,
    prompt: KeyValues | None = None,
) -> dict[Job, list[int]]:
    """Greedy continuations of the jobs from the sequences' own key/value caches (each row
    [pads, prompt, x_<t] when a ``prompt`` cache is given)."""
    from transformers import DynamicCache

    before = 0 if prompt is None else prompt[0][0].shape[-2]
    results: dict[Job, list[int]] = {}
    for first in range(0, len(jobs), batch_size):
        chunk = jobs[first : first + batch_size]
        wanted = [len(sequences[i]) - t for i, t in chunk]
        width = before + max(t for _, t in chunk)
        cache = DynamicCache()
        for index, (keys, values) in enumerate(caches):
            shape = (len(chunk), keys.shape[1], width, keys.shape[3])
            k_rows, v_rows = keys.new_zeros(shape), values.new_zeros(shape)
            for r, (i, t) in enumerate(chunk):
                k_rows[r, :, width - t :] = keys[i, :, :t]
                v_rows[r, :, width - t :] = values[i, :, :t]
                if prompt is not None:
                    k_rows[r, :, width - t - before : width - t] = prompt[index][0][0]
                    v_rows[r, :, width - t - before : width - t] = prompt[index][1][0]
            cache.update(k_rows, v_rows, index)
        mask = torch.zeros(len(chunk), width, dtype=torch.long, device=device)
        for r, (_, t) in enumerate(chunk):
            mask[r, width - t - before :] = 1
        token = torch.tensor([[predictions[i][t - 1]] for i, t in chunk], device=device)
        position = torch.tensor([[before + t] for _, t in chunk], device=device)
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


def continue_after_prompt(
    model,
    prompt: KeyValues,
    prefixes: list[list[int]],
    max_new_tokens: int,
    *,
    pad_token_id: int,
    eos_token_id: int | None = None,
    temperature: float | None = None,
    seed: int | None = None,
    batch_size: int = 32,
) -> list[list[int]]:
    """Greedy or sampled continuations of prompt + prefix for every prefix, the prompt read from
    its cache: the same tokens ``generation.generate_continuations`` gives on prompt + prefix
    (plain argmax; sampling from the whole distribution divided by ``temperature``, seeded by
    ``seed``, batches and random draws in the same order), each ending before the first
    ``eos_token_id``. Arguments are checked by the caller; the model is in eval mode with no
    autograd.

    Per batch, the prefixes are read right-padded after the prompt in one pass; each row's keys
    and values (prompt + prefix) are then moved to the right end of the cache, pads first, as a
    left-padded batch of prompt + prefix would hold them, and decoding goes on one token a step
    with positions continuing after each row's prefix."""
    from transformers import DynamicCache

    if max_new_tokens == 0:
        return [[] for _ in prefixes]
    device = model_device(model)
    size = prompt[0][0].shape[-2]
    order = sorted(range(len(prefixes)), key=lambda i: len(prefixes[i]))
    results: list[list[int]] = [[] for _ in prefixes]
    with seeded(seed, device):
        for first in range(0, len(order), batch_size):
            batch = order[first : first + batch_size]
            [(inner, input_ids, mask)] = list(right_padded_batches(
                [prefixes[i] for i in batch], len(batch), device))
            chunk = [batch[k] for k in inner]
            lengths = mask.sum(dim=1)
            output = after_prompt(model, prompt, input_ids, mask)
            rows = torch.arange(len(chunk), device=device)
            scores = output.logits[rows, lengths - 1].float()
            width = size + input_ids.shape[1]
            shifts = (input_ids.shape[1] - lengths).tolist()
            read, cache = _layers(output.past_key_values) or [], DynamicCache()
            del output  # its logits and cache are not needed past this point
            for index, layer in enumerate(read):
                keys = torch.stack([k.roll(s, dims=1) for k, s in zip(layer.keys, shifts)])
                values = torch.stack([v.roll(s, dims=1) for v, s in zip(layer.values, shifts)])
                layer.keys = layer.values = None  # one layer's copy at a time in memory
                cache.update(keys, values, index)
            del read
            ends = torch.arange(width, device=device)[None, :]
            mask = (ends >= (width - size - lengths)[:, None]).long()
            position = (size + lengths)[:, None]
            steps, done = [], torch.zeros(len(chunk), dtype=torch.bool, device=device)
            for step in range(max_new_tokens):
                if temperature is None:
                    token = scores.argmax(dim=-1)
                else:
                    probs = torch.softmax(scores / temperature, dim=-1)
                    token = torch.multinomial(probs, num_samples=1).squeeze(1)
                token = torch.where(done, torch.full_like(token, pad_token_id), token)
                steps.append(token)
                if eos_token_id is not None:
                    done |= token == eos_token_id
                if bool(done.all()) or step == max_new_tokens - 1:
                    break
                mask = torch.cat([mask, mask.new_ones(len(chunk), 1)], dim=1)
                scores = model(input_ids=token[:, None], attention_mask=mask,
                               position_ids=position, past_key_values=cache,
                               use_cache=True).logits[:, -1].float()
                position = position + 1
            generated = torch.stack(steps, dim=1).tolist()
            for index, tokens in zip(chunk, generated, strict=True):
                results[index] = _cut_at_eos(tokens, eos_token_id)
    return results
