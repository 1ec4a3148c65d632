"""The full evaluation of one model: forgetting, fluency, downstream skill and privacy.

``evaluate(model, tokenizer, forget=..., nonmember=..., tasks=..., limit=...)`` runs the named
tasks on ``model``, an ``lm.interface.LM`` (plain, prompted, ensemble or LoRA-adapted) or a
Hugging Face model, and returns ``{"tasks": {name: {"aggregate": {...}, "samples": [...]}}, ...}``;
``write_results`` saves it as ``eval.json`` atomically. Task names (``TASKS``):

- ``forget``: per forget sample, EL_n and MA over the suffix, and BLEU, BERTScore-F1 and token
  entropy of the greedy generation from the prefix, as long as the true suffix or up to the
  end-of-text token (``LM.generate_suffixes``, the drop test's generation too).
  With non-member samples given, the same metrics on them and ``privacy.forgetting_verdict``.
- ``ppl_pile``, ``ppl_wikitext``: corpus perplexity, each document capped at 512 tokens.
- ``lambada``, ``hellaswag``, ``winogrande``, ``copa``, ``arc_easy``, ``arc_challenge``, ``piqa``,
  ``mathqa``, ``pubmedqa``: zero-shot accuracy (see ``evaluate.tasks`` and ``data.eval_sets``).
- ``dialogue`` (all four sets) or one of ``eval_sets.DIALOGUE_SETS``: dialogue unigram F1.
- ``mia``: membership-inference AUCs, forget set vs non-members (``privacy.membership_audit``).

With ``judge=JudgeSettings(...)``, an LLM judge also scores each forget-set generation 0-10
(``judge_score``, ``judge_reason`` per sample; the mean ``judge_score`` and the number of replies
without a score, ``judge_failures``, in the aggregate); see ``unlearnlm.evaluate.judge``.

``limit`` caps the documents / questions / non-member samples of every task (not the forget set).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from unlearnlm.data import eval_sets
from unlearnlm.data.texts import Record, Sample
from unlearnlm.errors import UnlearnError
from unlearnlm.evaluate import privacy
from unlearnlm.evaluate.judge import JudgeSettings, judge_samples, summarize_verdicts
from unlearnlm.evaluate.tasks import choice_accuracy, dialogue_f1, lambada_accuracy
from unlearnlm.lm.interface import as_lm
from unlearnlm.metrics.scores import (
    bertscore_f1,
    bleu_scores,
    extraction_likelihood,
    mean,
    perplexity,
    suffix_memorization_accuracy,
    token_entropy,
)
from unlearnlm.paths import data_file
from unlearnlm.rundir import write_json

log = logging.getLogger(__name__)

PPL_DOC_TOKENS = 512
TASKS = ("forget", "ppl_pile", "ppl_wikitext", "lambada", *eval_sets.CHOICE_TASKS, "dialogue",
         *eval_sets.DIALOGUE_SETS, "mia")
DEFAULT_TASKS = tuple(t for t in TASKS if t not in eval_sets.DIALOGUE_SETS)


def resolve_tasks(names: list[str] | None) -> list[str]:
    """Validate task names (None = every task); ``dialogue`` expands to the four sets."""
    names = list(DEFAULT_TASKS) if names is None else [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in TASKS]
    if unknown or not names:
        problem = f"unknown task {unknown[0]!r}" if unknown else "no task given"
        raise UnlearnError(f"{problem}; known tasks: {', '.join(TASKS)}")
    expanded = []
    for name in names:
        for task in eval_sets.DIALOGUE_SETS if name == "dialogue" else (name,):
            if task not in expanded:
                expanded.append(task)
    return expanded


# --- forget-set metrics ------------------------------------------------------------------------


def memorisation_scores(model, tokenizer, samples: list[Sample], el_n: int = 10) -> dict:
    """Per sample: EL_n and MA scored on the suffix positions (start = prefix length)."""
    ma = suffix_memorization_accuracy(model, samples)
    el = extraction_likelihood(model, [s.input_ids for s in samples],
                               [len(s.prefix_ids) for s in samples], el_n,
                               pad_token_id=tokenizer.pad_token_id)
    return {"el": el, "ma": ma}


def forget_metrics(model, tokenizer, samples: list[Sample], el_n: int = 10) -> dict:
    """EL_n, MA, BLEU, BERTScore-F1 and entropy per sample (see the module docstring), + means."""
    if not samples:
        raise UnlearnError("no forget samples to score; give --forget with at least one text")
    lm = as_lm(model, tokenizer)
    scores = memorisation_scores(lm, tokenizer, samples, el_n)
    generations = lm.generate_suffixes(samples)
    candidates = [tokenizer.decode(g, skip_special_tokens=True) for g in generations]
    references = [tokenizer.decode(s.suffix_ids, skip_special_tokens=True) for s in samples]
    scores["bleu"] = bleu_scores(candidates, references)
    scores["bertscore"] = bertscore_f1(candidates, references)
    scores["entropy"] = [token_entropy(g) for g in generations]
    rows = [{"id": s.id, **{name: values[i] for name, values in scores.items()},
             "generation": candidates[i]} for i, s in enumerate(samples)]
    return {"aggregate": {name: mean(values) for name, values in scores.items()}
            | {"n": len(samples), "el_n": el_n}, "samples": rows}


def add_judge_scores(section: dict, samples: list[Sample], tokenizer,
                     judge: JudgeSettings) -> None:
    """Add the LLM judge's verdict on each generation of ``forget_metrics``'s ``section``."""
    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True)

    verdicts = judge_samples(judge, [decode(s.prefix_ids) for s in samples],
                             [decode(s.suffix_ids) for s in samples],
                             [row["generation"] for row in section["samples"]])
    for row, verdict in zip(section["samples"], verdicts, strict=True):
        row["judge_score"], row["judge_reason"] = verdict["score"], verdict["reason"]
    summary = summarize_verdicts(verdicts)
    section["aggregate"].update(judge_score=summary["score"], judge_failures=summary["failures"])


# --- perplexity ----------------------------------------------------------------------------------


def corpus_perplexity(model, tokenizer, corpus: str, limit: int | None) -> dict:
    """Perplexity on ``eval/{corpus}.csv``, each document's first ``PPL_DOC_TOKENS`` tokens (at
    most the model's position limit); documents under 2 tokens are skipped."""
    cap = min(PPL_DOC_TOKENS, as_lm(model, tokenizer).context_limit())
    texts = eval_sets.corpus_texts(corpus, limit)
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    sequences = [list(ids)[:cap] for ids in encoded if len(ids) >= 2]
    if not sequences:
        raise UnlearnError(f"no {corpus} document of 2 or more tokens to score; raise --limit")
    return {"aggregate": {"perplexity": perplexity(model, sequences), "n": len(sequences),
                          "tokens": sum(len(s) for s in sequences)}, "samples": []}


# --- the whole evaluation --------------------------------------------------------------------


def _run_task(name: str, model, tokenizer, limit: int | None) -> dict:
    model = as_lm(model, tokenizer)
    cap = model.context_limit()
    if name.startswith("ppl_"):
        return corpus_perplexity(model, tokenizer, name[4:], limit)
    if name == "lambada":
        return lambada_accuracy(model, tokenizer, eval_sets.lambada_items(limit), cap)
    if name in eval_sets.CHOICE_TASKS:
        items = eval_sets.CHOICE_TASKS[name](limit)
        return choice_accuracy(model, tokenizer, items, cap)
    items = eval_sets.dialogue_items(name, limit)
    return dialogue_f1(model, tokenizer, items, max_tokens=cap)


def _privacy_tasks(model, tokenizer, tasks, forget, nonmember, el_n, judge=None) -> dict:
    """The forget, verdict and mia sections, each only when its inputs are there."""
    results: dict = {}
    if ("forget" in tasks or "mia" in tasks) and not forget:
        raise UnlearnError("the forget and mia tasks need forget samples; give --forget")
    if "mia" in tasks:
        if not nonmember:
            raise UnlearnError("the mia task needs non-member samples; give --nonmember")
        log.info("Membership inference on %d + %d samples", len(forget), len(nonmember))
        audit = privacy.membership_audit(model, tokenizer, forget, nonmember)
        results["mia"] = {"aggregate": audit["auc"], "samples": audit}
    if "forget" in tasks:
        log.info("Forget-set metrics on %d samples", len(forget))
        results["forget"] = forget_metrics(model, tokenizer, forget, el_n)
        if judge is not None:
            add_judge_scores(results["forget"], forget, tokenizer, judge)
        if nonmember:
            log.info("The same metrics on %d non-member samples", len(nonmember))
            results["nonmember"] = forget_metrics(model, tokenizer, nonmember, el_n)
            per_sample = {side: {m: [row[m] for row in results[side]["samples"]]
                                 for m in privacy.VERDICT_METRICS}
                          for side in ("forget", "nonmember")}
            aucs = results["mia"]["aggregate"] if "mia" in results else None
            verdict = privacy.forgetting_verdict(per_sample["forget"], per_sample["nonmember"],
                                                 aucs)
            results["verdict"] = {"aggregate": {"forgotten": verdict["forgotten"],
                                                "share_forgotten": verdict["share_forgotten"]},
                                  "samples": verdict}
    return results


def evaluate(
    model,
    tokenizer,
    *,
    forget: list[Sample] | None,
    nonmember: list[Sample] | None,
    tasks: list[str] | None,
    limit: int | None,
    el_n: int = 10,
    judge: JudgeSettings | None = None,
    backend: str = "ours",
    wmdp: dict[str, list[dict]] | None = None,
    mmlu: list[dict] | None = None,
) -> dict:
    """Run the tasks (None = all but the per-set dialogue names, which ``dialogue`` covers);
    ``judge``: also have an LLM judge score the forget-set generations; ``backend="harness"``:
    score the tasks of ``harness.HARNESS_TASKS`` with lm-evaluation-harness instead.

    ``wmdp``: {label: checked question rows} (``eval_sets.question_rows``), each scored as
    ``wmdp:{label}`` by ``tasks.choice_accuracy`` with the lettered prompt (the same prompt and
    choices as lm-evaluation-harness's wmdp tasks). ``mmlu``: MMLU rows, scored as ``mmlu``: by
    the harness's per-subject mmlu tasks with ``backend="harness"``, else by our scorer on the
    same prompt; ``limit`` caps the questions of each file (each subject, for MMLU)."""
    from unlearnlm.evaluate.harness import backend_runner

    run_harness = backend_runner(backend)  # None for ours; fails early without lm_eval
    model = as_lm(model, tokenizer)
    if run_harness:
        model.hf_model()  # fails early for a model the harness cannot run
    names = resolve_tasks(tasks) if tasks or not (wmdp or mmlu) else []
    if limit is not None and limit < 1:
        raise UnlearnError(f"limit is {limit}; give 1 or more (or leave it out for everything)")
    for name in names:  # fail early, naming the fetch command or UNLEARNLM_DATA
        if name in eval_sets.TASK_FILES:
            eval_sets.eval_file(eval_sets.TASK_FILES[name])
        elif name in eval_sets.DIALOGUE_SETS:
            eval_sets.eval_file(f"{name}.json")
    nonmember = nonmember[:limit] if nonmember and limit is not None else nonmember
    results = _privacy_tasks(model, tokenizer, names, forget, nonmember, el_n, judge)
    for name in names:
        if name not in ("forget", "mia"):
            log.info("Task %s", name)
            section = run_harness(name, model.hf_model(), tokenizer, limit) if run_harness else None
            results[name] = section or _run_task(name, model, tokenizer, limit)
    for label, rows in (wmdp or {}).items():
        log.info("WMDP %s", label)
        subject = eval_sets.WMDP_SUBJECTS.get(label)
        items = eval_sets.question_items(rows[:limit] if limit else rows, subject)
        results[f"wmdp:{label}"] = choice_accuracy(model, tokenizer, items, model.context_limit())
        names.append(f"wmdp:{label}")
    if mmlu:
        log.info("MMLU, %d questions", len(mmlu))
        results["mmlu"] = mmlu_accuracy(model, tokenizer, mmlu, limit, backend)
        names.append("mmlu")
    judged_by = {"url": judge.base_url, "model": judge.model} if judge else None
    return {"tasks": results,
            "settings": {"tasks": names, "limit": limit, "el_n": el_n, "judge": judged_by,
                         "backend": backend}}


def mmlu_accuracy(model, tokenizer, rows: list[dict], limit: int | None, backend: str) -> dict:
    """MMLU accuracy over ``rows``, at most ``limit`` questions a subject: lm-evaluation-
    harness's mmlu tasks (``backend="harness"``) or our scorer on the same prompt."""
    if backend == "harness":
        from unlearnlm.evaluate.harness import harness_mmlu

        return harness_mmlu(as_lm(model, tokenizer).hf_model(), tokenizer, rows, limit)
    by_subject: dict[str, list[dict]] = {}
    for row in rows:
        by_subject.setdefault(str(row["subject"]), []).append(row)
    samples, subjects = [], {}
    for subject, docs in sorted(by_subject.items()):
        items = eval_sets.question_items(docs[:limit] if limit else docs,
                                         subject.replace("_", " "), f"{subject}-")
        scored = choice_accuracy(model, tokenizer, items, as_lm(model, tokenizer).context_limit())
        subjects[subject] = {"acc": scored["aggregate"]["acc"], "n": scored["aggregate"]["n"]}
        samples += [{"subject": subject, **row} for row in scored["samples"]]
    acc = mean([float(r["prediction"] == r["answer"]) for r in samples])
    return {"aggregate": {"acc": acc, "n": len(samples)}, "subjects": subjects,
            "samples": samples}


def extraction_nonmembers(limit: int | None) -> list[Record]:
    """The extraction benchmark's ``val`` rows (prefix + suffix, as split there), the first
    ``limit``: Pile text that GPT-Neo was not trained on, the default non-member set."""
    path = data_file("lm_extraction/lm_extraction_text.jsonl", "lm_extraction")
    records = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if '"split": "val"' not in line[:40]:
                continue
            row = json.loads(line)
            records.append(Record(f"val-{row['index']}", row["prefix"] + row["suffix"],
                                  row["prefix"], row["suffix"]))
            if limit is not None and len(records) >= limit:
                break
    return records


def write_results(result: dict, out_dir: str | Path) -> Path:
    """Write ``eval.json`` into ``out_dir`` atomically (``rundir.write_json``)."""
    return write_json(Path(out_dir) / "eval.json", result)


def plan_tasks(tasks: str | None, has_forget: bool) -> list[str]:
    """The ``--tasks`` value (comma-separated) validated; without it, every task, less ``forget``
    and ``mia`` when no forget set is given."""
    if tasks is not None:
        return resolve_tasks(tasks.split(","))
    return [t for t in resolve_tasks(None) if has_forget or t not in ("forget", "mia")]


def aggregate_table(result: dict) -> str:
    """One line per task: its aggregate numbers, rounded for reading."""
    lines = []
    for name, section in result["tasks"].items():
        cells = [f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                 for key, value in section["aggregate"].items()]
        lines.append(f"{name:22s} {'  '.join(cells)}")
    return "\n".join(lines)
