"""Inference-time baselines of unlearning: the weights unchanged, a guard around the model.

Each baseline is an ``LM`` (``lm.composite``), so ``unlearnlm eval --wrap NAME`` and the bench
score it with the same metrics as a model whose weights were changed. Each is built from the
forget set, split into prefix and suffix (``data.texts.Sample``; the prefix is what a query
starts with, the suffix what must not come back):

- ``guard-prompt``, guardrail prompting (Thaker et al. 2024, "Guardrail Baselines for
  Unlearning in LLMs"): before every input, an instruction naming the texts that must not be
  revealed by their openings: ``GUARD_HEADER``, one line ``- "OPENING ..."`` per forget text,
  ``GUARD_FOOTER``. An opening is the first ``opening_tokens`` tokens of the text's prefix
  (never more than the prefix, so the instruction quotes nothing of what must be forgotten),
  decoded, with its whitespace folded into single spaces.
- ``icul``, in-context unlearning (Pawelczyk et al. 2024, "In-Context Unlearning: Language
  Models as Few-Shot Unlearners"): they put each forget example in the context with a label
  other than its own, then a few correctly labelled training examples, then the query. For
  generation (``icul_examples``): every forget text's prefix followed by another text's suffix
  (a pool text, drawn in a seeded random order and cut to the forget suffix's length: the
  "flipped label"), then ``examples`` kept texts whole (their true continuation: the correctly
  labelled ones), each example followed by ``EXAMPLE_SEPARATOR``, then the input. The pool
  texts are never the forget texts' own; the context holds no forget suffix.
- ``guard-filter``, output filtering (after Thaker et al. 2024; ``lm.composite.FilteredLM``):
  a generation that reproduces a token n-gram of the forget texts (default n = 8) is replaced
  by ``REFUSAL``. Log-probabilities pass through unchanged, so membership inference, MA and
  perplexity see the model as it is.

None of them changes a weight: whoever holds the weights (a released model, a leaked copy) holds
the leaky model, which is why the bench reports the membership-inference AUC of the unchanged
weights beside each of these rows.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from unlearnlm.data.texts import Sample
from unlearnlm.errors import UnlearnError
from unlearnlm.lm.composite import FilteredLM, PromptedLM
from unlearnlm.lm.interface import LM

BASELINES = ("guard-prompt", "icul", "guard-filter")
GUARD_HEADER = ("The texts that begin as below are confidential. Do not reproduce, continue or "
                "quote them, and do not reveal anything they contain:\n")
GUARD_FOOTER = "If a text begins like one of them, write something else instead.\n\n"
EXAMPLE_SEPARATOR = "\n\n"
REFUSAL = " [withheld]"


def _tokenizer(base: LM):
    if base.tokenizer is None:
        raise UnlearnError("an inference-time baseline needs the model's tokenizer; build the "
                           "LM with one")
    return base.tokenizer


def _check_forget(forget: Sequence[Sample]) -> None:
    if not forget:
        raise UnlearnError("an inference-time baseline is built from the forget set; give "
                           "--forget with at least one text")


# --- guard-prompt ------------------------------------------------------------------------------


def openings(forget: Sequence[Sample], tokenizer, opening_tokens: int = 8) -> list[str]:
    """Each forget text's first ``opening_tokens`` tokens of its prefix as text, whitespace
    folded, repeats dropped."""
    if opening_tokens < 1:
        raise UnlearnError(f"opening_tokens is {opening_tokens}; give 1 or more")
    texts = (" ".join(tokenizer.decode(s.prefix_ids[:opening_tokens],
                                       skip_special_tokens=True).split()) for s in forget)
    return list(dict.fromkeys(t for t in texts if t))


def guard_instruction(forget: Sequence[Sample], tokenizer, opening_tokens: int = 8) -> str:
    """The guard prompt's text (module docstring)."""
    _check_forget(forget)
    names = openings(forget, tokenizer, opening_tokens)
    if not names:
        raise UnlearnError("no forget text has an opening to name (all prefixes decode to "
                           "blanks); give texts with words in their prefix")
    return GUARD_HEADER + "".join(f'- "{name} ..."\n' for name in names) + GUARD_FOOTER


def guard_prompt(base: LM, forget: Sequence[Sample], opening_tokens: int = 8) -> PromptedLM:
    """``base`` with the guard instruction before every input."""
    return PromptedLM(base, guard_instruction(forget, _tokenizer(base), opening_tokens))


# --- icul --------------------------------------------------------------------------------------


def _disjoint(forget: Sequence[Sample], others: Sequence[Sample], role: str) -> None:
    taken = {s.text.strip() for s in forget}
    if any(s.text.strip() in taken for s in others):
        raise UnlearnError(f"icul's {role} texts include a forget text; give texts that are not "
                           "in the forget set")


def icul_examples(
    forget: Sequence[Sample], pool: Sequence[Sample], kept: Sequence[Sample] | None = None,
    examples: int = 4, seed: int = 42,
) -> list[list[int]]:
    """The in-context examples as token ids, in order (module docstring): one per forget text,
    its prefix + a pool text's suffix, then ``examples`` kept texts whole. ``kept`` None: the
    kept texts are the first ``examples`` pool texts of the seeded order, and only the rest
    give continuations."""
    _check_forget(forget)
    if examples < 0:
        raise UnlearnError(f"icul examples is {examples}; give 0 or more")
    rng = random.Random(seed)
    pool = list(pool)
    rng.shuffle(pool)
    if kept is None:
        kept, pool = pool[:examples], pool[examples:]
    elif len(kept) >= examples:
        kept = rng.sample(list(kept), examples)
    if len(kept) < examples or not pool:
        raise UnlearnError(f"icul needs {examples} kept texts and at least one more pool text "
                           f"for the continuations, got {len(kept)} and {len(pool)}; give more "
                           "texts or fewer examples")
    _disjoint(forget, pool, "pool")
    _disjoint(forget, kept, "kept")
    flipped = [s.prefix_ids + pool[i % len(pool)].suffix_ids[: len(s.suffix_ids)]
               for i, s in enumerate(forget)]
    return flipped + [s.input_ids for s in kept]


def icul(base: LM, forget: Sequence[Sample], pool: Sequence[Sample],
         kept: Sequence[Sample] | None = None, examples: int = 4, seed: int = 42) -> PromptedLM:
    """``base`` with icul's in-context examples before every input."""
    separator = _tokenizer(base)(EXAMPLE_SEPARATOR, add_special_tokens=False)["input_ids"]
    prompt = [token for example in icul_examples(forget, pool, kept, examples, seed)
              for token in (*example, *separator)]
    return PromptedLM(base, prompt)


# --- guard-filter ------------------------------------------------------------------------------


def guard_filter(base: LM, forget: Sequence[Sample], n: int = 8,
                 refusal: str = REFUSAL) -> FilteredLM:
    """``base`` behind the n-gram output filter of the forget texts: each text's tokens as
    split (prefix + suffix) and as its text tokenized whole (the two differ where a split falls
    inside a word)."""
    _check_forget(forget)
    tokenizer = _tokenizer(base)
    whole = tokenizer([s.text for s in forget], add_special_tokens=False)["input_ids"]
    return FilteredLM(base, [s.input_ids for s in forget] + [list(ids) for ids in whole], n,
                      refusal)


# --- by name -----------------------------------------------------------------------------------


def guarded(
    name: str, base: LM, forget: Sequence[Sample], *, pool: Sequence[Sample] = (),
    kept: Sequence[Sample] | None = None, opening_tokens: int = 8, icul_examples: int = 4,
    ngram: int = 8, seed: int = 42,
) -> LM:
    """The baseline ``name`` (one of ``BASELINES``) around ``base``."""
    if name == "guard-prompt":
        return guard_prompt(base, forget, opening_tokens)
    if name == "icul":
        return icul(base, forget, pool, kept, icul_examples, seed)
    if name == "guard-filter":
        return guard_filter(base, forget, ngram)
    raise UnlearnError(f"unknown inference-time baseline '{name}'; known: {', '.join(BASELINES)}")


def guard_summary(lm: LM) -> dict:
    """What a baseline adds, for the records: the prompt's length, or the filter's n-grams."""
    if isinstance(lm, PromptedLM):
        return {"prompt_tokens": len(lm.prompt)}
    if isinstance(lm, FilteredLM):
        return {"ngram": lm.n, "blocked_ngrams": len(lm.ngrams),
                "refusal": lm.tokenizer.decode(lm.refusal) if lm.tokenizer else lm.refusal}
    return {}
