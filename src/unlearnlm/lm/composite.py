"""Models built from others, scored by the same code as a plain ``LM``.

- ``PromptedLM``: a fixed prompt (an instruction, or in-context examples) placed before every
  input. It scores and generates only for the input itself: position j of the input is position
  P + j of prompt + input (P prompt tokens), so its target log-probabilities are the base model's
  log-probabilities of the same tokens after the prompt. A prompted baseline of unlearning ("do
  not reveal ...") is evaluated exactly like a trained model. The prompt is read once: its
  keys and values are cached and every batch, generation and EL job runs only its own tokens
  after them (``PromptedLM`` says when the cache is used and when it is recomputed).
- ``EnsembleLM``: the average of several models' next-token distributions,
  log P(v | x) = log (1/K sum_k P_k(v | x)); no single Hugging Face model computes it, so it
  decodes one token at a time: greedy and sampled decoding keep each member's key/value cache
  (``LM.forward_step``), beam search and members built from other models re-read every
  sequence (``lm.stepwise``).
- ``FilteredLM``: an output filter. Scores pass through unchanged; a generation that reproduces
  a blocked token n-gram (the forget set's) is replaced by a fixed refusal.

``lm.guards`` builds the inference-time baselines of unlearning from these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from unlearnlm.data.batches import left_padded
from unlearnlm.errors import UnlearnError
from unlearnlm.lm import cached
from unlearnlm.lm.cached import generate_jobs
from unlearnlm.lm.generation import check_arguments
from unlearnlm.lm.interface import LM
from unlearnlm.lm.stepwise import stepwise_generate


class _Composite(LM):
    """What a model made of other ``LM`` objects has in common: no single set of weights."""

    def save(self, out_dir: str | Path, records: dict[str, dict] | None = None) -> Path:
        raise UnlearnError(f"a {type(self).__name__} has no single set of weights to save; "
                           "save the models it is built from")

    def hf_model(self):
        raise UnlearnError(f"a {type(self).__name__} is not one Hugging Face model; score it "
                           "with --backend ours")


class _Wrapper(_Composite):
    """A composite around one ``base`` model: it runs on the base's device and modules."""

    base: LM

    @property
    def device(self) -> torch.device:
        return self.base.device

    def modules(self) -> list[torch.nn.Module]:
        return self.base.modules()


class PromptedLM(_Wrapper):
    """``base`` with ``prompt`` (text, or token ids) before every input (module docstring).

    The prompt's keys and values are computed once, on first use, on the base model's device
    (``lm.cached.prompt_cache``), and reused: ``logits`` runs only the input after them,
    ``generate`` (greedy and sampled; beam search re-reads the prompt) and ``greedy_to_the_end``
    decode from them. The results are those of re-reading prompt + input, within float rounding.

    When the cache is used: ``cache_prompt`` is True (False keeps the old path, re-reading the
    prompt every call), the base is a plain ``LM`` (not a composite or an adapter-switching
    model, whose forward passes this class cannot reproduce), the model's cache holds full
    per-layer keys and values (no sliding-window cache), and, for ``logits``, autograd is off and
    the base's modules are in eval mode (a pass that trains re-reads the prompt, so gradients
    and dropout reach it as before).

    When it is recomputed: the cache belongs to the weights it was computed from. It is
    recomputed when any parameter of the base's modules has changed since: replaced, moved to
    another device or dtype, or modified in place (an optimiser step, ``load_state_dict``: torch's
    per-tensor version counter), or when the active adapter of a peft model has changed.
    ``clear_prompt_cache()`` drops it by hand, for any other change (a weight's storage rewritten
    behind torch's back).
    """

    def __init__(self, base: LM, prompt: str | Sequence[int], *,
                 cache_prompt: bool = True) -> None:
        if isinstance(prompt, str):
            if base.tokenizer is None:
                raise UnlearnError("a text prompt needs the base model's tokenizer; give token "
                                   "ids or build the base LM with its tokenizer")
            prompt = base.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if len(prompt) == 0:
            raise UnlearnError("the prompt is empty; give an instruction or examples")
        super().__init__(base.model, base.tokenizer, pad_token_id=base.pad_token_id)
        self.base = base
        self.prompt = [int(t) for t in prompt]
        self.cache_prompt = cache_prompt
        self.prompt_cache_builds = 0  # how many times the prompt was read into the cache
        self._cache: cached.KeyValues | None = None
        self._cache_stamp: tuple | None = None

    @classmethod
    def with_examples(
        cls, base: LM, examples: Sequence[str], instruction: str = "", separator: str = "\n\n",
        *, cache_prompt: bool = True,
    ) -> PromptedLM:
        """In-context examples (and an optional instruction first), each followed by
        ``separator``, before every input."""
        parts = [instruction] if instruction else []
        parts += list(examples)
        if not parts:
            raise UnlearnError("give in-context examples or an instruction for the prompt")
        return cls(base, "".join(part + separator for part in parts), cache_prompt=cache_prompt)

    @property
    def generation_follows_argmax(self) -> bool:  # type: ignore[override]
        return self.base.generation_follows_argmax

    def context_limit(self, cap: int = 1024) -> int:
        room = self.base.context_limit(cap + len(self.prompt)) - len(self.prompt)
        if room < 2:
            raise UnlearnError(f"the prompt ({len(self.prompt)} tokens) fills the model's context; "
                               "give a shorter one")
        return min(room, cap)

    # --- the prompt's cache ---------------------------------------------------------------------

    def clear_prompt_cache(self) -> None:
        """Drop the prompt's cache; the next call that can use one reads the prompt again."""
        self._cache, self._cache_stamp = None, None

    def _weights_stamp(self) -> tuple:
        """What the cache depends on: every parameter's identity, storage, dtype, device and
        in-place version, and a peft model's active adapter."""
        stamp: list = []
        for module in self.base.modules():
            stamp.append(repr(getattr(module, "active_adapters", None)))
            stamp += [(id(p), p.data_ptr(), p.dtype, p.device, _version(p))
                      for p in module.parameters()]
        return tuple(stamp)

    def prompt_cache(self) -> cached.KeyValues | None:
        """The prompt's keys and values to read inputs after, or None where the prompt is
        re-read (class docstring); computed on first use and whenever the weights changed.
        Call it with the base model in eval mode and autograd off."""
        if not self.cache_prompt or not _plain(self.base):
            return None
        stamp = self._weights_stamp()
        if stamp != self._cache_stamp:
            with self.evaluating():
                self._cache = cached.prompt_cache(self.base.model, self.prompt, self.device)
            self._cache_stamp = stamp
            self.prompt_cache_builds += 1
        return self._cache

    # --- scores and generation ------------------------------------------------------------------

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        training = any(getattr(m, "training", False) for m in self.base.modules())
        prompt = None if torch.is_grad_enabled() or training else self.prompt_cache()
        if prompt is None:
            rows = input_ids.shape[0]
            tokens = torch.tensor(self.prompt, dtype=input_ids.dtype, device=input_ids.device)
            ids = torch.cat([tokens.expand(rows, -1), input_ids], dim=1)
            mask = torch.cat([attention_mask.new_ones(rows, len(self.prompt)), attention_mask],
                             dim=1)
            return self.base.logits(ids, mask)[:, len(self.prompt) :]
        device = self.device
        return cached.after_prompt(self.base.model, prompt, input_ids.to(device),
                                   attention_mask.to(device)).logits

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
        check_arguments(prefixes, max_new_tokens, num_beams, batch_size, temperature)
        with self.evaluating():
            prompt = self.prompt_cache() if num_beams == 1 else None
            if prompt is not None:
                return cached.continue_after_prompt(
                    self.base.model, prompt, [list(p) for p in prefixes], max_new_tokens,
                    pad_token_id=self.pad_token_id, eos_token_id=eos_token_id,
                    temperature=temperature, seed=seed, batch_size=batch_size)
        return self.base.generate([self.prompt + list(p) for p in prefixes], max_new_tokens,
                                  eos_token_id=eos_token_id, num_beams=num_beams,
                                  temperature=temperature, seed=seed, batch_size=batch_size)

    def greedy_to_the_end(
        self,
        sequences: list[list[int]],
        predictions: list[list[int]],
        jobs: list[tuple[int, int]],
        batch_size: int,
    ) -> dict[tuple[int, int], list[int]]:
        """The base model's, from each sequence's own cache after the prompt's; where the prompt
        is not cached, on prompt + sequence with every start shifted by the prompt's length (the
        argmax before the first input token is never read: a job starts at t >= 1)."""
        with self.evaluating():
            prompt = self.prompt_cache()
            if prompt is not None:
                return cached.greedy_to_the_end(self.base.model, sequences, predictions, jobs,
                                                self._greedy_batch, batch_size, prompt=prompt)
        shift = len(self.prompt)
        done = self.base.greedy_to_the_end(
            [self.prompt + list(s) for s in sequences],
            [[-1] * shift + list(p) for p in predictions],
            [(i, t + shift) for i, t in jobs],
            batch_size,
        )
        return {(i, t - shift): out for (i, t), out in done.items()}


def _version(tensor: torch.Tensor) -> int | None:
    """torch's count of in-place changes to ``tensor`` (None for an inference tensor, which
    cannot be changed in place outside inference mode and keeps no count)."""
    try:
        return tensor._version
    except RuntimeError:
        return None


def _plain(lm: LM) -> bool:
    """Whether ``lm`` computes with ``LM``'s own forward passes (nothing overridden), so that
    its model can be called directly with a cache."""
    return all(getattr(type(lm), name) is getattr(LM, name)
               for name in ("logits", "forward_step", "generate", "greedy_to_the_end"))


class EnsembleLM(_Composite):
    """The mean of ``members``' next-token probabilities (module docstring); members share a
    tokenizer and vocabulary, the first member's tokenizer is the ensemble's."""

    def __init__(self, members: Sequence[LM]) -> None:
        if not members:
            raise UnlearnError("an ensemble needs at least one model")
        first = members[0]
        super().__init__(first.model, first.tokenizer, pad_token_id=first.pad_token_id)
        self.members = list(members)

    @property
    def device(self) -> torch.device:
        return self.members[0].device

    def modules(self) -> list[torch.nn.Module]:
        seen: dict[int, torch.nn.Module] = {}
        for member in self.members:
            for module in member.modules():
                seen.setdefault(id(module), module)
        return list(seen.values())

    def context_limit(self, cap: int = 1024) -> int:
        return min(member.context_limit(cap) for member in self.members)

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        parts = [F.log_softmax(m.logits(input_ids, attention_mask).float(), dim=-1).to(self.device)
                 for m in self.members]
        sizes = {part.shape[-1] for part in parts}
        if len(sizes) > 1:
            raise UnlearnError(f"ensemble members predict vocabularies of sizes {sorted(sizes)}; "
                               "give models that share a tokenizer and vocabulary")
        return torch.logsumexp(torch.stack(parts), dim=0) - math.log(len(parts))

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
        if num_beams > 1 or any(isinstance(m, _Composite) for m in self.members):
            return stepwise_generate(self.next_logprobs, prefixes, max_new_tokens,
                                     eos_token_id=eos_token_id, num_beams=num_beams,
                                     temperature=temperature, seed=seed, batch_size=batch_size)
        check_arguments(prefixes, max_new_tokens, num_beams, batch_size, temperature)
        generator = None
        if temperature is not None:
            generator = torch.Generator()
            if seed is None:
                generator.seed()
            else:
                generator.manual_seed(seed)
        results: list[list[int]] = []
        with self.evaluating():
            for first in range(0, len(prefixes), batch_size):
                results += self._decode_cached(prefixes[first : first + batch_size],
                                               max_new_tokens, eos_token_id, temperature,
                                               generator)
        return results

    def _decode_cached(
        self, prefixes: list[list[int]], max_new_tokens: int, eos_token_id: int | None,
        temperature: float | None, generator: torch.Generator | None,
    ) -> list[list[int]]:
        """Greedy or sampled continuations of one batch, each member with its own cache; a
        finished row is fed its last token again and ignored."""
        input_ids, mask = left_padded([list(p) for p in prefixes], self.pad_token_id, self.device)
        caches: list[Any] = [None] * len(self.members)
        new: list[list[int]] = [[] for _ in prefixes]
        done = [False] * len(prefixes)
        for _ in range(max_new_tokens):
            parts = []
            for k, member in enumerate(self.members):
                scores, caches[k] = member.forward_step(input_ids, mask, caches[k])
                parts.append(F.log_softmax(scores.float(), dim=-1).to(self.device))
            log_probs = (torch.logsumexp(torch.stack(parts), dim=0) - math.log(len(parts))).cpu()
            if temperature is None:
                tokens = log_probs.argmax(dim=-1)
            else:
                probs = torch.softmax(log_probs / temperature, dim=-1)
                tokens = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            for row, token in enumerate(tokens.tolist()):
                if not done[row]:
                    done[row] = token == eos_token_id
                    if not done[row]:
                        new[row].append(token)
            if all(done):
                break
            input_ids = tokens[:, None].to(self.device)
            mask = torch.cat([mask, mask.new_ones(len(prefixes), 1)], dim=1)
        return new

    def greedy_to_the_end(
        self,
        sequences: list[list[int]],
        predictions: list[list[int]],
        jobs: list[tuple[int, int]],
        batch_size: int,
    ) -> dict[tuple[int, int], list[int]]:
        """Re-reads the prefixes: the members' caches cannot be mixed into one."""
        return generate_jobs(sequences, jobs, self._greedy_batch, batch_size)


class FilteredLM(_Wrapper):
    """``base`` whose generations are checked against blocked token n-grams (an output filter,
    after Thaker et al. 2024, "Guardrail Baselines for Unlearning in LLMs").

    A continuation is withheld when it reproduces an n-gram of ``blocked`` (token ids, the forget
    set): when any n consecutive tokens of (the input's last n - 1 tokens + the continuation)
    are one, so a continuation that carries on a blocked text from the input's end is caught at
    its first reproduced token. A withheld continuation is replaced by ``refusal``'s tokens, cut
    to the length asked for (``max_new_tokens``, or the rest of the sequence for EL); one that
    reproduces nothing passes unchanged. Teacher-forced scores pass through unchanged: the filter
    sees only what is generated, so MA, perplexity, choice tasks and membership inference read
    the base model's log-probabilities, and the weights keep what they know.
    """

    generation_follows_argmax = False  # a withheld continuation is not the argmax

    def __init__(self, base: LM, blocked: Sequence[Sequence[int]], n: int,
                 refusal: str | Sequence[int] = " [withheld]") -> None:
        if n < 1:
            raise UnlearnError(f"the filter's n-gram length is {n}; give 1 or more")
        super().__init__(base.model, base.tokenizer, pad_token_id=base.pad_token_id)
        self.base, self.n = base, n
        self.ngrams = {tuple(seq[i : i + n]) for seq in blocked for i in range(len(seq) - n + 1)}
        if not self.ngrams:
            raise UnlearnError(f"no blocked text has {n} tokens, so the filter would pass "
                               "everything; give a shorter n-gram length or longer texts")
        if isinstance(refusal, str):
            if base.tokenizer is None:
                raise UnlearnError("a text refusal needs the base model's tokenizer; give token "
                                   "ids or build the base LM with its tokenizer")
            refusal = base.tokenizer(refusal, add_special_tokens=False)["input_ids"]
        self.refusal = [int(t) for t in refusal]
        if self.reproduces([], self.refusal):
            raise UnlearnError("the refusal itself reproduces a blocked n-gram; give another")

    def context_limit(self, cap: int = 1024) -> int:
        return self.base.context_limit(cap)

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.base.logits(input_ids, attention_mask)

    def reproduces(self, context: Sequence[int], continuation: Sequence[int]) -> bool:
        """Whether some n-gram of (the last n - 1 tokens of ``context`` + ``continuation``) is
        blocked; each such n-gram holds at least one token of the continuation."""
        window = [*context[max(0, len(context) - self.n + 1) :], *continuation]
        return any(tuple(window[i : i + self.n]) in self.ngrams
                   for i in range(len(window) - self.n + 1))

    def filtered(self, context: Sequence[int], continuation: list[int], size: int) -> list[int]:
        """``continuation``, or the refusal cut to ``size`` tokens when it reproduces one."""
        return self.refusal[:size] if self.reproduces(context, continuation) else continuation

    def generate(
        self, prefixes: list[list[int]], max_new_tokens: int, **options: Any
    ) -> list[list[int]]:
        outputs = self.base.generate(prefixes, max_new_tokens, **options)
        return [self.filtered(p, out, max_new_tokens)
                for p, out in zip(prefixes, outputs, strict=True)]

    def greedy_to_the_end(
        self,
        sequences: list[list[int]],
        predictions: list[list[int]],
        jobs: list[tuple[int, int]],
        batch_size: int,
    ) -> dict[tuple[int, int], list[int]]:
        """The base model's greedy continuation of each job, then filtered. The base model's
        continuation from t is x_t..x_{u-1} (while its argmax at u - 1 is x_u), then its greedy
        continuation from u, so only the starts u are generated (the EL shortcut)."""
        first_miss = {}
        for i, t in jobs:
            tokens, u = sequences[i], t
            while u < len(tokens) and predictions[i][u - 1] == tokens[u]:
                u += 1
            first_miss[(i, t)] = u
        needed = sorted({(i, u) for (i, _), u in first_miss.items() if u < len(sequences[i])})
        generated = self.base.greedy_to_the_end(sequences, predictions, needed, batch_size)
        results = {}
        for (i, t), u in first_miss.items():
            tokens = sequences[i]
            continuation = tokens[t:u] + generated.get((i, u), [])
            size = len(tokens) - t
            results[(i, t)] = self.filtered(tokens[:t], continuation[:size], size)
        return results
