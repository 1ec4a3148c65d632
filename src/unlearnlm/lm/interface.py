"""One interface to a causal language model, used by every metric, the evaluation and the drop test.

An ``LM`` wraps a Hugging Face causal LM and its tokenizer. What the rest of the package asks of
a model goes through it:

- ``logits(input_ids, attention_mask)``: next-token scores (B, L, V) of a right-padded batch,
  position j predicting token j + 1. The one method another kind of model overrides
  (``lm.composite.PromptedLM``, ``lm.composite.EnsembleLM``); scores only need to be
  log-probabilities up to a constant per position.
- ``score(sequences, per_row)``: the one teacher-forced batch loop (padding by
  ``data.batches.right_padded_batches``, ``inference_mode``, the model's train/eval mode restored
  after); ``targets`` (log P(x_t | x_<t) and the argmax, for t from a start) and
  ``next_token_argmax`` are built on it.
- ``generate(prefixes, ...)``: greedy, beam or sampled continuations (``forward_step``: one
  cached step of it, for decoders that combine several models); ``generate_suffixes``:
  the continuation of each sample's prefix that is compared with its suffix; ``greedy_to_the_end``:
  the greedy continuations that extraction likelihood needs, from each sequence's own
  key/value cache (``lm.cached``) where the model allows.
- ``LM.load(spec)`` and ``save(out_dir)`` (``lm.loading``, the one save path).
- ``generation_follows_argmax``: whether greedy generation is the teacher-forced argmax, token by
  token. True for every model that only scores; a model that edits what it generates
  (``lm.composite.FilteredLM``, an output filter) says False, and extraction likelihood then asks
  it for the continuation from every start instead of building them from the argmax.

Metrics take either an ``LM`` or a raw model; ``as_lm`` wraps the latter at the entry point.
``lm.lora.with_lora`` returns a plain ``LM`` around a LoRA-adapted model: nothing else differs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from unlearnlm.data.batches import right_padded_batches
from unlearnlm.data.texts import Sample
from unlearnlm.errors import UnlearnError
from unlearnlm.lm import cached
from unlearnlm.lm.generation import (
    context_limit,
    evaluation_mode,
    generate_continuations,
    model_device,
)
from unlearnlm.lm.loading import load_model, save_model

RowScorer = Callable[[int, torch.Tensor, torch.Tensor], Any]


@dataclass(frozen=True)
class Targets:
    """Teacher-forced scores of one sequence's target tokens x_t, t = start..T-1."""

    logprobs: list[float]  # log P(x_t | x_<t)
    predicted: list[int]  # argmax_v P(v | x_<t)


class LM:
    """A Hugging Face causal LM and its tokenizer behind one interface (module docstring)."""

    generation_follows_argmax = True

    def __init__(self, model, tokenizer=None, *, pad_token_id: int | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        if pad_token_id is None:
            pad_token_id = getattr(tokenizer, "pad_token_id", None)
        self.pad_token_id = 0 if pad_token_id is None else int(pad_token_id)

    @classmethod
    def load(
        cls,
        spec: str,
        *,
        dtype: torch.dtype = torch.float32,
        trust_pickle: bool = False,
        trust_remote_code: bool = False,
    ) -> LM:
        """Load a model by its ``--model`` spec (``lm.loading.resolve_model``)."""
        model, tokenizer, _ = load_model(spec, dtype=dtype, trust_pickle=trust_pickle,
                                         trust_remote_code=trust_remote_code)
        return cls(model, tokenizer)

    def save(self, out_dir: str | Path, records: dict[str, dict] | None = None, *,
             merge: bool = True) -> Path:
        """Save weights, tokenizer and ``records`` atomically (``lm.loading.save_model``); a
        LoRA-adapted model with ``merge=False`` as its adapter alone."""
        if self.tokenizer is None:
            raise UnlearnError("saving a model needs its tokenizer; build the LM with one")
        return save_model(self.model, self.tokenizer, out_dir, records, merge=merge)

    # --- properties every kind of model answers ------------------------------------------------

    @property
    def eos_token_id(self) -> int | None:
        return getattr(self.tokenizer, "eos_token_id", None)

    @property
    def device(self) -> torch.device:
        """Where input tensors go."""
        return model_device(self.model)

    def modules(self) -> list[torch.nn.Module]:
        """The torch modules that compute the scores (their train/eval mode is managed here)."""
        return [self.model]

    def context_limit(self, cap: int = 1024) -> int:
        """The longest input this model takes, at most ``cap``."""
        return context_limit(self.model, cap)

    def hf_model(self):
        """The underlying Hugging Face model, for tools that need one (lm-evaluation-harness)."""
        return self.model

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        """Eval mode and no autograd for the block; each module's mode is restored after."""
        with ExitStack() as stack:
            for module in self.modules():
                stack.enter_context(evaluation_mode(module))
            stack.enter_context(torch.inference_mode())
            yield

    # --- teacher-forced scores -----------------------------------------------------------------

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Next-token scores (B, L, V) of a right-padded batch (see the module docstring)."""
        device = self.device
        return self.model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                          use_cache=False).logits

    def score(self, sequences: list[list[int]], per_row: RowScorer, batch_size: int = 8) -> list:
        """``per_row(i, logits, targets)`` for every sequence i, where ``logits`` (T-1, V)
        predict ``targets`` = x_1..x_{T-1}; batched, similar lengths together."""
        results: list = [None] * len(sequences)
        with self.evaluating():
            for chunk, input_ids, mask in right_padded_batches(sequences, batch_size, self.device):
                logits = self.logits(input_ids, mask)  # (B, L, V)
                for row, index in enumerate(chunk):
                    length = len(sequences[index])
                    results[index] = per_row(index, logits[row, : length - 1],
                                             input_ids[row, 1:length])
        return results

    def targets(
        self, sequences: list[list[int]], starts: int | Sequence[int] = 1, batch_size: int = 8
    ) -> list[Targets]:
        """Per sequence: log P(x_t | x_<t) and the argmax for t in [start, T) (start >= 1; one
        start for all or one per sequence); log-probabilities in float32."""
        firsts = _starts(starts, len(sequences))

        def per_row(index: int, logits: torch.Tensor, targets: torch.Tensor) -> Targets:
            scores = logits[firsts[index] - 1 :]
            wanted = targets[firsts[index] - 1 :]
            log_probs = F.log_softmax(scores.float(), dim=-1).gather(-1, wanted[:, None])
            return Targets(log_probs.squeeze(-1).tolist(), scores.argmax(dim=-1).tolist())

        return self.score(sequences, per_row, batch_size)

    def summed_nll(self, sequences: list[list[int]], batch_size: int = 8) -> list[float]:
        """Per sequence: the sum over t in 1..T-1 of -log P(x_t | x_<t), summed per padded batch
        row in float32 (the convention of the published perplexity code; a float64 sum of the
        same terms differs in the fifth significant digit of a perplexity)."""
        totals = [0.0] * len(sequences)
        with self.evaluating():
            for chunk, input_ids, mask in right_padded_batches(sequences, batch_size, self.device):
                logits = self.logits(input_ids, mask)  # (B, L, V)
                nll = F.cross_entropy(  # (B, L-1)
                    logits[:, :-1].float().transpose(1, 2), input_ids[:, 1:], reduction="none")
                sums = (nll * mask[:, 1:]).sum(dim=1).tolist()
                for row, index in enumerate(chunk):
                    totals[index] = sums[row]
        return totals

    def next_token_argmax(
        self, sequences: list[list[int]], batch_size: int = 16
    ) -> list[list[int]]:
        """Teacher-forced greedy predictions: ``out[i][t - 1] = argmax P(. | x_<t)``, t = 1..T-1."""
        return self.score(sequences, lambda _, logits, __: logits.argmax(dim=-1).tolist(),
                          batch_size)

    def next_logprobs(self, sequences: list[list[int]]) -> torch.Tensor:
        """log P(. | sequence) after each whole sequence, (B, V) in float32, one batch."""
        ends = torch.tensor([len(s) - 1 for s in sequences])
        with self.evaluating():
            [(chunk, input_ids, mask)] = list(
                right_padded_batches(sequences, len(sequences), self.device))
            logits = self.logits(input_ids, mask)  # (B, L, V)
            order = torch.tensor(chunk)
            last = logits[torch.arange(len(chunk)), ends[order].to(logits.device)]
            out = torch.empty_like(last, dtype=torch.float32)
            out[order.to(logits.device)] = F.log_softmax(last.float(), dim=-1)
        return out

    def forward_step(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, past: Any = None
    ) -> tuple[torch.Tensor, Any]:
        """One step of incremental decoding: next-token scores (B, V) after each row of a
        left-padded batch and the key/value cache to pass back with the next step's tokens
        (``attention_mask`` always covers every token so far). Positions count from each row's
        first real token, as Hugging Face's ``generate`` counts them."""
        device = self.device
        attention_mask = attention_mask.to(device)
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, -input_ids.shape[1] :]
        out = self.model(input_ids=input_ids.to(device), attention_mask=attention_mask,
                         position_ids=positions, past_key_values=past, use_cache=True)
        return out.logits[:, -1], out.past_key_values

    # --- generation ----------------------------------------------------------------------------

    def generate(
        self,
        prefixes: list[list[int]],
        max_new_tokens: int,
        *,
        eos_token_id: int | None = None,
        num_beams: int = 1,
        temperature: float | None = None,
        seed: int | None = None,
        batch_size: int = 32,
    ) -> list[list[int]]:
        """New tokens after each prefix: greedy, beam search (``num_beams`` > 1) or sampled at
        ``temperature`` (seeded by ``seed``); each ends before the first ``eos_token_id``."""
        return generate_continuations(
            self.model, prefixes, max_new_tokens, pad_token_id=self.pad_token_id,
            eos_token_id=eos_token_id, num_beams=num_beams, temperature=temperature, seed=seed,
            batch_size=batch_size,
        )

    def generate_suffixes(self, samples: Sequence[Sample], num_beams: int = 1) -> list[list[int]]:
        """From each sample's prefix, as many tokens as its true suffix has, ending before the
        first eos: the generation that both the drop test and the evaluation's BLEU, BERTScore
        and entropy compare with the true suffix. Greedy, or beam search with ``num_beams``."""
        if not samples:
            return []
        longest = max(len(s.suffix_ids) for s in samples)
        outputs = self.generate([s.prefix_ids for s in samples], longest,
                                eos_token_id=self.eos_token_id, num_beams=num_beams)
        return [out[: len(s.suffix_ids)] for out, s in zip(outputs, samples, strict=True)]

    def greedy_to_the_end(
        self,
        sequences: list[list[int]],
        predictions: list[list[int]],
        jobs: list[tuple[int, int]],
        batch_size: int,
    ) -> dict[tuple[int, int], list[int]]:
        """Per job (i, t): the greedy continuation of ``sequences[i][:t]`` to the sequence's
        length; ``predictions`` from ``next_token_argmax``. Uses the sequences' own key/value
        caches where the model exposes them (``lm.cached``)."""
        return cached.greedy_to_the_end(self.model, sequences, predictions, jobs,
                                        self._greedy_batch, batch_size)

    def _greedy_batch(
        self, prefixes: list[list[int]], max_new_tokens: int, batch_size: int
    ) -> list[list[int]]:
        return self.generate(prefixes, max_new_tokens, batch_size=batch_size)


def _starts(starts: int | Sequence[int], count: int) -> list[int]:
    firsts = [starts] * count if isinstance(starts, int) else list(starts)
    if len(firsts) != count:
        raise UnlearnError(f"{len(firsts)} starts for {count} sequences; give one each")
    if any(s < 1 for s in firsts):
        raise UnlearnError(f"a start is {min(firsts)}; give starts >= 1 (x_0 has no context)")
    return firsts


def as_lm(model, tokenizer=None, *, pad_token_id: int | None = None) -> LM:
    """``model`` itself when it already is an ``LM``, else a plain ``LM`` around it."""
    if isinstance(model, LM):
        return model
    return LM(model, tokenizer, pad_token_id=pad_token_id)
