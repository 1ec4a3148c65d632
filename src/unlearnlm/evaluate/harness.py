"""EleutherAI's lm-evaluation-harness as a second backend for the zero-shot scored tasks.

``harness_accuracy(model, tokenizer, task, limit)`` runs one task of ``HARNESS_TASKS`` through
``lm_eval.simple_evaluate`` on the in-memory model (wrapped in the harness's ``HFLM``), reading
our local copy of the data set: it writes, in a temporary folder, a task config that
``include``s the harness's own YAML for that task (so prompt, choices, target and metric code
are the harness's) and only points the data set at the local file (``dataset_path`` = ``arrow``
/ ``json`` / ``csv`` with ``dataset_kwargs.data_files``) and the split at the one we have.
Nothing is read from the Hugging Face hub.

Settings that make it score what ``downstream`` scores: zero-shot, no BOS token added
(``add_bos_token=False``), batch size 8, and ``max_length`` one less than our window
(``lm.generation.context_limit``): the harness keeps the last ``max_length + 1`` tokens of context +
continuation and feeds all but the last, so both condition on the same tokens. No global random
generator is reseeded (the harness's seeds are passed as None).

Where the two definitions still differ (``tests/test_harness.py`` pins each one):

- ``acc_norm``: the harness divides a choice's log-likelihood by the choice's length in
  characters, without the space that joins it to the context; ``downstream`` divides by the
  UTF-8 bytes of the continuation including that space. ``acc`` is the same rule in both.
- ``copa``: the harness's choices already start with a space and it joins them with another one
  (``"... because" + "  the sun rose."``); ours uses one space.
- ``pubmedqa``: the harness joins the abstract's paragraphs with newlines, ours with spaces.
  The harness's config reads bigbio's fold-0 test split; here it reads our ``pubmed_qa.csv``
  (the ICU paper's 500 questions) converted to that schema.
- ``winogrande``, ``copa``, ``pubmedqa``: the harness's configs report ``acc`` only.

Tasks that stay ours (``downstream``): perplexity (``ppl_*``: ours is token perplexity of each
document's first 512 tokens, the harness's wikitext is word perplexity over rolling windows of
whole documents), dialogue F1 (the harness has no such task), and the forget / privacy metrics.

``lm_eval`` is optional: ``pip install 'unlearnlm[harness]'``.
"""

from __future__ import annotations

import ast
import csv
import json
import logging
import math
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from unlearnlm.data.eval_sets import eval_file
from unlearnlm.errors import UnlearnError

log = logging.getLogger(__name__)

BATCH_SIZE = 8
INSTALL_HINT = "install unlearnlm[harness] (pip install 'unlearnlm[harness]', i.e. lm-eval 0.4.x)"


@dataclass(frozen=True)
class HarnessTask:
    """One task: the harness's YAML for it and where our local copy of its data lives."""

    config: str  # the harness's task YAML, relative to the installed ``lm_eval/tasks``
    builder: str  # ``datasets`` builder that reads the local copy: arrow, json or csv
    data: str  # the local copy, relative to ``$UNLEARNLM_DATA/eval``
    split: str  # the one split the task is given (the harness reads test, else validation)
    convert: Callable[[Path, Path], Path] | None = None  # local file -> file the YAML reads


def _pubmed_paragraphs(cell: str) -> list[str]:
    """The abstract's paragraphs in ``pubmed_qa.csv``'s ``context`` cell (a printed dict of
    numpy arrays), or the whole cell when it does not parse."""
    plain = re.sub(r"array\((\[.*?\]),\s*dtype=object\)", r"\1", cell, flags=re.S)
    try:
        return [str(p) for p in ast.literal_eval(plain)["contexts"]]
    except (ValueError, SyntaxError, KeyError, TypeError):
        return [cell]


def _pubmed_docs(source: Path, folder: Path) -> Path:
    """``pubmed_qa.csv`` rewritten as JSON lines with the fields the harness's pubmedqa reads
    (``QUESTION``, ``CONTEXTS``, ``final_decision``; bigbio's source schema)."""
    csv.field_size_limit(2**31 - 1)
    target = folder / "pubmedqa.jsonl"
    with open(source, newline="", encoding="utf-8") as handle, \
            open(target, "w", encoding="utf-8") as out:
        for row in csv.DictReader(handle):
            doc = {"PUBMED_ID": row["pubid"], "QUESTION": row["question"],
                   "CONTEXTS": _pubmed_paragraphs(row["context"]),
                   "final_decision": row["final_decision"]}
            out.write(json.dumps(doc, ensure_ascii=False) + "\n")
    return target


HARNESS_TASKS: dict[str, HarnessTask] = {
    "arc_easy": HarnessTask("arc/arc_easy.yaml", "arrow",
                            "hf_arrow/ai2_arc/ARC-Easy/validation", "validation"),
    "arc_challenge": HarnessTask("arc/arc_challenge.yaml", "arrow",
                                 "hf_arrow/ai2_arc/ARC-Challenge/validation", "validation"),
    "piqa": HarnessTask("piqa/piqa.yaml", "arrow", "hf_arrow/piqa/plain_text/validation",
                        "validation"),
    "hellaswag": HarnessTask("hellaswag/hellaswag.yaml", "arrow",
                             "hf_arrow/hellaswag/none/validation", "validation"),
    "winogrande": HarnessTask("winogrande/default.yaml", "arrow",
                              "hf_arrow/winogrande/winogrande_xl/validation", "validation"),
    "copa": HarnessTask("super_glue/copa/default.yaml", "arrow",
                        "hf_arrow/super_glue/copa/validation", "validation"),
    "mathqa": HarnessTask("mathqa/mathqa.yaml", "json", "mathqa/dev.json", "validation"),
    "pubmedqa": HarnessTask("pubmedqa/pubmedqa.yaml", "json", "pubmed_qa.csv", "test",
                            _pubmed_docs),
    "lambada": HarnessTask("lambada/lambada_openai.yaml", "csv", "lambada.csv", "test"),
}


def require_lm_eval():
    """The ``lm_eval`` module; UnlearnError with the install line when it is missing."""
    try:
        import lm_eval
        import lm_eval.tasks  # noqa: F401
        from lm_eval.models.huggingface import HFLM  # noqa: F401
    except ImportError as exc:
        raise UnlearnError(f"the harness backend needs lm-evaluation-harness; {INSTALL_HINT} "
                           f"({exc})") from exc
    return lm_eval


def lm_eval_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm_eval")
    except PackageNotFoundError:  # pragma: no cover - installed without metadata
        return "unknown"


def _data_files(spec: HarnessTask, folder: Path) -> list[str]:
    source = eval_file(spec.data)
    if spec.convert is not None:
        return [str(spec.convert(source, folder))]
    if spec.builder == "arrow":
        shards = sorted(source.glob("data-*.arrow"))
        if not shards:
            raise UnlearnError(f"{source} holds no data-*.arrow shard; check UNLEARNLM_DATA")
        return [str(s) for s in shards]
    return [str(source)]


def write_task_config(name: str, folder: Path) -> Path:
    """Write ``{folder}/{name}.yaml``: the harness's own config for the task, its data set
    replaced by our local copy (one split), scored zero-shot."""
    lm_eval = require_lm_eval()
    spec = HARNESS_TASKS[name]
    base = Path(lm_eval.tasks.__file__).parent / spec.config
    if not base.is_file():
        raise UnlearnError(f"lm-eval {lm_eval_version()} has no {spec.config}; "
                           "use lm-eval 0.4.x or --backend ours")
    config = {
        "include": str(base),
        "task": name,
        "tag": None,
        "dataset_path": spec.builder,
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {spec.split: _data_files(spec, folder)},
                           "cache_dir": str(folder / "datasets_cache")},
        "training_split": None,
        "validation_split": spec.split if spec.split == "validation" else None,
        "test_split": spec.split if spec.split == "test" else None,
        "fewshot_split": None,
        "num_fewshot": 0,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def _sample_rows(name: str, samples: list[dict]) -> list[dict]:
    rows = []
    for sample in sorted(samples, key=lambda s: s["doc_id"]):
        pairs = [tuple(r) for r in sample["filtered_resps"]]
        row = {"doc_id": sample["doc_id"], "log_likelihoods": [float(ll) for ll, _ in pairs]}
        if name == "lambada":
            row.update(log_likelihood=row.pop("log_likelihoods")[0], correct=bool(pairs[0][1]))
        else:
            row["correct"] = bool(sample["acc"])
            if "acc_norm" in sample:
                row["correct_norm"] = bool(sample["acc_norm"])
        rows.append(row)
    return rows


def harness_accuracy(
    model, tokenizer, task_name: str, limit: int | None = None, max_tokens: int | None = None
) -> dict:
    """Score one task of ``HARNESS_TASKS`` with lm-evaluation-harness on the in-memory model.

    Returns the shape of ``tasks.choice_accuracy``: ``{"aggregate": {"acc", "acc_norm",
    "n"}, "samples": [...], "harness": {...}}``; for ``lambada``, ``acc`` (greedy last word),
    ``log_likelihood`` (mean over passages) and ``perplexity`` (the harness's, exp of minus that
    mean). ``max_tokens``: our window (default ``lm.generation.context_limit(model)``).
    """
    if task_name not in HARNESS_TASKS:
        raise UnlearnError(f"task {task_name!r} has no harness definition here; harness tasks: "
                           f"{', '.join(HARNESS_TASKS)} (others run with --backend ours)")
    if limit is not None and limit < 1:
        raise UnlearnError(f"limit is {limit}; give 1 or more (or leave it out for everything)")
    from unlearnlm.lm.generation import context_limit

    window = max_tokens or context_limit(model)
    with tempfile.TemporaryDirectory(prefix="unlearnlm-harness-") as tmp:
        write_task_config(task_name, Path(tmp))
        out = _simple_evaluate(model, tokenizer, Path(tmp), [task_name], limit, window)
    log.info("lm-eval %s scored %s", lm_eval_version(), task_name)
    metrics = out["results"][task_name]
    rows = _sample_rows(task_name, out["samples"][task_name])
    harness = {"version": lm_eval_version(), "config": HARNESS_TASKS[task_name].config,
               "max_length": max(window - 1, 1)}
    if task_name == "lambada":
        mean_ll = sum(r["log_likelihood"] for r in rows) / max(len(rows), 1)
        aggregate = {"acc": float(metrics["acc,none"]), "log_likelihood": mean_ll,
                     "perplexity": math.exp(-mean_ll), "n": len(rows)}
    else:
        aggregate = {"acc": float(metrics["acc,none"])}
        if "acc_norm,none" in metrics:
            aggregate["acc_norm"] = float(metrics["acc_norm,none"])
        aggregate["n"] = len(rows)
    return {"aggregate": aggregate, "samples": rows, "harness": harness}


def _simple_evaluate(model, tokenizer, folder: Path, tasks: list[str], limit: int | None,
                     window: int) -> dict:
    """``lm_eval.simple_evaluate`` of the task configs in ``folder`` on the in-memory model."""
    lm_eval = require_lm_eval()
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from unlearnlm.lm.generation import evaluation_mode

    chatty = logging.getLogger("lm_eval")  # its INFO lines (task listing, seeds) every call
    level = chatty.level
    chatty.setLevel(max(level, logging.WARNING))
    try:
        manager = TaskManager(include_path=str(folder), include_defaults=False)
        with evaluation_mode(model):
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=BATCH_SIZE,
                      max_length=max(window - 1, 1), add_bos_token=False)
            return lm_eval.simple_evaluate(
                model=lm, tasks=tasks, task_manager=manager, limit=limit,
                num_fewshot=None, bootstrap_iters=0, log_samples=True, random_seed=None,
                numpy_random_seed=None, torch_random_seed=None,
            )
    finally:
        chatty.setLevel(level)


def write_mmlu_configs(rows: list[dict], folder: Path) -> list[str]:
    """One task config per subject of the MMLU ``rows``: the harness's own
    ``mmlu/default/mmlu_{subject}.yaml`` (prompt, letters, description), its data set replaced
    by the subject's rows as JSON lines, test split only, zero-shot. Returns the task names."""
    lm_eval = require_lm_eval()
    default = Path(lm_eval.tasks.__file__).parent / "mmlu" / "default"
    template = default / "_default_template_yaml"
    if not template.is_file():
        raise UnlearnError(f"lm-eval {lm_eval_version()} has no mmlu/default task; use "
                           "lm-eval 0.4.x or --backend ours")
    by_subject: dict[str, list[dict]] = {}
    for row in rows:
        by_subject.setdefault(str(row["subject"]), []).append(row)
    names = []
    for subject, docs in sorted(by_subject.items()):
        data = folder / f"mmlu_{subject}.jsonl"
        data.write_text("".join(json.dumps({k: doc[k] for k in ("question", "subject",
                                                                "choices", "answer")},
                                           ensure_ascii=False) + "\n" for doc in docs),
                        encoding="utf-8")
        own = default / f"mmlu_{subject}.yaml"
        config = {
            "include": str(own if own.is_file() else template),
            "task": f"mmlu_{subject}",
            "tag": None,
            "dataset_path": "json",
            "dataset_name": None,
            "dataset_kwargs": {"data_files": {"test": [str(data)]},
                               "cache_dir": str(folder / "datasets_cache")},
            "test_split": "test",
            "fewshot_split": None,
            "num_fewshot": 0,
        }
        if not own.is_file():  # a subject the harness does not know: its own description
            config["description"] = ("The following are multiple choice questions (with "
                                     f"answers) about {subject.replace('_', ' ')}.\n\n")
        (folder / f"mmlu_{subject}.yaml").write_text(yaml.safe_dump(config, sort_keys=False),
                                                     encoding="utf-8")
        names.append(f"mmlu_{subject}")
    return names


def harness_mmlu(model, tokenizer, rows: list[dict], limit: int | None = None,
                 max_tokens: int | None = None) -> dict:
    """MMLU accuracy by lm-evaluation-harness's mmlu tasks (one per subject, zero-shot) on
    ``rows`` (question, subject, choices, answer; a local copy, never the hub). ``limit``:
    questions per subject. The aggregate ``acc`` is the mean over all questions (the harness's
    mmlu group weighs subjects by size); ``subjects`` holds each subject's."""
    from unlearnlm.lm.generation import context_limit

    window = max_tokens or context_limit(model)
    with tempfile.TemporaryDirectory(prefix="unlearnlm-harness-") as tmp:
        names = write_mmlu_configs(rows, Path(tmp))
        out = _simple_evaluate(model, tokenizer, Path(tmp), names, limit, window)
    samples, subjects = [], {}
    for name in names:
        rows_of = _sample_rows(name, out["samples"][name])
        subjects[name[len("mmlu_"):]] = {"acc": float(out["results"][name]["acc,none"]),
                                         "n": len(rows_of)}
        samples += [{"subject": name[len("mmlu_"):], **row} for row in rows_of]
    acc = sum(r["correct"] for r in samples) / max(len(samples), 1)
    return {"aggregate": {"acc": acc, "n": len(samples)}, "subjects": subjects,
            "samples": samples, "harness": {"version": lm_eval_version(),
                                            "config": "mmlu/default", "max_length":
                                            max(window - 1, 1)}}


BACKENDS = ("ours", "harness")


def backend_runner(backend: str):
    """For ``evaluate``: None for ``ours``; for ``harness``, a function ``(task, model,
    tokenizer, limit)`` that scores a task of ``HARNESS_TASKS`` with the harness and returns None
    for the other tasks (they stay ours). Checks that lm_eval imports before anything runs."""
    if backend not in BACKENDS:
        raise UnlearnError(f"unknown backend {backend!r}; give one of {', '.join(BACKENDS)}")
    if backend == "ours":
        return None
    require_lm_eval()

    def run(task_name: str, model, tokenizer, limit: int | None) -> dict | None:
        if task_name not in HARNESS_TASKS:
            return None
        return harness_accuracy(model, tokenizer, task_name, limit)

    return run
