"""The TOFU benchmark (Maini et al. 2024): fictitious authors' question-answer pairs to forget.

Data (``<data>/tofu``, see docs/tofu-muse.md): ``forget01/05/10.json`` (``prompt``/``response``),
the matching ``retain99/95/90.json`` and ``holdout01/05/10.json`` (``question``/``answer``;
a file may hold several JSON arrays, one a line, as ``full.json`` does), and the truth-ratio
sets ``*_perturbed.json`` (``question``, ``answer``, ``paraphrased_answer``,
``perturbed_answer``) of the forget split, the retain set, real authors and world facts.

Every question-answer pair is the record prefix ``"Question: {q}\\nAnswer:"`` and suffix
``" {a}"``: the target model (fine-tuned on forget + retain, TOFU's full set) and the retain model
(retain only) learn the answers with the loss on the answer tokens, and every score conditions on
the same prefix. ``evaluate`` gives one model's scores (``metrics.benchmarks``), ``summarise``
adds forget quality against the retain model and model utility.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from unlearnlm.data.texts import Record
from unlearnlm.errors import UnlearnError
from unlearnlm.metrics import benchmarks as bm

SPLITS = {"forget01": ("retain99", "holdout01"), "forget05": ("retain95", "holdout05"),
          "forget10": ("retain90", "holdout10")}
# the sets model utility averages over, and how each is scored
UTILITY_SETS = ("retain", "real_authors", "world_facts")
ANSWER_STOPS = ("\n",)  # a TOFU answer is one line; a generation is cut at its first line break


def template(question: str) -> str:
    """The prefix every question is asked with (its answer follows after a space)."""
    return f"Question: {question}\nAnswer:"


def read_json_items(path: Path, keys: tuple[str, ...], fetch: str) -> list[dict]:
    """A JSON array of objects (or several, one a line), each checked for ``keys``."""
    if not path.is_file():
        raise UnlearnError(f"{path} is missing; run `unlearnlm data fetch {fetch}` (or set "
                           "UNLEARNLM_DATA to a folder that holds it)")
    text = path.read_text(encoding="utf-8")
    try:
        items = json.loads(text)
    except json.JSONDecodeError as error:
        if error.msg != "Extra data":
            raise UnlearnError(f"{path}: not valid JSON (line {error.lineno}: {error.msg}); run "
                               f"`unlearnlm data fetch {fetch}` again") from None
        items = []
        for number, line in enumerate(text.splitlines(), 1):
            try:
                part = json.loads(line) if line.strip() else []
            except json.JSONDecodeError as inner:
                raise UnlearnError(f"{path}: line {number} is not a JSON array ({inner.msg}); "
                                   f"run `unlearnlm data fetch {fetch}` again") from None
            items.extend(part if isinstance(part, list) else [part])
    if not isinstance(items, list) or not items:
        raise UnlearnError(f"{path}: expected a non-empty JSON array of objects; run "
                           f"`unlearnlm data fetch {fetch}` again")
    for index, item in enumerate(items):
        missing = [k for k in keys if not isinstance(item, dict) or k not in item]
        if missing:
            raise UnlearnError(f"{path}: item {index} lacks {missing[0]!r} (each needs "
                               f"{', '.join(keys)}); run `unlearnlm data fetch {fetch}` again")
    return items


def data_folder(name: str, fetch: str) -> Path:
    """The set's folder: in the data folder, else where `unlearnlm data fetch` put it."""
    from unlearnlm.paths import data_cache, data_root, find_data

    folder = find_data(name)
    if folder is None or not folder.is_dir():
        root = data_root(required=False)
        looked = f"{root / name} and {data_cache() / name}" if root else str(data_cache() / name)
        raise UnlearnError(f"the {fetch} data set was not found (looked in {looked}); "
                           f"run `unlearnlm data fetch {fetch}` (or set UNLEARNLM_DATA)")
    return folder


def keep(items: list, fraction: float | None) -> list:
    """The first ceil(fraction x n) items (all with None): every set shrinks by the same
    fraction, so the split's ratios hold."""
    return items if fraction is None else items[: max(1, math.ceil(len(items) * fraction))]


def load(split: str, subset: float | None) -> dict[str, list[dict]]:
    """TOFU's sets for ``split``: forget, retain and holdout QA (``question``/``answer``) and the
    scored sets (forget, retain, real_authors, world_facts) with their wrong answers."""
    folder = data_folder("tofu", "tofu")
    retain_name, holdout_name = SPLITS[split]
    qa = ("question", "answer")
    scored = ("question", "answer", "perturbed_answer")
    forget = [{"question": x["prompt"], "answer": x["response"]}
              for x in read_json_items(folder / f"{split}.json", ("prompt", "response"), "tofu")]
    sets = {
        "forget_qa": forget,
        "retain_qa": read_json_items(folder / f"{retain_name}.json", qa, "tofu"),
        "holdout_qa": read_json_items(folder / f"{holdout_name}.json", qa, "tofu"),
        "forget": read_json_items(folder / f"{split}_perturbed.json",
                                  (*scored, "paraphrased_answer"), "tofu"),
        "retain": read_json_items(folder / "retain_perturbed.json",
                                  (*scored, "paraphrased_answer"), "tofu"),
        "real_authors": read_json_items(folder / "real_authors_perturbed.json", scored, "tofu"),
        "world_facts": read_json_items(folder / "world_facts_perturbed.json", scored, "tofu"),
    }
    return {name: keep(items, subset) for name, items in sets.items()}


def qa_records(items: list[dict], role: str) -> list[Record]:
    """Question-answer pairs as prefix + suffix records."""
    records = []
    for i, item in enumerate(items):
        prefix, suffix = template(item["question"]), " " + item["answer"]
        records.append(Record(f"{role}-{i}", prefix + suffix, prefix, suffix))
    return records


def training_sets(sets: dict[str, list[dict]]) -> dict[str, list[Record]]:
    """The records of the bench's roles: ``leaky_train``, what the target model learns (forget +
    retain, TOFU's full set); the retain model learns retain only; the never-seen holdout
    authors calibrate the unlearning thresholds and the retain set is the analogous pool."""
    retain = qa_records(sets["retain_qa"], "retain")
    forget = qa_records(sets["forget_qa"], "forget")
    # retain + forget is full.json, question for question, whatever the split: numbered by
    # position, the target model's training file is the same for every split (one cached model)
    full = [Record(f"full-{i}", r.text, r.prefix, r.suffix)
            for i, r in enumerate(retain + forget)]
    return {"forget": forget, "retain": retain, "pool": retain,
            "calibration": qa_records(sets["holdout_qa"], "holdout"), "leaky_train": full}


# --- scoring one model -------------------------------------------------------------------------


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def answer_logprobs(lm, pairs: list[tuple[str, str]], batch_size: int = 8) -> list[list[float]]:
    """Per (prefix, answer): log P(answer token | prefix, earlier answer tokens), teacher-forced;
    the prefix and the answer tokenised apart, as the training records are."""
    tokenizer = lm.tokenizer
    prefixes = {p: _encode(tokenizer, p) for p in {p for p, _ in pairs}}
    sequences, starts = [], []
    for prefix, answer in pairs:
        ids = prefixes[prefix]
        sequences.append(ids + _encode(tokenizer, answer))
        starts.append(len(ids))
    return [t.logprobs for t in lm.targets(sequences, starts, batch_size=batch_size)]


def generate_answers(lm, prompts: list[str], max_new_tokens: int,
                     stops: tuple[str, ...] = ANSWER_STOPS) -> list[str]:
    """Greedy answers, cut at the first stop string and stripped (open-unlearning's
    ``eval_text_similarity`` does the same with its stop words); a prompt longer than the
    model's context keeps its last tokens."""
    tokenizer = lm.tokenizer
    room = lm.context_limit(cap=4096) - max_new_tokens
    if room < 1:
        raise UnlearnError(f"the model's context ({room + max_new_tokens} tokens) leaves no room "
                           f"for a prompt before {max_new_tokens} new tokens; lower "
                           "--answer-tokens")
    prefixes = [_encode(tokenizer, p)[-room:] for p in prompts]
    outputs = lm.generate(prefixes, max_new_tokens, eos_token_id=lm.eos_token_id)
    texts = tokenizer.batch_decode(outputs, skip_special_tokens=True)
    answers = []
    for text in texts:
        for stop in stops:
            text = text.split(stop)[0]
        answers.append(text.strip())
    return answers


def score_set(lm, items: list[dict], name: str, max_new_tokens: int) -> dict[str, Any]:
    """One scored set: answer probability, ROUGE-L recall of the greedy answer and the truth
    ratio per question, and their aggregates as TOFU reports them."""
    prompts = [template(x["question"]) for x in items]
    own = name in ("forget", "retain")  # TOFU's own questions have paraphrased answers
    correct = [x["paraphrased_answer"] if own else x["answer"] for x in items]
    wrongs = [list(x["perturbed_answer"]) for x in items]
    pairs = [(p, " " + a) for p, a in zip(prompts, [x["answer"] for x in items], strict=True)]
    pairs += [(p, " " + c) for p, c in zip(prompts, correct, strict=True)]
    pairs += [(p, " " + w) for p, ws in zip(prompts, wrongs, strict=True) for w in ws]
    scores = iter(answer_logprobs(lm, pairs))
    answer = [next(scores) for _ in items]
    right = [next(scores) for _ in items]
    wrong = [[next(scores) for _ in ws] for ws in wrongs]
    ratios = [bm.truth_ratio(c, w) for c, w in zip(right, wrong, strict=True)]
    if own:
        probability = [bm.normalised_probability(a) for a in answer]
    else:  # the answer options are known: the correct one's share
        probability = [bm.option_probability(a, w) for a, w in zip(answer, wrong, strict=True)]
    generated = generate_answers(lm, prompts, max_new_tokens)
    rouge = [bm.rouge_l(g, x["answer"]) for g, x in zip(generated, items, strict=True)]
    aggregate = bm.forget_truth_ratio if name == "forget" else bm.utility_truth_ratio
    return {
        "probability": sum(probability) / len(items), "rouge_l_recall": sum(rouge) / len(items),
        "truth_ratio": aggregate(ratios), "questions": len(items),
        "per_question": {"truth_ratio": ratios, "probability": probability, "rouge_l_recall": rouge,
                         "generated": generated},
    }


def evaluate(lm, sets: dict[str, list[dict]], limit: int | None,
             max_new_tokens: int) -> dict[str, Any]:
    """One model's scores on the forget set, the retain set, real authors and world facts (each
    cut to its first ``limit`` questions) and its model utility."""
    result = {name: score_set(lm, sets[name][:limit], name, max_new_tokens)
              for name in ("forget", *UTILITY_SETS)}
    result["model_utility"] = bm.harmonic_mean(
        [result[n][k] for n in UTILITY_SETS
         for k in ("probability", "rouge_l_recall", "truth_ratio")])
    return result


def summarise(evals: dict[str, dict]) -> list[dict[str, Any]]:
    """One row per model: forget quality (KS p-value of its forget truth ratios against the
    retain model's), model utility, and the forget set's ROUGE-L, probability and truth ratio."""
    reference = evals["retain"]["forget"]["per_question"]["truth_ratio"]
    rows = []
    for name, result in evals.items():
        forget = result["forget"]
        rows.append({
            "model": name,
            "forget_quality": bm.forget_quality(forget["per_question"]["truth_ratio"], reference),
            "model_utility": result["model_utility"],
            "forget_rouge_l_recall": forget["rouge_l_recall"],
            "forget_probability": forget["probability"],
            "forget_truth_ratio": forget["truth_ratio"],
            **{f"{n}_{k}": result[n][k] for n in UTILITY_SETS
               for k in ("probability", "rouge_l_recall", "truth_ratio")},
        })
    return rows


COLUMNS = (("forget_quality", "forget quality", "{:.3g}"), ("model_utility", "model utility",
           "{:.3f}"), ("forget_rouge_l_recall", "forget ROUGE-L", "{:.3f}"),
           ("forget_probability", "forget prob.", "{:.3f}"),
           ("forget_truth_ratio", "forget truth ratio", "{:.3f}"))
