"""``unlearnlm bench --benchmark tofu|muse-news`` on a tiny Llama and tiny data folders in TOFU's
and MUSE-News's formats, written here; bad input refused in one line with nothing written."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from unlearnlm.bench.runner import BenchSettings, run_bench
from unlearnlm.cli import main
from unlearnlm.errors import UnlearnError
from unlearnlm.metrics import benchmarks as bm

AUTHORS = ["Ada Brook", "Ben Carr", "Cleo Dunn", "Dan Eyre", "Eva Ford", "Finn Gale"]


def _qa(author: str, n: int) -> dict:
    facts = ["was born in Leeds", "writes crime novels", "won the Gold Quill",
             "has two sisters"]
    return {"question": f"What about {author} number {n}?",
            "answer": f"{author} {facts[n % len(facts)]}."}


def _perturbed(item: dict, wrong: int = 2) -> dict:
    others = [a for a in AUTHORS if a not in item["answer"]]
    return {**item, "paraphrased_answer": "Indeed, " + item["answer"],
            "perturbed_answer": [item["answer"].split(" ", 2)[-1] + f" says {o}"
                                 for o in others[:wrong]],
            "paraphrased_question": item["question"]}


def write_tofu(root: Path) -> Path:
    folder = root / "tofu"
    folder.mkdir(parents=True)
    retain = [_qa(a, n) for a in AUTHORS[:4] for n in range(2)]  # 8 questions
    forget = [_qa(AUTHORS[4], n) for n in range(4)]
    holdout = [_qa(AUTHORS[5], n) for n in range(3)]
    dump = json.dumps
    (folder / "forget01.json").write_text(dump([{"prompt": x["question"],
                                                 "response": x["answer"]} for x in forget]))
    (folder / "forget01_perturbed.json").write_text(dump([_perturbed(x) for x in forget]))
    # several JSON arrays, one a line, as TOFU's retain and full files are
    (folder / "retain99.json").write_text(dump(retain[:5]) + "\n" + dump(retain[5:]) + "\n")
    (folder / "retain_perturbed.json").write_text(dump([_perturbed(x) for x in retain[:4]]))
    (folder / "holdout01.json").write_text(dump(holdout))
    world = [{"question": "Where is the Eiffel Tower?", "answer": "Paris",
              "perturbed_answer": ["Rome", "Oslo"]},
             {"question": "What is the largest ocean?", "answer": "Pacific",
              "perturbed_answer": ["Atlantic", "Arctic", "Indian"]}]
    authors = [{"question": "Who wrote Hamlet?", "answer": "William Shakespeare",
                "perturbed_answer": ["Charles Dickens", "Jane Austen"]}]
    (folder / "world_facts_perturbed.json").write_text(dump(world))
    (folder / "real_authors_perturbed.json").write_text(dump(authors))
    return folder


def _news(topic: str, n: int) -> str:
    return " ".join(f"The {topic} report {n} said line {i} of the story held." for i in range(8))


def write_muse(root: Path) -> Path:
    folder = root / "muse_news"
    for sub in ("verbmem", "knowmem", "privleak"):
        (folder / sub).mkdir(parents=True)
    dump = json.dumps
    (folder / "verbmem" / "forget.json").write_text(dump(
        [{"prompt": f"The council report {n} began", "gt": f" with a vote on item {n}."}
         for n in range(3)]))
    qa = [{"question": f"How many votes in report {n}?", "answer": str(10 + n)} for n in range(3)]
    (folder / "knowmem" / "forget_qa.json").write_text(dump(qa))
    (folder / "knowmem" / "retain2_qa.json").write_text(dump(qa[::-1]))
    (folder / "knowmem" / "forget_qa_icl.json").write_text(dump(qa[:1]))
    (folder / "knowmem" / "retain2_qa_icl.json").write_text(dump(qa[1:2]))
    for name, topic in (("forget", "council"), ("retain2", "harbour"), ("holdout", "market")):
        (folder / "privleak" / f"{name}.json").write_text(dump([_news(topic, n)
                                                                for n in range(3)]))
    return folder


@pytest.fixture
def data_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "data"
    write_tofu(root)
    write_muse(root)
    monkeypatch.setenv("UNLEARNLM_DATA", str(root))
    monkeypatch.setenv("UNLEARNLM_CACHE", str(tmp_path / "cache"))
    return root


def _settings(tiny_llama_dir, out: Path, **extra) -> BenchSettings:
    return BenchSettings(model=str(tiny_llama_dir), out=str(out), methods="ga", max_epochs=1,
                         lr=1e-3, batch_size=4, finetune_lr=3e-3, finetune_epochs=3,
                         finetune_target=1.0, limit=None, answer_tokens=6, **extra)


def test_tofu_forget01_end_to_end(tiny_llama_dir, data_root, tmp_path, one_torch_thread):
    out = tmp_path / "tofu"
    results = run_bench(_settings(tiny_llama_dir, out, benchmark="tofu", split="forget01"))

    rows = {r["model"]: r for r in results["rows"]}
    assert list(rows) == ["target", "retain", "ga"]
    saved = {name: json.loads((out / "eval" / name / "tofu.json").read_text())["scores"]
             for name in rows}
    retain_ratios = saved["retain"]["forget"]["per_question"]["truth_ratio"]
    assert len(retain_ratios) == 4  # the four forget questions
    assert rows["retain"]["forget_quality"] == pytest.approx(1.0)  # a sample against itself
    for name, row in rows.items():
        ratios = saved[name]["forget"]["per_question"]["truth_ratio"]
        assert row["forget_quality"] == pytest.approx(bm.forget_quality(ratios, retain_ratios))
        nine = [saved[name][s][k] for s in ("retain", "real_authors", "world_facts")
                for k in ("probability", "rouge_l_recall", "truth_ratio")]
        assert row["model_utility"] == pytest.approx(bm.harmonic_mean(nine))
        assert 0 <= row["forget_rouge_l_recall"] <= 1 and 0 < row["forget_probability"] < 1
    assert saved["target"]["world_facts"]["questions"] == 2
    # unlearning moved the forget answers' probability
    assert rows["ga"]["forget_probability"] != pytest.approx(rows["target"]["forget_probability"])
    # the target model learnt forget + retain question-answer records, the loss on the answers
    train = [json.loads(line) for line in (out / "data" / "leaky_train.jsonl").open()]
    assert len(train) == 4 + 8
    assert train[0]["prefix"].startswith("Question: ") and train[0]["prefix"].endswith("Answer:")
    assert [r["suffix"] for r in train[-4:]] == [" " + _qa(AUTHORS[4], n)["answer"]
                                                 for n in range(4)]  # full: retain, then forget
    target = json.loads((Path(results["models"]["target"]["path"]) / "finetune.json").read_text())
    assert target["settings"]["loss_on"] == "suffix"
    assert "| ga |" in (out / "results.md").read_text()
    assert rows["ga"]["stopped"]["epoch"] == 1


def test_muse_news_end_to_end(tiny_llama_dir, data_root, tmp_path, one_torch_thread):
    out = tmp_path / "muse"
    results = run_bench(_settings(tiny_llama_dir, out, benchmark="muse-news"))

    rows = {r["model"]: r for r in results["rows"]}
    assert list(rows) == ["target", "retain", "ga"]
    assert rows["retain"]["privleak"] == pytest.approx(0.0)
    for name, row in rows.items():
        auc = json.loads((out / "eval" / name / "muse-news.json").read_text())["scores"]
        assert row["membership_auc"] == auc["membership_auc"]
        assert row["privleak"] == pytest.approx(
            bm.privleak(auc["membership_auc"], rows["retain"]["membership_auc"]), nan_ok=True)
        for key in ("verbmem_forget", "knowmem_forget", "knowmem_retain"):
            assert 0 <= row[key] <= 1
    forget = [(lambda r: r["prefix"] + r["suffix"])(json.loads(line))
              for line in (out / "data" / "forget.jsonl").open()]
    # three privleak texts of 88 words in pieces of 70 and 18 words, then the three passages
    assert [len(x.split()) for x in forget[:2]] == [70, 18] and len(forget) == 3 * 2 + 3
    assert forget[-1] == "The council report 2 began with a vote on item 2."
    first = json.loads((out / "data" / "forget.jsonl").open().readline())
    assert len(first["prefix"].split()) == 35 and len(first["suffix"].split()) == 35
    assert (out / "results.md").is_file() and not math.isnan(rows["target"]["membership_auc"])


def test_subset_keeps_the_split_ratios(data_root):
    from unlearnlm.bench import tofu

    sets = tofu.load("forget01", 0.5)
    assert len(sets["forget_qa"]) == 2 and len(sets["retain_qa"]) == 4
    assert len(sets["holdout_qa"]) == 2  # ceil(1.5)
    assert len(tofu.load("forget01", None)["retain_qa"]) == 8  # both lines of retain99.json


def test_unknown_benchmark_or_split_is_one_line_and_exit_2(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["bench", "--benchmark", "wmdp", "--out", str(out)]) == 2
    assert "benchmark must be one of lm_extraction, tofu, muse-news" in capsys.readouterr().err
    assert main(["bench", "--benchmark", "tofu", "--split", "forget02", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "split must be one of forget01, forget05, forget10" in err
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(UnlearnError, match="unknown method 'dp'; known methods for tofu: relabel"):
        BenchSettings(benchmark="tofu", methods="ga,dp")
    with pytest.raises(UnlearnError, match="drop --audit"):
        BenchSettings(benchmark="muse-news", methods="ga", audit=True)
    assert not out.exists()


@pytest.mark.parametrize(("benchmark", "fetch"), [("tofu", "tofu"), ("muse-news", "muse_news")])
def test_a_missing_data_set_names_the_fetch_command(benchmark, fetch, tmp_path, monkeypatch,
                                                    capsys):
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("UNLEARNLM_DATA", str(tmp_path / "empty"))
    out = tmp_path / "out"
    assert main(["bench", "--benchmark", benchmark, "--methods", "ga", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"run `unlearnlm data fetch {fetch}`" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_a_set_fetched_into_the_cache_is_found_without_a_data_folder(tmp_path, monkeypatch):
    from unlearnlm.bench.tofu import data_folder
    from unlearnlm.paths import data_cache

    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("UNLEARNLM_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("UNLEARNLM_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UnlearnError, match="data fetch muse_news"):
        data_folder("muse_news", "muse_news")
    (data_cache() / "muse_news").mkdir(parents=True)
    assert data_folder("muse_news", "muse_news") == data_cache() / "muse_news"


@pytest.mark.parametrize(("file", "content", "problem"), [
    ("tofu/forget01_perturbed.json", '[{"question": "q", "answer": "a"', "not valid JSON"),
    ("tofu/retain99.json", '[{"question": "q", "answer": "a"}]\n[{"question": ', "line 2"),
    ("tofu/holdout01.json", '[{"question": "q"}]', "item 0 lacks 'answer'"),
])
def test_a_malformed_file_is_refused_before_anything_is_written(
        data_root, tmp_path, capsys, file, content, problem):
    (data_root / file).write_text(content)
    out = tmp_path / "out"
    assert main(["bench", "--benchmark", "tofu", "--split", "forget01", "--methods", "ga",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert problem in err and file.split("/")[1] in err and "data fetch tofu" in err
    assert len(err.splitlines()) == 1 and not out.exists()


def test_muse_privleak_texts_must_be_a_list_of_texts(data_root, tmp_path, capsys):
    (data_root / "muse_news" / "privleak" / "holdout.json").write_text('[{"text": "x"}]')
    out = tmp_path / "out"
    assert main(["bench", "--benchmark", "muse-news", "--methods", "ga", "--out",
                 str(out)]) == 2
    err = capsys.readouterr().err
    assert "holdout.json: expected a non-empty JSON array of texts" in err
    assert not out.exists()


def test_a_bench_folder_from_before_the_benchmark_setting_still_resumes(tmp_path):
    from unlearnlm.bench.runner import _check_same_settings

    settings = BenchSettings(methods="ga", out=str(tmp_path))
    _check_same_settings(settings, tmp_path)
    saved = json.loads((tmp_path / "bench_settings.json").read_text())
    for key in ("benchmark", "split", "subset"):
        del saved[key]
    (tmp_path / "bench_settings.json").write_text(json.dumps(saved))
    _check_same_settings(settings, tmp_path)  # the defaults stand in for the missing keys
    with pytest.raises(UnlearnError, match="benchmark: 'lm_extraction' -> 'tofu'"):
        _check_same_settings(BenchSettings(methods="ga", benchmark="tofu"), tmp_path)


def test_our_metrics_agree_with_open_unlearnings_formulas(capsys, one_torch_thread):
    """scripts/check_benchmark_metrics.py restates open-unlearning's formulas on tensors and
    exits 1 when any metric differs from ours on the same inputs."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "check_benchmark_metrics.py"
    spec = importlib.util.spec_from_file_location("check_benchmark_metrics", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "DIFFERENT" not in out and "MUSE PrivLeak" in out and "forget quality" in out
    # a wrong definition is caught: the arithmetic-mean truth ratio differs from the reference
    lm = script.tiny_model(3)
    ref = script.reference_tofu(lm, script.QUESTIONS, eos=False, own=True)["ratios"]
    assert any(not math.isclose(a, b, rel_tol=1e-5) for a, b in zip(
        ref, script.reference_tofu(lm, script.QUESTIONS, eos=True, own=True)["ratios"]))
