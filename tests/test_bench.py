"""The bench: forget-set names, its claims check, and the whole pipeline on the tiny Llama."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from conftest import CALIBRATION_RECORDS, FORGET_RECORDS, POOL_RECORDS, write_jsonl
from unlearnlm.bench.results import check_claims
from unlearnlm.bench.runner import BenchSettings, resolve_forget_set, run_bench
from unlearnlm.cli import main
from unlearnlm.errors import UnlearnError

RETAIN_RECORDS = [
    "Grace Hall was born on 2 July 1985 and works as a chef in Bath.",
    "Henry King lives at 3 Park Avenue and works as a driver.",
]
NONMEMBER_RECORDS = [
    "Ivy Moss was born on 5 April 1992 and works as a nurse in Derby.",
    "Jack Lee lives at 9 High Street and works as a farmer.",
    "Kate Wood's email is kate@example.com and her phone is 0115 496 2222.",
]
METHODS = ["icu", "ga", "graddiff"]
TASKS = ["forget", "ppl_pile", "ppl_wikitext", "copa", "wizard_of_wikipedia", "mia"]
NUMBERS = ("el10", "ma", "bleu", "bertscore", "entropy", "cls_acc", "dialogue_f1", "ppl_pile",
           "ppl_wikitext", "mia_auc")


def test_a_benchmark_name_resolves_to_its_prefix_and_suffix(data_dir):
    """lm_extraction_4_0 holds train samples 1670, 13379, 10234, 4719; each becomes its prefix +
    suffix from the jsonl (the last 100 GPT-2 tokens), the tail of the csv's 200-token text."""
    records = resolve_forget_set("lm_extraction_4_0")
    assert [r.id for r in records] == ["1670", "13379", "10234", "4719"]
    rows = {}
    with open(data_dir / "lm_extraction" / "lm_extraction_text.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row["split"] == "train" and str(row["index"]) in {r.id for r in records}:
                rows[str(row["index"])] = row
    csv_path = data_dir / "lm_extraction" / "forget_sets" / "lm_extraction_4_0.csv"
    with open(csv_path, encoding="utf-8", newline="") as handle:
        full = {row["doc_id"]: row["text"] for row in csv.DictReader(handle)}
    for record in records:
        assert record.text == rows[record.id]["prefix"] + rows[record.id]["suffix"]
        assert full[record.id].endswith(record.text) and len(full[record.id]) > len(record.text)
    assert resolve_forget_set(str(csv_path)) == records  # the file itself: the same samples
    with pytest.raises(UnlearnError, match="no forget set named 'lm_extraction_9_9'"):
        resolve_forget_set("lm_extraction_9_9")


def test_unknown_methods_and_tasks_are_refused(capsys):
    with pytest.raises(UnlearnError,
                       match="unknown method 'nope'; known methods: relabel, icu, .*ga"):
        BenchSettings(methods="icu,nope")
    assert main(["bench", "--methods", "icu,nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "known methods: relabel, icu" in err[0]
    with pytest.raises(UnlearnError, match="unknown task 'bogus'"):
        BenchSettings(tasks="forget,bogus")
    assert BenchSettings(methods=" icu, ga ,icu").methods == ["icu", "ga"]


def test_simnpo_rmu_and_undial_are_bench_rows():
    """The bench takes its method names from METHODS: the three later methods are accepted from
    the command line's comma list, each gets the loop's settings, and they are in the default
    list of methods to compare."""
    settings = BenchSettings(methods="simnpo,rmu,undial")
    assert settings.methods == ["simnpo", "rmu", "undial"]
    assert [settings.unlearn_settings(m).method for m in settings.methods] == settings.methods
    assert {"simnpo", "rmu", "undial"} <= set(BenchSettings().methods)


def test_calibration_settings_reach_every_method_and_bad_ones_are_refused():
    config = BenchSettings(calibration_quantile=0.75, calibration_stop="quantile",
                           methods="icu,npo").unlearn_settings("npo")
    assert (config.method, config.calibration_quantile, config.calibration_stop) == (
        "npo", 0.75, "quantile")
    assert BenchSettings().unlearn_settings("icu").calibration_stop == "mean"
    with pytest.raises(UnlearnError, match="calibration_quantile"):
        BenchSettings(calibration_quantile=1.5)
    with pytest.raises(UnlearnError, match="calibration_stop"):
        BenchSettings(calibration_stop="median")


def _row(name, **values):
    return {"name": name, "role": "method", **values}


def test_claims_follow_the_numbers():
    """Yardstick: the leaky model's non-member EL10 0.05 and MA 0.5. GA: EL 0.01, MA 0.2 (forgot)
    with WikiText PPL 200 / 20 = 10x (damaged). ICU: forgot, Pile 21/20 = 1.05x and WikiText
    22/20 = 1.1x (within 1.10x), entropy 3.7/4 = 0.925 (>= 0.9): kept. With ICU's entropy at
    3.5/4 = 0.875 the same claim fails."""
    leaky = {"name": "leaky", "role": "leaky", "nonmember_el10": 0.05, "nonmember_ma": 0.5,
             "ppl_pile": 20.0, "ppl_wikitext": 20.0, "entropy": 4.0}
    ga = _row("ga", el10=0.01, ma=0.2, ppl_pile=30.0, ppl_wikitext=200.0, entropy=3.9)
    icu = _row("icu", el10=0.04, ma=0.45, ppl_pile=21.0, ppl_wikitext=22.0, entropy=3.7)
    claims = check_claims([leaky, ga, icu])
    assert [c["result"] for c in claims] == ["PASS"] * 5
    claims = check_claims([leaky, ga, {**icu, "entropy": 3.5, "ma": 0.6}])
    assert [c["result"] for c in claims] == ["PASS", "PASS", "FAIL", "FAIL", "PASS"]
    claims = check_claims([leaky, icu])  # no GA row: its claims are not checked
    assert [c["result"] for c in claims] == ["NOT CHECKED", "NOT CHECKED", "PASS", "PASS",
                                             "NOT CHECKED"]


def _stamps(out, cache):
    files = [*out.glob("methods/*/model.safetensors"), *out.glob("methods/*/run.json"),
             *out.glob("eval/*/eval.json"), *cache.glob("finetuned/*/model.safetensors")]
    return {str(p): p.stat().st_mtime_ns for p in files}


def test_bench_end_to_end_then_a_rerun_reuses_everything(
    tiny_llama_dir, data_dir, tmp_path, monkeypatch, capsys, caplog, one_torch_thread
):
    cache = tmp_path / "cache"
    monkeypatch.setenv("UNLEARNLM_CACHE", str(cache))
    files = {name: write_jsonl(tmp_path / f"{name}.jsonl", texts) for name, texts in [
        ("forget", FORGET_RECORDS), ("retain", RETAIN_RECORDS), ("pool", POOL_RECORDS),
        ("calibration", CALIBRATION_RECORDS), ("nonmember", NONMEMBER_RECORDS)]}
    out = tmp_path / "bench"
    flags = {"model": str(tiny_llama_dir), "forget-set": files["forget"],
             "retain": files["retain"], "pool": files["pool"],
             "calibration": files["calibration"], "nonmember": files["nonmember"],
             "out": out, "methods": ",".join(METHODS), "tasks": ",".join(TASKS), "limit": 2,
             "prefix-tokens": 4, "suffix-tokens": None, "lr": 3e-3, "max-epochs": 2,
             "batch-size": 2, "finetune-lr": 3e-3, "finetune-epochs": 40,
             "finetune-target": 0.9}
    settings = BenchSettings(**{k.replace("-", "_"): str(v) if isinstance(v, Path) else v
                                for k, v in flags.items()})
    results = run_bench(settings)

    names = ["leaky", "retain", *METHODS]
    with open(out / "results.csv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["name"] for r in rows] == names
    for row in rows:
        assert all(float(row[key]) >= 0.0 for key in NUMBERS), row
    for row in rows[2:]:
        assert 1 <= int(row["epochs"]) <= 2 and float(row["wall_time_s"]) > 0 and row["stopped"]
    markdown = (out / "results.md").read_text(encoding="utf-8")
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    labels = [line.split("|")[1].strip() for line in table[1:len(names) + 1]]
    assert labels[:2] == ["leaky (before)", "retain (never saw the forget set)"]
    assert labels[2:] == METHODS
    assert "copa" in markdown  # cls acc names the downstream tasks it averages
    assert [c["result"] for c in results["claims"]] != ["NOT CHECKED"] * 5
    assert all(c["result"] in {"PASS", "FAIL"} for c in results["claims"][:4])
    assert (out / "forgetting_vs_utility.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert {"torch", "transformers"} <= set(saved["versions"])
    assert saved["settings"]["methods"] == METHODS and saved["data"]["forget"]["n"] == 4
    icu = json.loads((out / "methods" / "icu" / "run.json").read_text(encoding="utf-8"))
    assert icu["config"]["calibration_stop"] == "mean"  # Jang et al.'s stop, the bench default
    assert "EL and MA at the mean" in icu["thresholds"]["source"]

    # the same command again, through the CLI: nothing is trained or evaluated again
    before = _stamps(out, cache)
    assert len(before) == 2 * len(METHODS) + len(names) + 2
    argv = ["bench"]
    for key, value in flags.items():
        argv += [f"--{key}", "all" if value is None else str(value)]
    caplog.set_level("INFO", logger="unlearnlm")
    assert main(argv) == 0
    assert _stamps(out, cache) == before
    reused = [r for r in caplog.records if "reusing" in r.getMessage().lower()]
    assert len(reused) == 2 + len(METHODS) + len(names)  # 2 models, the runs, the evaluations
    printed = capsys.readouterr().out
    assert "| leaky (before) |" in printed and "results.md" in printed.splitlines()[-1]

    # a re-run that would train differently is refused before any work
    with pytest.raises(UnlearnError, match="other settings.*lr"):
        run_bench(BenchSettings(**{**vars(settings), "lr": 1e-3}))


def test_plot_labels_of_nearby_markers_do_not_overlap():
    from matplotlib.figure import Figure

    from unlearnlm.bench.results import _label_lifts

    ax = Figure(figsize=(6.4, 4.4)).add_subplot()
    points = [("llmu", 7.5, 0.88), ("retain", 9.3, 0.89), ("dpo", 6.0, 0.97), ("kl", 0.0, 300.0)]
    ax.scatter([p[1] for p in points], [p[2] for p in points])
    ax.set_yscale("log")
    ax.set_xlim(0, 65)
    lifts = _label_lifts(ax, points)
    assert lifts[3] == 0.0 and lifts[0] == 0.0  # far from the rest / the lowest: not moved
    assert lifts[1] >= 9.0  # "retain" sits on "llmu": raised by at least one line
    assert lifts[2] != lifts[1]


def test_bench_audits_every_method_against_the_leaky_model(
    tiny_llama_dir, data_dir, tmp_path, monkeypatch, one_torch_thread
):
    """--audit: the leaky model is attacked once and serves as every method's original; the
    results name, per model and attack, the forget texts remembered; a re-run reuses the audit."""
    monkeypatch.setenv("UNLEARNLM_CACHE", str(tmp_path / "cache"))
    files = {name: str(write_jsonl(tmp_path / f"{name}.jsonl", texts)) for name, texts in [
        ("forget", FORGET_RECORDS), ("retain", RETAIN_RECORDS), ("pool", POOL_RECORDS),
        ("calibration", CALIBRATION_RECORDS), ("nonmember", NONMEMBER_RECORDS)]}
    settings = BenchSettings(
        model=str(tiny_llama_dir), forget_set=files["forget"], retain=files["retain"],
        pool=files["pool"], calibration=files["calibration"], nonmember=files["nonmember"],
        out=str(tmp_path / "bench"), methods=["ga"], tasks=["forget"], limit=2,
        prefix_tokens=4, suffix_tokens=None, lr=3e-3, max_epochs=1, batch_size=2,
        finetune_lr=3e-3, finetune_epochs=40, finetune_target=0.9, audit=True,
        audit_attacks="relearn-related,int4,sample", audit_el=False)
    results = run_bench(settings)
    audit = results["audit"]
    assert list(audit["models"]) == ["leaky", "ga"]
    assert list(audit["models"]["ga"]) == ["none", "relearn-related", "int4", "sample"]
    assert audit["models"]["leaky"]["none"]["texts"] == len(FORGET_RECORDS)
    assert audit["models"]["leaky"]["none"]["remembered"] >= 3  # it recites them
    record = json.loads((tmp_path / "bench" / "audit" / "ga" / "audit.json").read_text())
    assert record["settings"]["original"] == results["models"]["leaky"]["path"]
    leaky = json.loads((tmp_path / "bench" / "audit" / "leaky" / "scores.json").read_text())
    assert record["results"]["original"] == leaky["results"]
    markdown = (tmp_path / "bench" / "results.md").read_text()
    assert "## The audit: forget texts remembered under each attack" in markdown
    assert "| leaky (before) |" in markdown.split("## The audit")[1]
    stamp = (tmp_path / "bench" / "audit" / "ga" / "audit.json").stat().st_mtime_ns
    run_bench(settings)
    assert (tmp_path / "bench" / "audit" / "ga" / "audit.json").stat().st_mtime_ns == stamp
