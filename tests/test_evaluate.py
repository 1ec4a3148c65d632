"""The evaluation suite: every task on the tiny GPT-Neo, choice scoring, dialogue F1, the CLI."""

from __future__ import annotations

import json
import math

import pytest

from conftest import FORGET_RECORDS
from unlearnlm.cli import main
from unlearnlm.data.eval_sets import ChoiceItem
from unlearnlm.data.texts import Record, split_records
from unlearnlm.errors import UnlearnError
from unlearnlm.evaluate.suite import (
    TASKS,
    _run_task,
    evaluate,
    forget_metrics,
    resolve_tasks,
    write_results,
)
from unlearnlm.evaluate.tasks import (
    choice_accuracy,
    continuation_scores,
    normalize_answer,
    pick_choice,
    unigram_f1,
)


@pytest.fixture(scope="module")
def tiny_neo(tiny_gptneo_dir):
    from unlearnlm.lm.loading import load_model

    model, tokenizer, _ = load_model(str(tiny_gptneo_dir))
    return model, tokenizer


DATA_TASKS = [t for t in TASKS if t not in ("forget", "mia", "dialogue")]


@pytest.mark.parametrize("task", DATA_TASKS)
def test_each_task_runs_with_limit_3(tiny_neo, task):
    """Every data task on 3 documents/questions: aggregates in range."""
    model, tokenizer = tiny_neo
    aggregate = _run_task(task, model, tokenizer, 3)["aggregate"]
    assert aggregate["n"] == 3
    if task.startswith("ppl_"):
        assert 1.0 < aggregate["perplexity"] < 1e7  # a random model: about the vocabulary size
    elif "f1" in aggregate:
        assert 0.0 <= aggregate["f1"] <= 1.0
    else:
        assert 0.0 <= aggregate["acc"] <= 1.0
        assert 0.0 <= aggregate.get("acc_norm", 0.0) <= 1.0


def test_forget_metrics_in_range(tiny_neo):
    model, tokenizer = tiny_neo
    samples = split_records([Record(str(i), t) for i, t in enumerate(FORGET_RECORDS)], tokenizer,
                            4, None)
    result = forget_metrics(model, tokenizer, samples, el_n=2)
    assert len(result["samples"]) == 4
    for name in ("el", "ma", "bleu", "bertscore"):
        assert 0.0 <= result["aggregate"][name] <= 1.0
    for row, sample in zip(result["samples"], samples, strict=True):
        assert 0.0 <= row["entropy"] <= math.log2(len(sample.suffix_ids)) + 1e-9


def test_pick_choice_on_controlled_log_probs():
    """acc picks the highest sum; acc_norm the highest per character: -6/3 = -2 beats -4/1.
    The joining space does not count: " ab" and "ab" are 2 characters, " é" is 1."""
    from unlearnlm.evaluate.tasks import choice_length

    assert [choice_length(c) for c in (" ab", "ab", " é", "  x")] == [2, 2, 1, 2]
    assert pick_choice([-4.0, -6.0]) == 0
    assert pick_choice([-4.0, -6.0], [1, 3]) == 1
    assert pick_choice([-1.0, -1.0]) == 0  # ties go to the first


def test_choice_scorer_prefers_what_the_model_memorised(leaky_llama_dir):
    """The leaky Llama memorised "Bob Jones lives at 12 Station Road and works as a nurse."."""
    from unlearnlm.lm.loading import load_model

    model, tokenizer, _ = load_model(str(leaky_llama_dir))
    context = "Bob Jones lives at 12 Station Road and works as a"
    item = ChoiceItem("bob", [context] * 3, [" pilot.", " nurse.", " baker."], 1)
    result = choice_accuracy(model, tokenizer, [item])
    assert result["samples"][0]["prediction"] == 1 and result["aggregate"]["acc"] == 1.0
    [(ll, greedy)] = continuation_scores(model, tokenizer, [(context, " nurse.")])
    assert greedy and ll < 0.0


def test_dialogue_normalisation_and_f1_by_hand():
    """"The cat, sat!" and "a cat sat" both normalise to "cat sat". Partial: "cat sat on mat" vs
    "dog sat on rug" share sat, on: P = R = 2/4, F1 = 0.5; "cat sat" vs "cat sat down quickly":
    P = 1, R = 1/2, F1 = 2/3."""
    assert normalize_answer("The cat, sat!") == "cat sat" == normalize_answer("a  cat sat")
    assert unigram_f1("The cat, sat!", "a cat sat") == 1.0
    assert unigram_f1("the cat sat on a mat", "A dog sat on the rug.") == pytest.approx(0.5)
    assert unigram_f1("cat sat", "cat sat down quickly") == pytest.approx(2 / 3)
    assert unigram_f1("", "cat") == 0.0 and unigram_f1("dog", "cat") == 0.0


def test_task_names_are_checked():
    assert resolve_tasks(["dialogue", "copa"])[-1] == "copa"
    assert len(resolve_tasks(["dialogue"])) == 4
    with pytest.raises(UnlearnError, match="unknown task 'bogus'.*known tasks: forget"):
        resolve_tasks(["forget", "bogus"])


def test_missing_data_folder_names_the_setting(tiny_neo, monkeypatch, tmp_path):
    monkeypatch.setenv("UNLEARNLM_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(UnlearnError, match="UNLEARNLM_DATA"):
        evaluate(*tiny_neo, forget=None, nonmember=None, tasks=["ppl_pile"], limit=1)


def test_results_are_written_atomically(tmp_path):
    path = write_results({"tasks": {}, "x": "ü"}, tmp_path / "out")
    assert json.loads(path.read_text(encoding="utf-8"))["x"] == "ü"
    assert [p.name for p in path.parent.iterdir()] == ["eval.json"]


def test_eval_command_end_to_end(tiny_gptneo_dir, record_files, tmp_path, capsys):
    """Default non-members: the first 2 rows of the extraction benchmark's val split."""
    out = tmp_path / "eval"
    code = main(["eval", "--model", str(tiny_gptneo_dir), "--forget", str(record_files["forget"]),
                 "--tasks", "forget,ppl_wikitext,arc_easy", "--limit", "2",
                 "--prefix-tokens", "4", "--suffix-tokens", "all", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    result = json.loads((out / "eval.json").read_text())
    assert set(result["tasks"]) == {"forget", "nonmember", "verdict", "ppl_wikitext", "arc_easy"}
    assert len(result["tasks"]["forget"]["samples"]) == 4  # the forget set is never limited
    assert len(result["tasks"]["nonmember"]["samples"]) == 2
    assert result["tasks"]["arc_easy"]["aggregate"]["n"] == 2
    assert "ppl_wikitext" in printed and "perplexity=" in printed


def test_unknown_task_exits_2_with_one_line(tiny_gptneo_dir, tmp_path, capsys):
    code = main(["eval", "--model", str(tiny_gptneo_dir), "--tasks", "forget,bogus",
                 "--out", str(tmp_path / "eval")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("unlearnlm: error: unknown task 'bogus'") and "mia" in err[0]
    assert not (tmp_path / "eval").exists()


def test_eval_command_scores_original_and_retain_models_too(tiny_gptneo_dir, tiny_llama_dir,
                                                            record_files, tmp_path):
    """--original and --retain are evaluated with the same settings into their own folders;
    --el-n reaches the forget metrics."""
    out = tmp_path / "eval"
    code = main(["eval", "--model", str(tiny_gptneo_dir), "--original", str(tiny_gptneo_dir),
                 "--retain", str(tiny_llama_dir), "--forget", str(record_files["forget"]),
                 "--tasks", "forget", "--limit", "2", "--el-n", "3", "--prefix-tokens", "4",
                 "--suffix-tokens", "all", "--out", str(out)])
    assert code == 0
    results = {name: json.loads((out / name / "eval.json").read_text())
               for name in ("", "original", "retain")}
    assert results["original"]["settings"]["model"] == str(tiny_gptneo_dir)
    assert results["retain"]["settings"]["model"] == str(tiny_llama_dir)
    assert all(r["tasks"]["forget"]["aggregate"]["el_n"] == 3 for r in results.values())
    model, original = (results[k]["tasks"]["forget"]["aggregate"] for k in ("", "original"))
    assert model["ma"] == original["ma"]  # same model, same settings: same scores
