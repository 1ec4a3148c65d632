"""The two backends of the zero-shot tasks agree: our scorer (``downstream``) and
lm-evaluation-harness (``harness``), on the tiny random Llama and the first items of each local
data set. Where the harness's definition differs from ours, the test names the difference and
shows that the harness equals our scorer once that difference is applied.

The comparisons need lm-eval (``pip install 'unlearnlm[harness]'``) and skip without it; the
error-message tests run either way.
"""

from __future__ import annotations

import csv
import json
import math
import sys

import pytest
import torch

from unlearnlm.data import eval_sets as eval_data
from unlearnlm.data.eval_sets import ChoiceItem
from unlearnlm.errors import UnlearnError
from unlearnlm.evaluate import evaluate
from unlearnlm.evaluate import tasks as downstream
from unlearnlm.lm.generation import context_limit

LIMIT = 24
SAME_PROMPT = ("arc_easy", "arc_challenge", "piqa", "hellaswag", "winogrande", "mathqa")
LL_TOLERANCE = 1e-3  # float noise of differently padded batches is ~1e-5


@pytest.fixture(scope="module")
def harness(data_dir):
    import lm_eval  # noqa: F401 - part of the dev extra, so these tests run, never skip

    from unlearnlm.evaluate import harness

    return harness


@pytest.fixture(scope="module")
def llama(tiny_llama, tiny_llama_dir, one_torch_thread):
    from transformers import AutoTokenizer

    return tiny_llama, AutoTokenizer.from_pretrained(tiny_llama_dir)


def _ours(llama, items: list[ChoiceItem]) -> dict:
    model, tokenizer = llama
    return downstream.choice_accuracy(model, tokenizer, items, context_limit(model))


def _harness_norm_accuracy(items: list[ChoiceItem], samples: list[dict]) -> float:
    """The harness's acc_norm from our log-likelihoods: each divided by the choice's length in
    characters, without the one space that joins it to the context."""
    right = []
    for item, sample in zip(items, samples, strict=True):
        lengths = [len(c[1:] if c.startswith(" ") else c) for c in item.continuations]
        right.append(downstream.pick_choice(sample["log_likelihoods"], lengths) == item.answer)
    return sum(right) / len(right)


def _assert_same_scores(theirs: dict, ours: dict) -> None:
    assert theirs["aggregate"]["n"] == ours["aggregate"]["n"] == LIMIT
    for mine, other in zip(ours["samples"], theirs["samples"], strict=True):
        assert other["log_likelihoods"] == pytest.approx(mine["log_likelihoods"],
                                                         abs=LL_TOLERANCE)
        assert other["correct"] == (mine["prediction"] == mine["answer"])
    assert theirs["aggregate"]["acc"] == ours["aggregate"]["acc"]


@pytest.mark.parametrize("task", SAME_PROMPT)
def test_harness_acc_equals_ours(harness, llama, task):
    items = eval_data.CHOICE_TASKS[task](LIMIT)
    theirs = harness.harness_accuracy(*llama, task, limit=LIMIT)
    ours = _ours(llama, items)
    _assert_same_scores(theirs, ours)
    if task == "winogrande":  # the harness's config has acc only; ours' acc_norm equals acc
        assert "acc_norm" not in theirs["aggregate"]
        assert ours["aggregate"]["acc_norm"] == ours["aggregate"]["acc"]
    else:
        assert theirs["aggregate"]["acc_norm"] == _harness_norm_accuracy(items, ours["samples"])
        assert theirs["aggregate"]["acc_norm"] == ours["aggregate"]["acc_norm"]


def test_harness_copa_joins_choices_with_two_spaces(harness, llama):
    """The harness's copa choices start with a space and get a second one as the delimiter."""
    items = eval_data.copa(LIMIT)
    doubled = [ChoiceItem(i.id, i.contexts, [" " + c for c in i.continuations], i.answer)
               for i in items]
    theirs = harness.harness_accuracy(*llama, "copa", limit=LIMIT)
    _assert_same_scores(theirs, _ours(llama, doubled))
    assert "acc_norm" not in theirs["aggregate"]


def test_harness_pubmedqa_joins_paragraphs_with_newlines(harness, llama, data_dir):
    """Same questions and choices; the harness puts newlines between the abstract's paragraphs
    where ours puts spaces. The long abstracts also exercise truncation (512-token model)."""
    items = eval_data.pubmedqa(LIMIT)
    csv.field_size_limit(2**31 - 1)
    with open(data_dir / "eval" / "pubmed_qa.csv", newline="", encoding="utf-8") as handle:
        rows = [row for _, row in zip(range(LIMIT), csv.DictReader(handle))]
    newline_items = []
    for item, row in zip(items, rows, strict=True):
        paragraphs = harness._pubmed_paragraphs(row["context"])
        assert item.contexts[0].startswith(f"Abstract: {' '.join(paragraphs)}\nQuestion:")
        context = item.contexts[0].replace(" ".join(paragraphs), "\n".join(paragraphs), 1)
        newline_items.append(ChoiceItem(item.id, [context] * 3, item.continuations, item.answer))
    theirs = harness.harness_accuracy(*llama, "pubmedqa", limit=LIMIT)
    _assert_same_scores(theirs, _ours(llama, newline_items))


def test_harness_lambada_equals_ours(harness, llama):
    model, tokenizer = llama
    theirs = harness.harness_accuracy(model, tokenizer, "lambada", limit=LIMIT)
    ours = downstream.lambada_accuracy(model, tokenizer, eval_data.lambada_items(LIMIT),
                                       context_limit(model))
    assert theirs["aggregate"]["n"] == ours["aggregate"]["n"] == LIMIT
    assert theirs["aggregate"]["acc"] == ours["aggregate"]["acc"]
    assert [s["correct"] for s in theirs["samples"]] == [s["correct"] for s in ours["samples"]]
    mean_ll = ours["aggregate"]["log_likelihood"]
    assert theirs["aggregate"]["log_likelihood"] == pytest.approx(mean_ll, abs=LL_TOLERANCE)
    assert theirs["aggregate"]["perplexity"] == pytest.approx(math.exp(-mean_ll), rel=1e-3)


def test_evaluate_harness_backend_leaves_model_and_seed_alone(harness, llama):
    model, tokenizer = llama
    model.train()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    try:
        result = evaluate(model, tokenizer, forget=None, nonmember=None,
                          tasks=["arc_easy", "ppl_wikitext"], limit=3, backend="harness")
        assert model.training
    finally:
        model.eval()
    assert torch.equal(torch.get_rng_state(), state)
    assert result["settings"]["backend"] == "harness"
    assert result["tasks"]["arc_easy"]["harness"]["config"] == "arc/arc_easy.yaml"
    assert result["tasks"]["arc_easy"]["aggregate"]["n"] == 3
    assert "harness" not in result["tasks"]["ppl_wikitext"]  # stays ours


def test_cli_eval_backend_harness(harness, tiny_llama_dir, tmp_path, capsys):
    from unlearnlm.cli import main

    code = main(["-q", "eval", "--model", str(tiny_llama_dir), "--tasks", "piqa", "--limit", "2",
                 "--backend", "harness", "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["settings"]["backend"] == "harness"
    assert result["tasks"]["piqa"]["harness"]["config"] == "piqa/piqa.yaml"


def test_unknown_backend_and_non_harness_task():
    from unlearnlm.evaluate import harness

    with pytest.raises(UnlearnError, match="unknown backend"):
        harness.backend_runner("vllm")
    with pytest.raises(UnlearnError, match="no harness definition"):
        harness.harness_accuracy(None, None, "ppl_pile")


def test_missing_lm_eval_names_the_extra(monkeypatch, tmp_path, capsys):
    from unlearnlm.cli import main
    from unlearnlm.evaluate import harness

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval raises ImportError
    with pytest.raises(UnlearnError, match=r"unlearnlm\[harness\]"):
        harness.backend_runner("harness")
    code = main(["eval", "--model", "no-such-model", "--tasks", "piqa", "--backend", "harness",
                 "--out", str(tmp_path)])
    assert code == 2
    assert "unlearnlm[harness]" in capsys.readouterr().err
