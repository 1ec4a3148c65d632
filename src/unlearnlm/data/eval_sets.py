"""Readers for the offline evaluation sets under ``$UNLEARNLM_DATA/eval`` (see the data README).

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
from unlearnlm.paths import data_root


@dataclass(frozen=True)
class ChoiceItem:
    """One multiple-choice question: choice i is ``continuations[i]`` after ``contexts[i]``."""

    id: str
    contexts: list[str]
    continuations: list[str]
    answer: int


def eval_dir() -> Path:
    """``$UNLEARNLM_DATA/eval``; UnlearnError naming UNLEARNLM_DATA when it is missing."""
    folder = data_root() / "eval"
    if not folder.is_dir():
        raise UnlearnError(
            f"evaluation data folder {folder} not found; set UNLEARNLM_DATA to the folder "
            "holding eval/ (see the data README)"
        )
    return folder


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
    rows = _csv_rows(eval_dir() / f"{name}.csv", None)
    texts = [row["text"] for row in rows if row.get("text", "").strip()]
    return texts[:limit] if limit is not None else texts


def wikipedia_paragraphs(count: int, seed: int, shortest: int = 300) -> list[str]:
    """``count`` Wikipedia lead paragraphs (``wiki/summaries_en-us.json``) of at least
    ``shortest`` characters, in a seeded random order: ordinary text unrelated to any forget set.
    """
    import random

    path = data_root() / "wiki" / "summaries_en-us.json"
    if not path.is_file():
        raise UnlearnError(f"{path} not found; set UNLEARNLM_DATA to the data folder or give "
                           "the general texts as a file")
    pages = json.loads(path.read_text(encoding="utf-8"))
    texts = [page["extract"] for page in pages.values() if len(page.get("extract", "")) >= shortest]
    random.Random(seed).shuffle(texts)
    return texts[:count]


def lambada_items(limit: int | None) -> list[tuple[str, str]]:
    """``eval/lambada.csv`` as (context, " last word"): the text split before its last word."""
    items = []
    for row in _csv_rows(eval_dir() / "lambada.csv", limit):
        text = row["text"].rstrip()
        cut = text.rfind(" ")
        items.append((text[:cut], text[cut:]))
    return items


def dialogue_items(name: str, limit: int | None) -> list[tuple[list[str], str]]:
    """``eval/{name}.json`` ({"text": {"i": [turns]}}) as (earlier turns, last turn)."""
    with open(_need(eval_dir() / f"{name}.json"), encoding="utf-8") as handle:
        conversations = json.load(handle)["text"]
    items = [(turns[:-1], turns[-1]) for turns in conversations.values() if len(turns) >= 2]
    return items[:limit] if limit is not None else items


# --- multiple choice ----------------------------------------------------------------------------


def _hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def hellaswag(limit: int | None) -> list[ChoiceItem]:
    """"{activity}: {ctx_a} {Ctx_b}" then " {ending}" (bracketed WikiHow tags removed)."""
    rows = arrow_rows(eval_dir() / "hf_arrow/hellaswag/none/validation", limit)
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
    folder = eval_dir() / "hf_arrow/winogrande/winogrande_xl/validation"
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
    for row in arrow_rows(eval_dir() / "hf_arrow/super_glue/copa/validation", limit):
        connector = {"cause": " because", "effect": " therefore"}[row["question"]]
        context = row["premise"].strip()[:-1] + connector
        choices = [" " + c[0].lower() + c[1:] for c in (row["choice1"], row["choice2"])]
        items.append(_same_context(str(row["idx"]), context, choices, int(row["label"])))
    return items


def arc(subset: str, limit: int | None) -> list[ChoiceItem]:
    """ARC-Easy / ARC-Challenge: "Question: {question}\\nAnswer:" then " {choice text}"."""
    items = []
    for row in arrow_rows(eval_dir() / f"hf_arrow/ai2_arc/{subset}/validation", limit):
        choices = [" " + text for text in row["choices"]["text"]]
        answer = row["choices"]["label"].index(row["answerKey"])
        items.append(_same_context(row["id"], f"Question: {row['question']}\nAnswer:", choices,
                                   answer))
    return items


def piqa(limit: int | None) -> list[ChoiceItem]:
    """"Question: {goal}\\nAnswer:" then " {sol1}" / " {sol2}"."""
    items = []
    for i, row in enumerate(arrow_rows(eval_dir() / "hf_arrow/piqa/plain_text/validation", limit)):
        choices = [" " + row["sol1"], " " + row["sol2"]]
        items.append(_same_context(str(i), f"Question: {row['goal']}\nAnswer:", choices,
                                   int(row["label"])))
    return items


def mathqa(limit: int | None) -> list[ChoiceItem]:
    """``eval/mathqa/dev.json``: "Question: {Problem}\\nAnswer:" then " {option}" for a..e."""
    with open(_need(eval_dir() / "mathqa/dev.json"), encoding="utf-8") as handle:
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
    for row in _csv_rows(eval_dir() / "pubmed_qa.csv", limit):
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
DIALOGUE_SETS = ("wizard_of_wikipedia", "empathetic_dialogues", "blended_skill_talk",
                 "wizard_of_internet")
