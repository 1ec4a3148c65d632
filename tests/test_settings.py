"""The settings system across commands: flags made from fields, --x/--no-x, --config, checks."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from unlearnlm.audit.settings import AuditSettings
from unlearnlm.bench.runner import BenchSettings
from unlearnlm.cli import build_parser, main
from unlearnlm.demo import DemoSettings
from unlearnlm.errors import UnlearnError
from unlearnlm.evaluate.settings import EvalSettings
from unlearnlm.evaluate.suite import TASKS
from unlearnlm.settings import FinetuneSettings, UnlearnConfig, settings_from_args

# each command, its settings class, and the flags a run cannot start without
COMMANDS = {
    "unlearn": (UnlearnConfig, ["--model", "m", "--forget", "f.jsonl", "--out", "o"]),
    "finetune": (FinetuneSettings, ["--model", "m", "--data", "d.jsonl", "--out", "o"]),
    "eval": (EvalSettings, ["--model", "m", "--out", "o"]),
    "audit": (AuditSettings, ["--model", "m", "--forget", "f.jsonl", "--out", "o"]),
    "bench": (BenchSettings, []),
    "demo": (DemoSettings, []),
}


def _settings(command: str, *flags: str):
    cls, required = COMMANDS[command]
    return settings_from_args(cls, build_parser().parse_args([command, *required, *flags]))


def _flag(name: str, cls=None) -> str:
    """The flag of a field: its declared ``flag`` name, else the field's name with dashes."""
    fields = {f.name: f for f in dataclasses.fields(cls)} if cls else {}
    declared = fields[name].metadata.get("flag") if name in fields else None
    return "--" + (declared or name.replace("_", "-"))


def _booleans(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if str(f.type) == "bool"]


@pytest.mark.parametrize("command", [c for c, (cls, _) in COMMANDS.items() if _booleans(cls)])
def test_every_boolean_switches_on_and_off(command):
    """``--x`` turns x on and ``--no-x`` off, whatever its default (default-true ones included:
    --no-stop-on-el, --no-el-every-epoch, --no-calibrate-el, --no-pair-with-pool)."""
    cls = COMMANDS[command][0]
    for name in _booleans(cls):
        assert getattr(_settings(command, _flag(name, cls)), name) is True
        assert getattr(_settings(command, "--no-" + _flag(name, cls)[2:]), name) is False
        assert getattr(_settings(command), name) is getattr(cls(), name)  # untouched: default


def test_default_true_booleans_can_be_turned_off():
    defaults = UnlearnConfig()
    assert defaults.stop_on_el and defaults.el_every_epoch and defaults.calibrate_el
    off = _settings("unlearn", "--no-stop-on-el", "--no-el-every-epoch", "--no-calibrate-el")
    assert not (off.stop_on_el or off.el_every_epoch or off.calibrate_el)
    assert DemoSettings().pair_with_pool and not _settings("demo", "--no-pair-with-pool"
                                                            ).pair_with_pool


@pytest.mark.parametrize("command, yaml_text, flags, expected", [
    ("unlearn", "lr: 1.0e-4\nstop_on_el: true\nseed: 7\n", ["--lr", "0.002", "--no-stop-on-el"],
     {"lr": 0.002, "stop_on_el": False, "seed": 7}),
    ("finetune", "lr: 1.0e-3\ntarget-accuracy: 0.9\noverwrite: true\n",
     ["--target-accuracy", "null", "--no-overwrite"],
     {"lr": 1e-3, "target_accuracy": None, "overwrite": False}),
    ("eval", "tasks: forget,mia\nlimit: 5\nel_n: 3\n", ["--limit", "7"],
     {"tasks": "forget,mia", "limit": 7, "el_n": 3}),
    ("bench", "methods: icu,ga\nel_every_epoch: true\nmax_epochs: 3\n",
     ["--no-el-every-epoch", "--methods", "npo"],
     {"methods": ["npo"], "el_every_epoch": False, "max_epochs": 3}),
    ("demo", "forget: 4\npair_with_pool: false\nunlearn_lr: 0.01\n",
     ["--pair-with-pool", "--forget", "2"],
     {"forget": 2, "pair_with_pool": True, "unlearn_lr": 0.01}),
])
def test_flags_override_the_yaml_file_of_every_command(tmp_path, command, yaml_text, flags,
                                                       expected):
    path = tmp_path / f"{command}.yaml"
    path.write_text(yaml_text, encoding="utf-8")
    settings = _settings(command, "--config", str(path), *flags)
    assert {name: getattr(settings, name) for name in expected} == expected


@pytest.mark.parametrize("command", COMMANDS)
def test_unknown_yaml_key_is_one_line_error(tmp_path, capsys, command):
    path = tmp_path / "bad.yaml"
    path.write_text("lr_typo: 1\n", encoding="utf-8")
    code = main([command, *COMMANDS[command][1], "--config", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0] == (f"unlearnlm: error: unknown setting(s) lr_typo; see `unlearnlm {command} "
                      "--help`")


@pytest.mark.parametrize("command, name", [
    ("unlearn", "model"), ("unlearn", "out"), ("finetune", "data"), ("eval", "out")])
def test_required_settings_come_from_a_flag_or_the_yaml(tmp_path, capsys, command, name):
    _, required = COMMANDS[command]
    given = dict(zip(required[::2], required[1::2]))
    value = given.pop(_flag(name))
    flags = [x for pair in given.items() for x in pair]
    assert main([command, *flags]) == 2
    assert f"--{name} is required" in capsys.readouterr().err
    path = tmp_path / "c.yaml"
    path.write_text(f"{name}: {value}\n", encoding="utf-8")
    settings = settings_from_args(COMMANDS[command][0], build_parser().parse_args(
        [command, *flags, "--config", str(path)]))
    assert getattr(settings, name) == value


@pytest.mark.parametrize("cls, values, message", [
    (UnlearnConfig, {"lr": "5e-6"}, "lr must be a number.*write 5.0e-6"),
    (UnlearnConfig, {"stop_on_el": "no"}, "stop_on_el must be true or false"),
    (UnlearnConfig, {"batch_size": 2.5}, "batch_size must be a whole number"),
    (UnlearnConfig, {"method": "magic"}, "method must be one of .*icu"),
    (UnlearnConfig, {"rmu_layer": -1}, r"rmu_layer must lie in \[0, inf\)"),
    (UnlearnConfig, {"rmu_coefficient": 0}, "rmu_coefficient must be positive"),
    (FinetuneSettings, {"target_accuracy": 1.5}, r"target_accuracy must lie in \(0, 1\]"),
    (FinetuneSettings, {"mixed_precision": "fp8"}, "mixed_precision must be one of no, bf16"),
    (FinetuneSettings, {"trainable_layers": 0}, "trainable_layers must be positive or null"),
    (DemoSettings, {"forget": 0}, "forget must be positive"),
    (DemoSettings, {"retain_weight": -1.0}, r"retain_weight must lie in \[0, inf\)"),
    (DemoSettings, {"drop_rule": "xor"}, "drop_rule must be one of and, or"),
    (EvalSettings, {"backend": "vllm"}, "backend must be one of ours, harness"),
    (EvalSettings, {"judge_model": "gpt-4o"}, "--judge-model .* need --judge-url"),
    (BenchSettings, {"finetune_target": 0.0}, r"finetune_target must lie in \(0, 1\]"),
    (BenchSettings, {"limit": -3}, "limit must be positive or null"),
])
def test_bad_values_are_refused_where_the_settings_are_made(cls, values, message):
    with pytest.raises(UnlearnError, match=message):
        cls(**values)


def test_paths_and_whole_numbers_are_taken_as_text_and_numbers(tmp_path):
    settings = FinetuneSettings(model=tmp_path, lr=1)
    assert settings.model == str(tmp_path) and isinstance(settings.lr, float)


def test_eval_help_lists_every_task(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text for name in TASKS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_field_has_a_flag_with_help(capsys, command):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    cls = COMMANDS[command][0]
    for f in dataclasses.fields(cls):
        assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"
        flag = f.metadata.get("flag") or f.name.replace("_", "-")
        assert f"--{flag}" in text
    assert "--config" in text


def test_finetune_command_reads_yaml_and_flags(tiny_llama_dir, record_files, tmp_path, capsys):
    """``unlearnlm finetune --config``: the YAML gives the data and the learning rate, a flag the
    epochs; finetune.json records what ran."""
    out = tmp_path / "ft"
    path = tmp_path / "ft.yaml"
    path.write_text(f"model: {tiny_llama_dir}\ndata: {record_files['forget']}\nlr: 2.0e-3\n"
                    "max_epochs: 9\nprefix_tokens: 4\nsuffix_tokens: null\n", encoding="utf-8")
    code = main(["-q", "finetune", "--config", str(path), "--out", str(out), "--max-epochs", "1"])
    assert code == 0, capsys.readouterr().err
    record = json.loads((out / "finetune.json").read_text())
    assert record["settings"]["lr"] == 2e-3 and record["settings"]["max_epochs"] == 1
    assert record["settings"]["suffix_tokens"] is None and len(record["epochs"]) == 1
    assert Path(record["data"]) == record_files["forget"]
