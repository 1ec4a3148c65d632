"""The `unlearnlm` command: an end-to-end run, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from unlearnlm.cli import main

TINY = ["--method", "icu", "--prefix-tokens", "4", "--suffix-tokens", "all", "--batch-size", "2",
        "--no-check"]  # the check after a run has its own tests (test_audit.py)


def test_command_runs_end_to_end(tiny_llama_dir, record_files, tmp_path):
    """The installed console script, in a subprocess: YAML settings with a flag overriding one."""
    config = tmp_path / "settings.yaml"
    config.write_text("lr: 0.0005\nmax-epochs: 3\nmethod: icu\n")
    out = tmp_path / "run"
    exe = Path(sys.executable).with_name("unlearnlm")
    cmd = [str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else
           ["-m", "unlearnlm.cli"]), "unlearn", "--model", str(tiny_llama_dir),
           "--forget", str(record_files["forget"]), "--pool", str(record_files["pool"]),
           "--out", str(out), "--config", str(config), "--max-epochs", "1", *TINY]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Done after 1 epochs" in done.stdout
    record = json.loads((out / "run.json").read_text())
    assert record["config"]["lr"] == 0.0005  # from the YAML
    assert record["config"]["max_epochs"] == 1  # the flag wins over the YAML
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()


def _bad_run(capsys, tmp_path, **paths) -> tuple[int, str]:
    out = tmp_path / "out"
    args = ["unlearn", "--out", str(out), *TINY]
    for key, value in paths.items():
        args += [f"--{key}", str(value)]
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert not out.exists(), "a failed run must write nothing"
    return code, err[-1] if err else ""


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("empty.jsonl", "", "is empty"),
        ("nocol.csv", "doc_id,body\n1,hello there\n", "text"),
        ("short.jsonl", '{"text": "hi"}\n', "prefix"),
    ],
)
def test_bad_forget_file_exits_2_with_one_line(
    capsys, tmp_path, tiny_llama_dir, record_files, name, content, expected
):
    forget = _write(tmp_path / name, content)
    code, line = _bad_run(capsys, tmp_path, model=tiny_llama_dir, forget=forget,
                          pool=record_files["pool"])
    assert code == 2
    assert line.startswith("unlearnlm: error:") and expected in line


def test_unknown_model_name(capsys, tmp_path, record_files):
    code, line = _bad_run(capsys, tmp_path, model="no-such-model",
                          forget=record_files["forget"], pool=record_files["pool"])
    assert code == 2 and "unknown model 'no-such-model'" in line


def test_unreadable_file(capsys, tmp_path, tiny_llama_dir, record_files):
    forget = tmp_path / "binary.txt"
    forget.write_bytes(b"\xff\xfe\x00bad")
    code, line = _bad_run(capsys, tmp_path, model=tiny_llama_dir, forget=forget,
                          pool=record_files["pool"])
    assert code == 2 and "UTF-8" in line


def test_missing_file(capsys, tmp_path, tiny_llama_dir, record_files):
    code, line = _bad_run(capsys, tmp_path, model=tiny_llama_dir,
                          forget=tmp_path / "nope.jsonl", pool=record_files["pool"])
    assert code == 2 and "nope.jsonl" in line


def test_bad_setting_value(capsys, tmp_path, tiny_llama_dir, record_files):
    code = main(["unlearn", "--model", str(tiny_llama_dir), "--forget",
                 str(record_files["forget"]), "--out", str(tmp_path / "o"),
                 "--drop-rule", "maybe"])
    assert code == 2
    assert "drop_rule must be one of" in capsys.readouterr().err


def test_methods_lists_icu(capsys):
    assert main(["methods"]) == 0
    assert '"analogous_kl": 1.0' in capsys.readouterr().out


def test_optional_kernel_notices_stay_off_the_console():
    """torchao announces at import the CUDA and triton kernels a CPU build lacks, and torch its
    pytree deprecations; after the command line's logging set-up none of that reaches stderr."""
    import subprocess
    import sys

    pytest.importorskip("torchao")
    code = ("from unlearnlm.cli import _setup_logging; _setup_logging(False); "
            "import torchao, torch.utils._pytree; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, check=True)
    assert done.stdout.strip() == "ok"
    assert "Failed to load" not in done.stderr and "triton" not in done.stderr, done.stderr
    assert "_pytree" not in done.stderr, done.stderr
