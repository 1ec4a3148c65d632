"""Readers for the evaluation sets under ``eval/`` of the data folder or of the data cache
(``paths.data_file``; see docs/data.md).

Each downstream task becomes a list of ``ChoiceItem``: per choice, the context the model reads and
the continuation it is scored on, plus the index of the right choice. The prompt formats follow
the zero-shot formats of EleutherAI's lm-evaluation-harness; each reader's docstring gives its own.
HF ``save_to_disk`` folders are read with ``pyarrow`` (the Arrow IPC stream of each shard).
"""

from __future__ import annotations

import ast
import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

from unlearnlm.errors import UnlearnError
from unlearnlm.paths import data_file


@dataclass(frozen=True)
class ChoiceItem:
    """One multiple-choice question: choice i is ``continuations[i]`` after ``contexts[i]``."""

    id: str
    contexts: list[str]
    continuations: list[str]
    answer: int


# the set ``unlearnlm data fetch`` downloads each evaluation file with (None: not downloadable)
_FETCHED_AS = {"wikitext.csv": "wikitext", "pile.csv": "pile",
               **{f"{name}.json": "dialogue" for name in (
                   "wizard_of_wikipedia", "empathetic_dialogues", "blended_skill_talk",
                   "wizard_of_internet")}}


def eval_file(relpath: str) -> Path:
    """``eval/{relpath}`` from the data folder or the data cache; when it is in neither, an
    UnlearnError naming ``unlearnlm data fetch NAME`` (or UNLEARNLM_DATA)."""
    return data_file(f"eval/{relpath}", _FETCHED_AS.get(relpath))


def _need(path: Path) -> Path:
    if not path.exists():
        raise UnlearnError(f"evaluation file {path} not found; check UNLEARNLM_DATA")
    return path


def _csv_rows(path: Path, limit: int | None) -> list[dict[str, str]]:
    csv.field_size_limit(2**31 - 1)
    with open(_need(path), newline="", encoding="utf-8") as handle:
        rows = []
        for row in csv.DictReader(handle):
            if limit is not None and len(rows) >= limit:
                break
            rows.append(row)
    return rows


def arrow_rows(folder: Path, limit: int | None = None) -> list[dict]:
    """The rows of a ``datasets.save_to_disk`` folder, read shard by shard with pyarrow."""
    import pyarrow as pa

    shards = sorted(_need(folder).glob("data-*.arrow"))
    if not shards:
        raise UnlearnError(f"{folder} holds no data-*.arrow shard; check UNLEARNLM_DATA")
    rows: list[dict] = []
    for shard in shards:
        with pa.memory_map(str(shard)) as source:
            rows.extend(pa.ipc.open_stream(source).read_all().to_pylist())
        if limit is not None and len(rows) >= limit:
            return rows[:limit]
    return rows


def _same_context(item_id: str, context: str, choices: list[str], answer: int) -> ChoiceItem:
    return ChoiceItem(item_id, [context] * len(choices), choices, answer)


# --- text corpora -------------------------------------------------------------------------------


def corpus_texts(name: str, limit: int | None) -> list[str]:
    """The ``text`` column of ``eval/pile.csv`` or ``eval/wikitext.csv``, non-empty docs."""
    rows = _csv_rows(eval_file(f"{name}.csv"), None)
    texts = [row["text"] for row in rows if row.get("text", "").strip()]
    return texts[:limit] if limit is not None else texts


def wikipedia_paragraphs(count: int, seed: int, shortest: int = 300) -> list[str]:
    """``count`` Wikipedia lead paragraphs (``wiki/summaries_en-us.json``) of at least
    ``shortest`` characters, in a seeded random order: ordinary text unrelated to any forget set.
    """
    import random

    path = data_file("wiki/summaries_en-us.json", None)
    pages = json.loads(path.read_text(encoding="utf-8"))
    texts = [page["extract"] for page in pages.values() if len(page.get("extract", "")) >= shortest]
    random.Random(seed).shuffle(texts)
    return texts[:count]


def lambada_items(limit: int | None) -> list[tuple[str, str]]:
    """``eval/lambada.csv`` as (context, " last word"): the text split before its last word."""
    items = []
    for row in _csv_rows(eval_file("lambada.csv"), limit):
        text = row["text"].rstrip()
        cut = text.rfind(" ")
        items.append((text[:cut], text[cut:]))
    return items


def dialogue_items(name: str, limit: int | None) -> list[tuple[list[str], str]]:
    """``eval/{name}.json`` ({"text": {"i": [turns]}}) as (earlier turns, last turn)."""
    with open(eval_file(f"{name}.json"), encoding="utf-8") as handle:
        conversations = json.load(handle)["text"]
    items = [(turns[:-1], turns[-1]) for turns in conversations.values() if len(turns) >= 2]
    return items[:limit] if limit is not None else items


# --- multiple choice ----------------------------------------------------------------------------


def _hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def hellaswag(limit: int | None) -> list[ChoiceItem]:
    """"{activity}: {ctx_a} {Ctx_b}" then " {ending}" (bracketed WikiHow tags removed)."""
    rows = arrow_rows(eval_file("hf_arrow/hellaswag/none/validation"), limit)
    items = []
    for row in rows:
        ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
        context = _hellaswag_clean(row["activity_label"] + ": " + ctx)
        endings = [" " + _hellaswag_clean(e) for e in row["endings"]]
        items.append(_same_context(str(row["ind"]), context, endings, int(row["label"])))
    return items


def winogrande(limit: int | None) -> list[ChoiceItem]:
    """Partial scoring: context = the sentence up to "_" with each option filled in; the
    continuation (the same for both) = the rest of the sentence."""
    folder = eval_file("hf_arrow/winogrande/winogrande_xl/validation")
    items = []
    for i, row in enumerate(arrow_rows(folder, limit)):
        cut = row["sentence"].index("_")
        before, after = row["sentence"][:cut], " " + row["sentence"][cut + 1 :].strip()
        contexts = [before + row["option1"], before + row["option2"]]
        items.append(ChoiceItem(str(i), contexts, [after, after], int(row["answer"]) - 1))
    return items


def copa(limit: int | None) -> list[ChoiceItem]:
    """"{premise without its full stop} because|therefore" then " {choice, first letter lower}"."""
    items = []
    for row in arrow_rows(eval_file("hf_arrow/super_glue/copa/validation"), limit):
        connector = {"cause": " because", "effect": " therefore"}[row["question"]]
        context = row["premise"].strip()[:-1] + connector
        choices = [" " + c[0].lower() + c[1:] for c in (row["choice1"], row["choice2"])]
        items.append(_same_context(str(row["idx"]), context, choices, int(row["label"])))
    return items


def arc(subset: str, limit: int | None) -> list[ChoiceItem]:
    """ARC-Easy / ARC-Challenge: "Question: {question}\\nAnswer:" then " {choice text}"."""
    items = []
    for row in arrow_rows(eval_file(f"hf_arrow/ai2_arc/{subset}/validation"), limit):
        choices = [" " + text for text in row["choices"]["text"]]
        answer = row["choices"]["label"].index(row["answerKey"])
        items.append(_same_context(row["id"], f"Question: {row['question']}\nAnswer:", choices,
                                   answer))
    return items


def piqa(limit: int | None) -> list[ChoiceItem]:
    """"Question: {goal}\\nAnswer:" then " {sol1}" / " {sol2}"."""
    items = []
    for i, row in enumerate(arrow_rows(eval_file("hf_arrow/piqa/plain_text/validation"), limit)):
        choices = [" " + row["sol1"], " " + row["sol2"]]
        items.append(_same_context(str(i), f"Question: {row['goal']}\nAnswer:", choices,
                                   int(row["label"])))
    return items


def mathqa(limit: int | None) -> list[ChoiceItem]:
    """``eval/mathqa/dev.json``: "Question: {Problem}\\nAnswer:" then " {option}" for a..e."""
    with open(eval_file("mathqa/dev.json"), encoding="utf-8") as handle:
        rows = json.load(handle)
    items = []
    for i, row in enumerate(rows[:limit] if limit is not None else rows):
        options = re.findall(r"[abcd] \) .*?, |e \) .*?$", row["options"])
        choices = [" " + option[4:].rstrip(" ,") for option in options]
        items.append(_same_context(str(i), f"Question: {row['Problem']}\nAnswer:", choices,
                                   ord(row["correct"]) - ord("a")))
    return items


def _pubmed_contexts(cell: str) -> str:
    """The paragraphs of pubmed_qa.csv's ``context`` cell, a printed dict of numpy arrays."""
    plain = re.sub(r"array\((\[.*?\]),\s*dtype=object\)", r"\1", cell, flags=re.S)
    try:
        return " ".join(ast.literal_eval(plain)["contexts"])
    except (ValueError, SyntaxError, KeyError, TypeError):
        return cell


def pubmedqa(limit: int | None) -> list[ChoiceItem]:
    """``eval/pubmed_qa.csv`` (the paper's 500): "Abstract: {contexts}\\nQuestion: {question}
    \\nAnswer:" then " yes" / " no" / " maybe"."""
    labels = ["yes", "no", "maybe"]
    items = []
    for row in _csv_rows(eval_file("pubmed_qa.csv"), limit):
        context = (f"Abstract: {_pubmed_contexts(row['context'])}\nQuestion: {row['question']}"
                   "\nAnswer:")
        items.append(_same_context(row["pubid"], context, [" " + x for x in labels],
                                   labels.index(row["final_decision"])))
    return items


CHOICE_TASKS = {
    "hellaswag": hellaswag,
    "winogrande": winogrande,
    "copa": copa,
    "arc_easy": lambda limit: arc("ARC-Easy", limit),
    "arc_challenge": lambda limit: arc("ARC-Challenge", limit),
    "piqa": piqa,
    "mathqa": mathqa,
    "pubmedqa": pubmedqa,
}
TASK_FILES = {  # the file each task reads, relative to eval/ (checked before a model loads)
    "ppl_pile": "pile.csv", "ppl_wikitext": "wikitext.csv", "lambada": "lambada.csv",
    "hellaswag": "hf_arrow/hellaswag/none/validation",
    "winogrande": "hf_arrow/winogrande/winogrande_xl/validation",
    "copa": "hf_arrow/super_glue/copa/validation",
    "arc_easy": "hf_arrow/ai2_arc/ARC-Easy/validation",
    "arc_challenge": "hf_arrow/ai2_arc/ARC-Challenge/validation",
    "piqa": "hf_arrow/piqa/plain_text/validation", "mathqa": "mathqa/dev.json",
    "pubmedqa": "pubmed_qa.csv",
}
DIALOGUE_SETS = ("wizard_of_wikipedia", "empathetic_dialogues", "blended_skill_talk",
                 "wizard_of_internet")


# --- question files: WMDP, MMLU (the user's own copies, or fetched ones) -------------------------

WMDP_SUBJECTS = {"wmdp-bio": "biology", "wmdp-chem": "chemistry", "wmdp-cyber": "cybersecurity"}
QUESTION_FORMAT = ("each row needs question (text), choices (a list of 2 to 26 texts) and answer "
                   "(the index of the right choice)")


def question_rows(path: str | Path, need_subject: bool = False) -> list[dict]:
    """The rows of a question file (.jsonl, .json list or .parquet) in WMDP's / MMLU's format,
    checked: ``question`` text, ``choices`` list of texts, ``answer`` an index into them (and
    ``subject`` text when ``need_subject``). UnlearnError naming the row and the fix otherwise."""
    path = Path(path)
    if not path.is_file():
        raise UnlearnError(f"question file {path} not found; give a .jsonl, .json or .parquet "
                           "file of WMDP's format")
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
        elif path.suffix == ".jsonl":
            lines = path.read_text(encoding="utf-8").splitlines()
            rows = [json.loads(line) for line in lines if line.strip()]
        elif path.suffix == ".json":
            rows = json.loads(path.read_text(encoding="utf-8"))
        else:
            raise UnlearnError(f"question file {path}: unknown suffix {path.suffix!r}; give "
                               ".jsonl, .json (a list of rows) or .parquet")
    except (ValueError, OSError) as exc:
        if isinstance(exc, UnlearnError):
            raise
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UnlearnError(f"question file {path} does not parse ({first}); "
                           f"{QUESTION_FORMAT}") from exc
    if not isinstance(rows, list) or not rows:
        raise UnlearnError(f"question file {path} holds no question; {QUESTION_FORMAT}")
    for number, row in enumerate(rows, 1):
        _check_question(path, number, row, need_subject)
    return rows


def _check_question(path: Path, number: int, row, need_subject: bool) -> None:
    where = f"question file {path}, row {number}"
    if not isinstance(row, dict):
        raise UnlearnError(f"{where} is not an object; {QUESTION_FORMAT}")
    for key in ("question", "choices", "answer") + (("subject",) if need_subject else ()):
        if key not in row:
            raise UnlearnError(f"{where} has no {key!r}; {QUESTION_FORMAT}"
                               + (" and subject (text)" if key == "subject" else ""))
    choices = row["choices"]
    if not isinstance(row["question"], str) or not row["question"].strip():
        raise UnlearnError(f"{where}: question is not a non-empty text; {QUESTION_FORMAT}")
    if (not isinstance(choices, list) or not 2 <= len(choices) <= 26
            or not all(isinstance(c, str) for c in choices)):
        raise UnlearnError(f"{where}: choices is not a list of 2 to 26 texts; {QUESTION_FORMAT}")
    answer = row["answer"]
    if isinstance(answer, bool) or not isinstance(answer, int) \
            or not 0 <= answer < len(choices):
        raise UnlearnError(f"{where}: answer {answer!r} is not an index of its "
                           f"{len(choices)} choices (0 to {len(choices) - 1})")


def letter_prompt(question: str, choices: list[str], subject: str | None = None) -> str:
    """WMDP's and MMLU's zero-shot prompt as lm-evaluation-harness writes it: an optional
    "The following are multiple choice questions (with answers) about {subject}." line, the
    question, the choices lettered A., B., ..., then "Answer:"; the choices scored are " A",
    " B", ..."""
    head = (f"The following are multiple choice questions (with answers) about {subject}.\n\n"
            if subject else "")
    lettered = "".join(f"\n{chr(65 + i)}. {choice}" for i, choice in enumerate(choices))
    return f"{head}{question.strip()}{lettered}\nAnswer:"


def question_items(rows: list[dict], subject: str | None = None, id_prefix: str = ""
                   ) -> list[ChoiceItem]:
    """Checked question rows (``question_rows``) as ChoiceItems with the lettered prompt;
    ``subject``: one subject for all, else each row's own ``subject`` when it has one."""
    items = []
    for i, row in enumerate(rows):
        about = subject or (row["subject"].replace("_", " ") if row.get("subject") else None)
        letters = [f" {chr(65 + k)}" for k in range(len(row["choices"]))]
        items.append(_same_context(f"{id_prefix}{i}", letter_prompt(row["question"],
                                                                    row["choices"], about),
                                   letters, int(row["answer"])))
    return items


def wmdp_file(spec: str) -> tuple[str, Path]:
    """A ``--wmdp`` entry as (label, file): a path, or a WMDP config name (``wmdp-bio`` or
    ``bio``) read from the data folder or the cache (``unlearnlm data fetch wmdp``)."""
    name = spec if spec.startswith("wmdp-") else f"wmdp-{spec}"
    if not Path(spec).exists() and name in WMDP_SUBJECTS:
        return name, data_file(f"wmdp/{name}.parquet", "wmdp")
    path = Path(spec).expanduser()
    return path.stem, path


def mmlu_rows(spec: str) -> list[dict]:
    """MMLU rows (question, subject, choices, answer) from ``spec``: a file, a folder holding
    the hub's parquet files (``all/test-*.parquet``, else ``*/test-*.parquet``), or ``mmlu``:
    the fetched copy (``unlearnlm data fetch mmlu``)."""
    path = Path(spec).expanduser()
    if spec == "mmlu" and not path.exists():
        path = data_file("mmlu/test.parquet", "mmlu")
    if path.is_dir():
        files = sorted(path.glob("all/test-*.parquet")) or sorted(path.glob("*/test-*.parquet"))
        if not files:
            raise UnlearnError(f"{path} holds no all/test-*.parquet nor SUBJECT/test-*.parquet; "
                               "give the folder of a copy of cais/mmlu or one file of rows")
        return [row for file in files for row in question_rows(file, need_subject=True)]
    return question_rows(path, need_subject=True)
