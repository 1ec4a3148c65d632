"""The README agrees with the code: its Python snippets run, its method lists are the methods."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import FORGET_RECORDS, POOL_RECORDS, write_jsonl
from unlearnlm.methods.losses import METHODS

README = Path(__file__).resolve().parents[1] / "README.md"
EMBEDDED_MODEL = '"smollm2-135m"'


def python_snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_python_snippets():
    assert python_snippets(), "README.md lost its ```python blocks"


@pytest.mark.parametrize("index", range(len(python_snippets())))
def test_readme_python_snippet_runs(index, tiny_llama_dir, tmp_path, monkeypatch):
    """Each snippet as written, in a folder holding the files it names (texts of over 50 tokens,
    the default prefix length), with the embedded SmolLM2 swapped for the tiny Llama (the only
    substitution)."""
    snippet = python_snippets()[index]
    monkeypatch.chdir(tmp_path)
    records = FORGET_RECORDS + POOL_RECORDS
    long_texts = [" ".join(records[i:] + records[:i]) for i in range(len(records))]  # > 50 tokens
    for name, texts in (("forget.jsonl", long_texts[:3]), ("pool.jsonl", long_texts[3:]),
                        ("kept.jsonl", long_texts[3:5]), ("unseen.jsonl", long_texts[5:])):
        write_jsonl(tmp_path / name, texts)
    code = snippet.replace(EMBEDDED_MODEL, repr(str(tiny_llama_dir)))
    exec(compile(code, f"README.md python block {index + 1}", "exec"), {"__name__": "readme"})


def test_readme_method_lists_are_the_methods():
    """Both places that list the methods (the --method flag and the baselines section) name
    exactly the entries of METHODS."""
    text = README.read_text(encoding="utf-8")
    flag = re.search(r"- `--method`: (.*?); `unlearnlm methods`", text, flags=re.S)
    baselines = re.search(r"`unlearnlm methods` lists the methods: (.*?); each is", text,
                          flags=re.S)
    for found in (flag, baselines):
        assert found is not None
        assert sorted(re.findall(r"`([a-z-]+)`", found.group(1))) == sorted(METHODS)
