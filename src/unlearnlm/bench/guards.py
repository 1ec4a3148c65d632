"""The bench's inference-time baselines (``lm.guards``): no training, the leaky model wrapped.

A method named in ``lm.guards.BASELINES`` (``guard-prompt``, ``icul``, ``guard-filter``) skips
unlearning: its "model" is the leaky model behind the guard, built from the bench's own data
(the forget set, split as everywhere; icul's other continuations from the pool; its whole,
correctly continued examples from the retain texts, which the leaky model was trained on and
keeps: Pawelczyk et al.'s correctly labelled training examples). It is evaluated by the same
suite as every other model, and its row also gets:

- its cost per generated token: greedy generation of ``COST_TOKENS`` new tokens (no early stop)
  from the first ``COST_PROMPTS`` forget prefixes and as many non-member prefixes, in one batch,
  by the leaky model alone and then wrapped, in the same process one after the other (after a
  short warm-up); the row keeps both times per generated token and their ratio;
- the membership-inference AUC of the unchanged weights: the leaky model's, since no weight
  changed (``results.build_rows`` copies it from the leaky row);
- for ``guard-filter``: how many of those greedy generations it withheld, forget and
  non-member prefixes apart (a withheld non-member continuation is a false alarm).

``out/methods/NAME/guard.json`` holds this; a re-run with the same inputs reuses it.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from pathlib import Path
from typing import Any

from unlearnlm.data.texts import Record, Sample, split_records, texts_sha256
from unlearnlm.lm.composite import FilteredLM
from unlearnlm.lm.guards import guard_summary, guarded
from unlearnlm.lm.interface import LM

log = logging.getLogger(__name__)

COST_TOKENS = 32
COST_PROMPTS = 8


def guard_stamp(name: str, s: Any, data: dict[str, list[Record]]) -> dict:
    """What a baseline's model depends on beyond the leaky model: its settings and texts."""
    roles = ("forget", "pool", "retain") if name == "icul" else ("forget",)
    return {"name": name, "guard_opening_tokens": s.guard_opening_tokens,
            "icul_examples": s.icul_examples, "filter_ngram": s.filter_ngram, "seed": s.seed,
            "prefix_tokens": s.prefix_tokens, "suffix_tokens": s.suffix_tokens,
            "texts": {r: texts_sha256([x.text for x in data[r]]) for r in roles}}


def _split(s: Any, data: dict[str, list[Record]], role: str, tokenizer) -> list[Sample]:
    return split_records(data[role], tokenizer, s.prefix_tokens, s.suffix_tokens, role=role)


def wrap_leaky(name: str, lm: LM, s: Any, data: dict[str, list[Record]],
               forget: list[Sample] | None = None) -> LM:
    """The leaky model ``lm`` behind baseline ``name``, built from the bench's data."""
    tokenizer = lm.tokenizer
    forget = forget if forget is not None else _split(s, data, "forget", tokenizer)
    others = {}
    if name == "icul":
        others = {"pool": _split(s, data, "pool", tokenizer),
                  "kept": _split(s, data, "retain", tokenizer)}
    return guarded(name, lm, forget, opening_tokens=s.guard_opening_tokens,
                   icul_examples=s.icul_examples, ngram=s.filter_ngram, seed=s.seed, **others)


def generation_cost(plain: LM, wrapped: LM, prefixes: list[list[int]],
                    new_tokens: int = COST_TOKENS) -> tuple[dict, list[list[int]]]:
    """Seconds per generated token of greedy generation, plain and wrapped, one batch each,
    timed one after the other (module docstring); and the plain model's continuations."""
    plain.generate(prefixes[:1], 2)  # first-call allocations stay out of the timing
    seconds, outputs = {}, {}
    for side, lm in (("plain", plain), ("wrapped", wrapped)):
        clock = time.perf_counter()
        outputs[side] = lm.generate(prefixes, new_tokens, batch_size=len(prefixes))
        seconds[side] = time.perf_counter() - clock
    tokens = len(prefixes) * new_tokens
    cost = {"prompts": len(prefixes), "new_tokens": new_tokens,
            "plain_ms_per_token": 1000 * seconds["plain"] / tokens,
            "ms_per_token": 1000 * seconds["wrapped"] / tokens,
            "cost_ratio": seconds["wrapped"] / seconds["plain"]}
    return cost, outputs["plain"]


def run_guard(name: str, s: Any, leaky: Path, data: dict[str, list[Record]],
              folder: Path) -> dict:
    """Build baseline ``name`` around the leaky model and time its generation (module
    docstring); reuse an earlier ``guard.json`` made from the same inputs."""
    from unlearnlm.lm.loading import load_model
    from unlearnlm.rundir import write_json

    stamp = {**guard_stamp(name, s, data), "leaky": str(leaky),
             "nonmember": texts_sha256([r.text for r in data["nonmember"]])}
    path = folder / "guard.json"
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("stamp") == stamp:
            log.info("  %s: reusing %s", name, path)
            return {"guard": saved}
    log.info("  %s: no training (an inference-time baseline); timing its generation", name)
    model, tokenizer, _ = load_model(str(leaky))
    plain = LM(model, tokenizer)
    forget = _split(s, data, "forget", tokenizer)
    wrapped = wrap_leaky(name, plain, s, data, forget)
    nonmember = _split(s, data, "nonmember", tokenizer)[:COST_PROMPTS]
    prefixes = [x.prefix_ids for x in forget[:COST_PROMPTS] + nonmember]
    cost, continuations = generation_cost(plain, wrapped, prefixes)
    record = {"method": name, "stamp": stamp, "summary": guard_summary(wrapped), "cost": cost}
    if isinstance(wrapped, FilteredLM):
        fired = [wrapped.reproduces(p, c) for p, c in zip(prefixes, continuations, strict=True)]
        split = min(COST_PROMPTS, len(forget))
        record["withheld"] = {"forget": sum(fired[:split]), "forget_prompts": split,
                              "nonmember": sum(fired[split:]),
                              "nonmember_prompts": len(fired) - split}
    write_json(path, record)
    log.info("  %s: %.1f ms a generated token wrapped, %.1f plain (x%.2f)", name,
             cost["ms_per_token"], cost["plain_ms_per_token"], cost["cost_ratio"])
    del model, plain, wrapped
    gc.collect()
    return {"guard": record}
