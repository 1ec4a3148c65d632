"""Tests for unlearnlm.data.texts: reading forget/pool files and splitting them by tokens."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import build_tiny_llama_tokenizer
from unlearnlm.data.texts import (
    Record,
    Sample,
    file_sha256,
    read_records,
    split_records,
    texts_sha256,
)
from unlearnlm.errors import UnlearnError


def write(folder: Path, name: str, content: str | bytes) -> Path:
    path = folder / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def assert_one_line(message: str) -> None:
    assert message
    assert len(message.splitlines()) == 1, message


@pytest.fixture(scope="module")
def llama_tokenizer():
    return build_tiny_llama_tokenizer()


@pytest.fixture(params=["gpt2", "llama"])
def tokenizer(request):
    name = "gpt2_tokenizer" if request.param == "gpt2" else "llama_tokenizer"
    return request.getfixturevalue(name)


# ---------------------------------------------------------------- formats


def test_jsonl_text_ids_and_blank_lines(tmp_path):
    path = write(
        tmp_path,
        "f.jsonl",
        '{"text": "alpha"}\n\n   \n{"id": "x7", "text": "beta"}\r\n{"id": 5, "text": "gamma"}\n',
    )
    records = read_records(path)
    assert [r.id for r in records] == ["0", "x7", "5"]  # default id: 0-based line number
    assert [r.text for r in records] == ["alpha", "beta", "gamma"]
    assert all(r.prefix is None and r.suffix is None for r in records)


def test_jsonl_prefix_and_suffix(tmp_path):
    line = json.dumps({"id": "p1", "prefix": "Alice was born ", "suffix": "on 3 March."})
    (record,) = read_records(write(tmp_path, "f.jsonl", line))
    assert record == Record("p1", "Alice was born on 3 March.", "Alice was born ", "on 3 March.")


def test_csv_quotes_commas_and_newlines_in_fields(tmp_path):
    texts = ['He said "hi", then left.', "line one\nline two", 'a,b,"c"\r\nd', "plain"]
    path = tmp_path / "f.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["corpus", "text"])
        writer.writerows([["web", text] for text in texts])
    records = read_records(path)
    assert [r.text for r in records] == texts
    assert [r.id for r in records] == ["0", "1", "2", "3"]


def test_csv_ids_prefer_doc_id_and_header_bom(tmp_path):
    path = write(tmp_path, "f.csv", "\ufeffid,Text,doc_id\r\n9,first,a\r\n8,second,b\r\n")
    records = read_records(path)
    assert [(r.id, r.text) for r in records] == [("a", "first"), ("b", "second")]


def test_txt_one_sample_a_line(tmp_path):
    path = write(tmp_path, "f.txt", b'\xef\xbb\xbffirst line\r\n\r\n  \nthird, with "quotes"\n')
    records = read_records(path)
    assert [(r.id, r.text) for r in records] == [("0", "first line"), ("3", 'third, with "quotes"')]


def test_very_long_lines_and_fields(tmp_path):
    long_text = "word " * 60_000  # 300k characters, above csv's default 131,072 field limit
    cases = {
        "f.txt": long_text,
        "f.jsonl": json.dumps({"text": long_text}),
        "f.csv": "text\n" + '"' + long_text + '"\n',
    }
    for name, content in cases.items():
        (record,) = read_records(write(tmp_path, name, content))
        assert record.text == long_text, name


def test_paper_forget_set_csv(data_dir):
    path = data_dir / "lm_extraction" / "forget_sets" / "lm_extraction_32_0.csv"
    records = read_records(path)
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(records) == 32
    assert [r.id for r in records] == [row["doc_id"] for row in rows]
    assert records[0].id == "1670"
    assert all(r.text == row["text"] for r, row in zip(records, rows, strict=True))
    assert sum("\n" in r.text for r in records) > 10  # multi-line fields came through whole


# ---------------------------------------------------------------- bad input


BAD_FILES = [
    ("f.jsonl", b'{"text": "caf\xe9"}\n', ["not UTF-8", "byte offset 13", "line 1", "re-encode"]),
    ("f.txt", b"ok\n\xff\xfeb\n", ["not UTF-8", "byte offset 3", "line 2"]),
    ("f.jsonl", b"", ["is empty"]),
    ("f.txt", b"\n \n\t\n", ["is empty"]),
    ("f.jsonl", "\u00a0\n\u2003\n".encode(), ["no samples"]),
    ("f.json", b'{"text": "a"}', ["unknown extension", ".jsonl, .csv, .txt"]),
    ("f", b"text", ["unknown extension"]),
    ("f.jsonl", b'{"text": "a"}\n{"text": "b",}\n', ["line 2", "bad JSON"]),
    ("f.jsonl", b'["a list"]\n', ["line 1", "JSON object", "an array"]),
    ("f.jsonl", b'"just a string"\n', ["JSON object", "a string"]),
    ("f.jsonl", b'{"text": "a"}\n{"body": "x"}\n', ["line 2", 'no "text" field', "'body'"]),
    ("f.jsonl", b'{"prefix": "only a prefix"}\n', ['no "text" field', "'prefix'"]),
    ("f.jsonl", b'{"text": "   "}\n', ["line 1", "empty or only whitespace"]),
    ("f.jsonl", b'{"prefix": " ", "suffix": "\\n"}\n', ["empty or only whitespace"]),
    ("f.jsonl", b'{"text": 5}\n', ['"text" is a number', "not a string"]),
    ("f.jsonl", b'{"text": ["a"]}\n', ['"text" is an array']),
    ("f.jsonl", b'{"prefix": "a", "suffix": null}\n', ['"suffix" is null']),
    ("f.jsonl", b'{"text": "\\ud800x"}\n', ["lone surrogate"]),
    ("f.jsonl", b'{"text": "a", "id": [1]}\n', ["the id is an array"]),
    ("f.jsonl", b'{"text": "a", "id": 1}\n{"text": "b", "id": "1"}\n', ["id 1 appears 2 times"]),
    ("f.jsonl", b"[" * 100_000, ["line 1", "bad JSON"]),
    ("f.jsonl", b'{"text": "a", "id": 1' + b"1" * 5000 + b"}", ["line 1", "bad JSON"]),
    ("f.csv", b"doc_id,body\n1,hello\n", ['no "text" column', "'doc_id', 'body'"]),
    ("f.csv", b'"multi\nline",x\n1,2\n', ['no "text" column', "'multi\\nline'"]),
    ("f.csv", b"id,text\n1,hello\n2,   \n", ["line 3", "empty or only whitespace"]),
    ("f.csv", b'id,text\n1,"a\nb"\n2,""\n', ["line 4", "empty or only whitespace"]),
    ("f.csv", b"id,corpus,text\n1,web\n", ["line 2", "fields, fewer than"]),
    ("f.csv", b"id,text\n,hello\n", ["line 2", "id cell is empty"]),
    ("f.txt", b"abc\n\x00def\n", ["NUL byte", "byte offset 4", "line 2", "UTF-8"]),
    ("f.csv", "text\nA\n".encode("utf-16"), ["NUL byte", "UTF-16"]),
]


@pytest.mark.parametrize(("name", "content", "expected"), BAD_FILES)
def test_bad_files_raise_one_line_errors(tmp_path, name, content, expected):
    path = write(tmp_path, name, content)
    with pytest.raises(UnlearnError) as info:
        read_records(path, role="pool")
    message = str(info.value)
    assert_one_line(message)
    assert message.startswith(f"pool file {path}")
    for part in expected:
        assert part in message


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(UnlearnError, match="forget file .*nope.jsonl not found"):
        read_records(tmp_path / "nope.jsonl")
    with pytest.raises(UnlearnError, match="is a directory"):
        read_records(tmp_path)


def test_unreadable_file(tmp_path, monkeypatch):
    path = write(tmp_path, "f.txt", "hello")

    def deny(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", deny)
    with pytest.raises(UnlearnError, match="permission denied") as info:
        read_records(path)
    assert_one_line(str(info.value))


def test_odd_path_is_shown_on_one_line(tmp_path):
    with pytest.raises(UnlearnError) as info:
        read_records(tmp_path / "two\nlines.txt")
    assert_one_line(str(info.value))
    assert "not found" in str(info.value)


# ---------------------------------------------------------------- property-based


def assert_records_or_clean_error(path: Path) -> None:
    """The contract: valid records, or an UnlearnError on one line; never anything else."""
    try:
        records = read_records(path)
    except UnlearnError as err:
        assert_one_line(str(err))
        return
    assert records
    assert all(isinstance(r.text, str) and r.text.strip() for r in records)
    assert all(isinstance(r.id, str) and r.id for r in records)
    assert len({r.id for r in records}) == len(records)


FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
EXTENSIONS = st.sampled_from([".jsonl", ".csv", ".txt"])
ODD_CHARS = ["\x00", "\u0301", "\u202e", "\u05d0", "\U0001f600", "\ufeff", "\u2028", "\x85", "\r"]
VALID_TEXT = st.text(
    alphabet=st.one_of(st.characters(blacklist_categories=("Cs",)), st.sampled_from(ODD_CHARS)),
    max_size=300,
)
CSV_PIECES = st.sampled_from(
    ['"', '""', ",", "\n", "\r\n", "\r", "text", "id", "doc_id", " ", "a", "\x00", "\ufeff", "é"]
)


@FUZZ
@given(content=st.binary(max_size=2000), extension=EXTENSIONS)
def test_random_bytes_never_crash(tmp_path, content, extension):
    assert_records_or_clean_error(write(tmp_path, "fuzz" + extension, content))


@FUZZ
@given(content=VALID_TEXT, extension=EXTENSIONS)
def test_random_unicode_never_crashes(tmp_path, content, extension):
    assert_records_or_clean_error(write(tmp_path, "fuzz" + extension, content))


@FUZZ
@given(pieces=st.lists(CSV_PIECES, max_size=60))
def test_csv_quoting_tricks_never_crash(tmp_path, pieces):
    assert_records_or_clean_error(write(tmp_path, "fuzz.csv", "".join(pieces)))


JSON_VALUES = st.one_of(
    VALID_TEXT, st.integers(), st.none(), st.booleans(), st.lists(st.integers(), max_size=2)
)
JSON_OBJECTS = st.dictionaries(
    st.sampled_from(["text", "prefix", "suffix", "id", "doc_id", "other"]), JSON_VALUES
)


@FUZZ
@given(lines=st.lists(st.one_of(JSON_OBJECTS.map(json.dumps), VALID_TEXT), max_size=8))
def test_jsonl_objects_never_crash(tmp_path, lines):
    assert_records_or_clean_error(write(tmp_path, "fuzz.jsonl", "\n".join(lines)))


@FUZZ
@given(text=VALID_TEXT.filter(lambda t: t.strip() and "\x00" not in t))
def test_any_valid_text_round_trips_through_jsonl_and_csv(tmp_path, text):
    (record,) = read_records(write(tmp_path, "f.jsonl", json.dumps({"text": text})))
    assert record.text == text
    path = tmp_path / "f.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["text"], [text]])
    (record,) = read_records(path)
    assert record.text == text


# ---------------------------------------------------------------- splitting by tokens


def ids_of(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


LONG_TEXT = " ".join(
    f"Record {i}: Alice Smith, born 3 March 1981, works as a baker in Leeds." for i in range(12)
)


def test_long_text_keeps_the_last_window(tokenizer):
    ids = ids_of(tokenizer, LONG_TEXT)
    assert len(ids) > 60
    (sample,) = split_records([Record("r", LONG_TEXT)], tokenizer, 20, 30)
    assert sample.prefix_ids == ids[-50:-30]
    assert sample.suffix_ids == ids[-30:]
    assert sample.input_ids == ids[-50:]
    assert sample.text == tokenizer.decode(ids[-50:])
    assert LONG_TEXT.endswith(sample.text.strip())


def test_exact_window_keeps_the_text(tokenizer, caplog):
    ids = ids_of(tokenizer, LONG_TEXT)
    with caplog.at_level(logging.WARNING, logger="unlearnlm.data.texts"):
        (sample,) = split_records([Record("r", LONG_TEXT)], tokenizer, len(ids) - 7, 7)
    assert sample == Sample("r", LONG_TEXT, ids[:-7], ids[-7:])
    assert not caplog.records


def test_suffix_none_takes_all_the_rest(tokenizer):
    ids = ids_of(tokenizer, LONG_TEXT)
    (sample,) = split_records([Record("r", LONG_TEXT)], tokenizer, 10, None)
    assert sample.prefix_ids == ids[:10]
    assert sample.suffix_ids == ids[10:]
    assert sample.text == LONG_TEXT


def test_short_texts_split_in_proportion_with_one_warning(tokenizer, caplog):
    short = "Bob Jones lives at 12 Station Road and works as a nurse."
    shorter = "Alice Smith was born on 3 March 1981."
    n_short, n_shorter = len(ids_of(tokenizer, short)), len(ids_of(tokenizer, shorter))
    prefix_tokens, suffix_tokens = 4, 200
    assert prefix_tokens < n_shorter <= n_short < prefix_tokens + suffix_tokens
    records = [Record("a", short), Record("b", LONG_TEXT * 3), Record("c", shorter)]
    with caplog.at_level(logging.WARNING, logger="unlearnlm.data.texts"):
        samples = split_records(records, tokenizer, prefix_tokens, suffix_tokens, role="pool")
    warnings = [r for r in caplog.records if r.name == "unlearnlm.data.texts"]
    assert len(warnings) == 1
    assert "2 of 3 pool samples" in warnings[0].getMessage()
    for sample, n in ((samples[0], n_short), (samples[2], n_shorter)):
        expected = min(max(round(n * prefix_tokens / (prefix_tokens + suffix_tokens)), 1), n - 1)
        assert len(sample.prefix_ids) == expected
        assert len(sample.input_ids) == n
    assert len(samples[1].input_ids) == prefix_tokens + suffix_tokens


def test_proportional_split_by_hand(gpt2_tokenizer):
    text = "one two three four five six seven eight nine ten"  # 10 GPT-2 tokens
    assert len(ids_of(gpt2_tokenizer, text)) == 10
    (sample,) = split_records([Record("r", text)], gpt2_tokenizer, 5, 15)
    assert len(sample.prefix_ids) == round(10 * 5 / 20) == 2  # round(2.5) is 2
    (sample,) = split_records([Record("r", text)], gpt2_tokenizer, 9, 1000)
    assert len(sample.prefix_ids) == 1  # round(0.09) clamped up to 1


def test_too_short_text_names_sample_count_and_fix(tokenizer):
    n = len(ids_of(tokenizer, "Alice Smith"))
    with pytest.raises(UnlearnError) as info:  # no suffix length: the prefix takes every token
        split_records([Record("ok", LONG_TEXT), Record("s-7", "Alice Smith")], tokenizer, n, None)
    message = str(info.value)
    assert_one_line(message)
    for part in ("forget sample s-7", f"has {n} tokens", "--prefix-tokens", "remove the sample"):
        assert part in message
    one = next(w for w in ("a", "A", "x", "1") if len(ids_of(tokenizer, w)) == 1)
    with pytest.raises(UnlearnError, match="sample s-8 has 1 tokens"):
        split_records([Record("s-8", one)], tokenizer, 4, 50)


def test_text_no_longer_than_the_prefix_is_split_in_proportion_unless_forget(tokenizer):
    text = "Alice Smith was born on 3 March 1981."
    n = len(ids_of(tokenizer, text))
    (sample,) = split_records([Record("c", text)], tokenizer, n + 3, 50, role="calibration")
    assert len(sample.prefix_ids) == min(max(round(n * (n + 3) / (n + 53)), 1), n - 1)
    assert len(sample.suffix_ids) >= 1 and len(sample.input_ids) == n
    with pytest.raises(UnlearnError, match="forget sample c has"):
        split_records([Record("c", text)], tokenizer, n + 3, 50)


def test_presplit_records_keep_the_users_split(tokenizer):
    record = Record("p", "Alice was born on 3 March.", "Alice was born", " on 3 March.")
    (sample,) = split_records([record, Record("t", LONG_TEXT)], tokenizer, 50, 50)[:1]
    assert sample.prefix_ids == ids_of(tokenizer, "Alice was born")
    assert sample.suffix_ids == ids_of(tokenizer, " on 3 March.")
    assert sample.text == record.text


@pytest.mark.parametrize("prefix, suffix", [("", "on 3 March."), ("Alice was born", "")])
def test_presplit_record_with_an_empty_part(gpt2_tokenizer, prefix, suffix):
    record = Record("p", prefix + suffix, prefix, suffix)
    with pytest.raises(UnlearnError, match="sample p has an empty (prefix|suffix)") as info:
        split_records([record], gpt2_tokenizer)
    assert_one_line(str(info.value))


@pytest.mark.parametrize(
    "prefix_tokens, suffix_tokens", [(0, 50), (-1, 50), (2.5, 50), (True, 50), (5, 0), (5, "9")]
)
def test_bad_token_counts(gpt2_tokenizer, prefix_tokens, suffix_tokens):
    with pytest.raises(UnlearnError, match="(prefix|suffix)_tokens must be an integer"):
        split_records([Record("r", LONG_TEXT)], gpt2_tokenizer, prefix_tokens, suffix_tokens)


def test_paper_forget_set_splits_like_the_benchmark(data_dir, gpt2_tokenizer):
    """Re-tokenizing the decoded 200-token text gives back the benchmark's prefix and suffix."""
    records = read_records(data_dir / "lm_extraction" / "forget_sets" / "lm_extraction_32_0.csv")
    samples = split_records(records, gpt2_tokenizer, 50, 50)
    assert all(len(s.prefix_ids) == 50 and len(s.suffix_ids) == 50 for s in samples)
    wanted = {s.id for s in samples}
    truth = {}
    with open(data_dir / "lm_extraction" / "lm_extraction_text.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row["split"] == "train" and str(row["index"]) in wanted:
                truth[str(row["index"])] = row
    assert len(truth) == 32
    matches = sum(truth[s.id]["suffix_ids"] == s.suffix_ids for s in samples)
    assert matches >= 30  # one sample re-tokenizes differently at a cut multi-byte character


# ---------------------------------------------------------------- fingerprints


def test_hashes(tmp_path):
    path = write(tmp_path, "f.txt", "a\nb\n")
    assert file_sha256(path) == hashlib.sha256(b"a\nb\n").hexdigest()
    assert texts_sha256(["ab", "c"]) != texts_sha256(["a", "bc"])  # boundaries count
    assert texts_sha256(["a", "b"]) != texts_sha256(["b", "a"])  # order counts
    assert texts_sha256(["a", "b"]) == texts_sha256(["a", "b"])
    assert len(texts_sha256([])) == 64
    with pytest.raises(UnlearnError, match="can't hash"):
        file_sha256(tmp_path / "missing.txt")
