"""The scale benchmarks keep working: the GPU step benchmark's dry run on the CPU, and the memory
benchmark's counted bytes per parameter, which follow from what each mode keeps."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_step_dry_run_compares_ours_with_plain_transformers(tmp_path, capsys):
    """Both steps compute the same ICU loss on the same weights and inputs, both generators give
    the same greedy tokens, and the ratio printed is plain seconds over ours."""
    out = tmp_path / "gpu_step.json"
    result = _script("gpu_step").main(["--dry-run", "--json", str(out)])
    assert result["first_loss"]["ours"] == pytest.approx(result["first_loss"]["plain"], abs=1e-5)
    assert result["same_generations"] == "4 of 4"
    for key in ("step", "generate"):
        speeds = result[f"{key}_tokens_per_s"]
        assert speeds["ours"] > 0 and speeds["plain"] > 0
        assert result[f"{key}_ratio"] == pytest.approx(speeds["ours"] / speeds["plain"])
    assert json.loads(out.read_text())["shape"] == "tiny"
    printed = capsys.readouterr().out
    assert "ratio (ours / plain)" in printed and "drop-test generation" in printed


def test_memory_benchmark_counts_what_each_mode_keeps(tiny_llama_dir):
    """Full Adam training in float32 keeps 4 (weights) + 4 (gradients) + 8 (Adam's two moments)
    + 4 (the reference copy) = 20 bytes per parameter (Adam's step counters add a few bytes per
    tensor, hence the 1 % slack); LoRA keeps the weights, and gradients and
    Adam state for the adapter only (4 + 8 bytes per adapter parameter), and no reference."""
    memory = _script("memory")
    full = memory.measure("full", str(tiny_llama_dir), batch=2, tokens=8, steps=1)
    per = full["bytes_per_parameter"]
    assert per["weights"] == pytest.approx(4.0, rel=1e-2)  # + the small rotary buffer
    assert (per["gradients"], per["optimizer"], per["reference"]) == pytest.approx((4, 8, 4),
                                                                                   rel=1e-2)
    lora = memory.measure("lora", str(tiny_llama_dir), batch=2, tokens=8, steps=1)
    n, adapter = lora["parameters"], lora["trainable"]
    assert 0 < adapter < n
    expected = {"gradients": 4 * adapter / n, "optimizer": 8 * adapter / n, "reference": 0.0}
    assert {k: lora["bytes_per_parameter"][k] for k in expected} == pytest.approx(expected,
                                                                                  rel=1e-2)
    assert lora["bytes"]["weights"] == pytest.approx(full["bytes"]["weights"] + 4 * adapter)


def test_sisa_deletion_benchmark_on_the_tiny_model(tiny_llama_dir, tmp_path, monkeypatch,
                                                   data_dir):  # perplexity on WikiText
    """The whole measurement on the tiny Llama: both deletions equal nothing but the retrain
    (the eight-record deletion's adapters are the retrain's, tensor for tensor), the ratios are
    the printed times' quotients, and every model has its leak counts and perplexity."""
    result = _script("sisa_deletion").main([
        "--out", str(tmp_path / "sisa"), "--model", str(tiny_llama_dir), "--shards", "2",
        "--epochs", "1", "--lora-rank", "2", "--wikitext-docs", "1"])
    exact = result["exact_eight"]
    assert exact["equal_tensors"] == exact["tensors"] > 0 and exact["largest_difference"] == 0
    d = result["deletions"]
    assert result["ratio_one"] == pytest.approx(d["one"]["wall_seconds"]
                                                / result["train_seconds"], abs=1e-3)
    assert result["ratio_eight"] == pytest.approx(d["eight"]["wall_seconds"]
                                                  / result["scratch_seconds"], abs=1e-3)
    assert d["one"]["texts"] == 1 and d["eight"]["texts"] == 8
    assert len(d["one"]["retrained_from_slice"]) == 1
    assert set(result["models"]) == {"base", "single", "trained", "forgot-one", "forgot-eight"}
    for row in result["models"].values():
        assert 0 <= row["forget_leaked"] <= 32 and 0 <= row["kept_leaked"] <= 64
        assert row["wikitext_ppl"] > 1

    # each shard alone, on its own records and on the others'
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    shards = _script("sisa_shards").main(["--sisa", str(tmp_path / "sisa" / "trained")])["shards"]
    assert [r["shard"] for r in shards] == [0, 1]
    assert sum(r["texts"] for r in shards) == 24 and [r["texts"] for r in shards] == \
        result["shard_sizes"]
    for row in shards:
        assert row["own_fields"] == 4 * row["texts"] and row["others_fields"] == 4 * (24 - row[
            "texts"])
        assert 0 <= row["own_leaked"] <= row["own_fields"]
        assert 0 <= row["others_leaked"] <= row["others_fields"]
