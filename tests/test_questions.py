"""Question files (WMDP's and MMLU's format) scored by the log-likelihood of the lettered
answers, on the tiny random Llama: the prediction is the argmax of log P(" A" | prompt), ...
computed here on our own; a malformed file is a one-line error before any model loads; MMLU
through lm-evaluation-harness's own mmlu tasks on a local copy gives the same log-likelihoods
as our scorer on the same prompt."""

from __future__ import annotations

import json

import pytest
import torch

from unlearnlm.cli import main
from unlearnlm.data import eval_sets
from unlearnlm.errors import UnlearnError
from unlearnlm.evaluate import evaluate

QUESTIONS = [
    {"question": "Which organelle makes ATP?", "choices": ["Nucleus", "Mitochondrion", "Ribosome",
                                                           "Vacuole"], "answer": 1},
    {"question": "What is 2 + 2?", "choices": ["3", "4", "5", "22"], "answer": 1},
    {"question": "Which gas do plants take in?", "choices": ["Oxygen", "Helium", "Carbon dioxide",
                                                             "Neon"], "answer": 2},
]


@pytest.fixture(scope="module")
def llama(tiny_llama, tiny_llama_dir, one_torch_thread):
    from transformers import AutoTokenizer

    return tiny_llama, AutoTokenizer.from_pretrained(tiny_llama_dir)


def _write(path, rows):
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _letter_scores(model, tokenizer, row, subject=None) -> list[float]:
    """log P(" A" | prompt), ... by one forward pass per choice, summed over its tokens."""
    prompt = ("The following are multiple choice questions (with answers) about "
              f"{subject}.\n\n" if subject else "") + row["question"] + "".join(
        f"\n{chr(65 + i)}. {c}" for i, c in enumerate(row["choices"])) + "\nAnswer:"
    context = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    scores = []
    for k in range(len(row["choices"])):
        target = tokenizer(f" {chr(65 + k)}", add_special_tokens=False)["input_ids"]
        ids = torch.tensor([context + target])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(ids).logits[0].float(), -1)
        scores.append(sum(logprobs[len(context) - 1 + j, t].item()
                          for j, t in enumerate(target)))
    return scores


def test_prompt_is_the_harness_wmdp_prompt():
    assert eval_sets.letter_prompt(" What? ", ["x", "y"], "biology") == (
        "The following are multiple choice questions (with answers) about biology.\n\n"
        "What?\nA. x\nB. y\nAnswer:")


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
def test_wmdp_accuracy_is_the_argmax_of_letter_likelihoods(llama, tmp_path, suffix):
    model, tokenizer = llama
    scores = [_letter_scores(model, tokenizer, row, "biology") for row in QUESTIONS]
    predicted = [max(range(4), key=s.__getitem__) for s in scores]
    rows = [dict(row, answer=p) for row, p in zip(QUESTIONS, predicted)]  # all right
    rows[0]["answer"] = (predicted[0] + 1) % 4  # one wrong: accuracy 2/3
    path = _write(tmp_path / f"wmdp-bio{suffix}", rows)
    label, found = eval_sets.wmdp_file(str(path))
    result = evaluate(model, tokenizer, forget=None, nonmember=None, tasks=None, limit=None,
                      wmdp={label: eval_sets.question_rows(found)})
    section = result["tasks"]["wmdp:wmdp-bio"]
    assert section["aggregate"]["acc"] == pytest.approx(2 / 3)
    assert [s["prediction"] for s in section["samples"]] == predicted
    assert section["samples"][1]["log_likelihoods"] == pytest.approx(scores[1], abs=1e-4)
    assert result["settings"]["tasks"] == ["wmdp:wmdp-bio"]


@pytest.mark.parametrize(("rows", "problem"), [
    ([], "holds no question"),
    ([{"question": "Q?", "choices": ["a", "b"]}], "row 1 has no 'answer'"),
    ([QUESTIONS[0], {"question": "Q?", "choices": ["a", "b"], "answer": 2}],
     "row 2: answer 2 is not an index of its 2 choices"),
    ([{"question": "Q?", "choices": "abcd", "answer": 0}], "choices is not a list"),
    ([{"question": "", "choices": ["a", "b"], "answer": 0}], "question is not a non-empty"),
])
def test_malformed_question_file(tmp_path, rows, problem):
    path = _write(tmp_path / "bad.json", rows)
    with pytest.raises(UnlearnError, match=problem):
        eval_sets.question_rows(path)


def test_malformed_file_on_the_command_line_exits_2_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "Q?", "choices": ["a", "b", "c", "d"], "answer": 4}\n')
    out = tmp_path / "out"
    code = main(["eval", "--model", str(tmp_path / "no-model"), "--wmdp", f"{bad}",
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "answer 4 is not an index" in err
    assert not out.exists()
    bad.write_text("not json\n")
    assert main(["eval", "--model", "x", "--wmdp", str(bad), "--out", str(out)]) == 2
    assert "does not parse" in capsys.readouterr().err


def test_fetched_wmdp_missing_names_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARNLM_DATA", str(tmp_path))
    monkeypatch.setenv("UNLEARNLM_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UnlearnError, match="unlearnlm data fetch wmdp"):
        eval_sets.wmdp_file("bio")
    with pytest.raises(UnlearnError, match="unlearnlm data fetch mmlu"):
        eval_sets.mmlu_rows("mmlu")


def _mmlu_rows() -> list[dict]:
    rows = [dict(row, subject="high_school_biology") for row in QUESTIONS]
    rows += [{"question": f"What is {a} + {a}?", "subject": "elementary_mathematics",
              "choices": [str(a), str(2 * a), str(3 * a), str(a + 1)], "answer": 1}
             for a in (1, 2)]
    return rows


def test_mmlu_subjects_are_picked_and_checked(tmp_path):
    from unlearnlm.evaluate.settings import EvalSettings

    path = _write(tmp_path / "mmlu.parquet", _mmlu_rows())
    s = EvalSettings(model="m", out="o", mmlu=str(path), mmlu_subjects="elementary_mathematics")
    assert s.planned_tasks() == []
    _, rows = s.question_sets()
    assert [r["subject"] for r in rows] == ["elementary_mathematics"] * 2
    with pytest.raises(UnlearnError, match="'astronomy' is not a subject"):
        EvalSettings(model="m", out="o", mmlu=str(path), mmlu_subjects="astronomy")
    no_subject = _write(tmp_path / "plain.jsonl", QUESTIONS)
    with pytest.raises(UnlearnError, match="has no 'subject'"):
        EvalSettings(model="m", out="o", mmlu=str(no_subject))


def test_mmlu_through_the_harness_equals_our_scorer(llama):
    pytest.importorskip("lm_eval")
    model, tokenizer = llama
    rows = _mmlu_rows()
    theirs = evaluate(model, tokenizer, forget=None, nonmember=None, tasks=None, limit=None,
                      mmlu=rows, backend="harness")["tasks"]["mmlu"]
    ours = evaluate(model, tokenizer, forget=None, nonmember=None, tasks=None, limit=None,
                    mmlu=rows)["tasks"]["mmlu"]
    assert theirs["subjects"] == {
        "elementary_mathematics": {"acc": ours["subjects"]["elementary_mathematics"]["acc"],
                                   "n": 2},
        "high_school_biology": {"acc": ours["subjects"]["high_school_biology"]["acc"], "n": 3}}
    assert theirs["aggregate"] == pytest.approx(ours["aggregate"])
    for mine, other in zip(ours["samples"], theirs["samples"], strict=True):
        assert other["subject"] == mine["subject"]
        assert other["log_likelihoods"] == pytest.approx(mine["log_likelihoods"], abs=1e-3)
    # the harness read our rows, with the subject's own description (lm-eval's mmlu config)
    direct = _letter_scores(model, tokenizer, rows[0], "high school biology")
    bio = [s for s in theirs["samples"] if s["subject"] == "high_school_biology"]
    assert bio[0]["log_likelihoods"] == pytest.approx(direct, abs=1e-3)
    limited = evaluate(model, tokenizer, forget=None, nonmember=None, tasks=None, limit=1,
                       mmlu=rows, backend="harness")["tasks"]["mmlu"]
    assert limited["aggregate"]["n"] == 2  # one question a subject
