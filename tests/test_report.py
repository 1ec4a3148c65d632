"""The report of a tiny real run: both files, self-contained HTML, the right rows and numbers."""

from __future__ import annotations

import base64
import json
import re
import shutil

import pytest

from unlearnlm import cli
from unlearnlm.errors import UnlearnError
from unlearnlm.report.run import build_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_llama_dir, record_files, one_torch_thread):
    """One ICU run of the random tiny Llama on the 4 forget records, with generations logged."""
    from unlearnlm import unlearn

    out = tmp_path_factory.mktemp("report-run") / "run"
    unlearn(model=str(tiny_llama_dir), forget=str(record_files["forget"]),
            pool=str(record_files["pool"]), out=str(out), lr=1e-3, max_epochs=2,
            prefix_tokens=4, suffix_tokens=None, batch_size=2, log_text=True, method="icu",
            quick_check=False)
    return out


@pytest.fixture
def run_dir(tiny_run, tmp_path):
    """A fresh folder holding only the tiny run's run.json (all the report reads)."""
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copy(tiny_run / "run.json", folder / "run.json")
    return folder


def _record(run_dir) -> dict:
    return json.loads((run_dir / "run.json").read_text())


def _table_rows(page: str, key: str) -> list[list[str]]:
    table = re.search(rf'<table id="{key}">(.*?)</table>', page, re.S).group(1)
    body = table.split("<tbody>")[1]
    return [re.findall(r"<td>(.*?)</td>", row, re.S)
            for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)]


def _eval(tasks: dict) -> dict:
    return {"tasks": {name: {"aggregate": agg, "samples": []} for name, agg in tasks.items()},
            "settings": {"model": "m", "limit": 4}}


def _write_eval(folder, data: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "eval.json").write_text(json.dumps(data))


def test_report_is_written_and_self_contained(run_dir):
    md, page_path = build_report(run_dir)
    assert md == run_dir / "report.md" and md.read_text().startswith("# Unlearning report: icu")
    page = page_path.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page)
    sources = re.findall(r'<img [^>]*src="([^"]*)"', page)
    assert len(sources) == 3  # active samples, mean scores, losses
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1]).startswith(PNG_SIGNATURE)
    assert "Not evaluated" in page  # no eval.json next to the run


def test_tables_follow_run_json(run_dir):
    record = _record(run_dir)
    page = build_report(run_dir)[1].read_text()
    samples = _table_rows(page, "samples")
    assert [row[0] for row in samples] == record["forget_set"]["ids"]
    dynamics = _table_rows(page, "dynamics")
    assert [int(row[0]) for row in dynamics] == [e["epoch"] for e in record["epochs"]]
    first = record["epochs"][0]["samples"][0]
    assert samples[0][1] == f"{first['ma']:.3f}"


def test_generations_are_escaped(run_dir):
    record = _record(run_dir)
    record["epochs"][-1]["samples"][0]["generation"] = "<script>alert('x')</script> & <b>\x00"
    record["epochs"][-1]["samples"][0]["bleu"] = 0.0
    (run_dir / "run.json").write_text(json.dumps(record))
    md, page_path = build_report(run_dir)
    page = page_path.read_text()
    assert "<script" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;b&gt;" in page
    assert "<script" not in md.read_text()
    assert "\x00" not in page and "\x00" not in md.read_text()  # control characters replaced


def test_eval_results_add_utility_and_verdict(run_dir, tmp_path):
    before = _eval({"ppl_wikitext": {"perplexity": 25.5, "n": 4}, "arc_easy": {"acc": 0.5},
                    "wizard_of_wikipedia": {"f1": 0.125}, "mia": {"loss": 0.97, "zlib": 0.9}})
    after = _eval({"ppl_wikitext": {"perplexity": 27.25, "n": 4}, "arc_easy": {"acc": 0.45},
                   "wizard_of_wikipedia": {"f1": 0.11}, "mia": {"loss": 0.52, "zlib": 0.55}})
    after["tasks"]["forget"] = {"aggregate": {"el": 0.0, "ma": 0.1, "bleu": 0.0,
                                              "bertscore": 0.2, "entropy": 3.0},
                                "samples": [{"id": "s0", "generation": "x <i>"}]}
    row = {"ma": {"value": 0.1, "percentile": 40.0}, "forgotten": True}
    after["tasks"]["verdict"] = {"aggregate": {}, "samples": {
        "forgotten": True, "summary": "like unseen text", "share_forgotten": 1.0,
        "thresholds": {"ma": 0.2}, "quantile": 0.5, "aucs_within_band": True,
        "auc_band": [0.4, 0.6], "samples": [row]}}
    _write_eval(run_dir / "eval-before", before)
    _write_eval(run_dir / "eval-after", after)
    _write_eval(tmp_path / "retain", _eval({"ppl_wikitext": {"perplexity": 24.0}}))
    page = build_report(run_dir, retain=tmp_path / "retain")[1].read_text()
    rows = {row[0]: row[1:] for row in _table_rows(page, "utility")}
    assert rows["wikitext perplexity"] == ["25.500", "27.250", "24.000"]
    assert rows["arc_easy accuracy"] == ["0.500", "0.450", "-"]
    assert rows["wizard_of_wikipedia F1"] == ["0.125", "0.110", "-"]
    assert rows["MIA AUC (loss)"] == ["0.970", "0.520", "-"]
    assert "<th>retain model</th>" in page
    assert _table_rows(page, "verdict")[0][:3] == ["s0", "yes", "0.100 (40)"]
    assert "Overall: FORGOTTEN (" in page
    assert len(re.findall(r"<img ", page)) == 5  # + perplexity bars, score bars


def test_cli_report_writes_both_files(run_dir, tmp_path, capsys):
    out = tmp_path / "report"
    assert cli.main(["report", str(run_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(out / "report.md"), str(out / "report.html")]
    assert (out / "report.html").stat().st_size > 1000


def test_cli_missing_run_json_is_a_one_line_error(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert error.startswith("unlearnlm: error: no run.json in") and "unlearnlm unlearn" in error


def test_a_named_eval_file_must_exist(run_dir, tmp_path):
    with pytest.raises(UnlearnError, match="no eval.json"):
        build_report(run_dir, before=tmp_path / "nothing")
