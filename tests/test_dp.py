"""DP-SGD fine-tuning (``--dp-epsilon``): each record's own gradient, clipped to the bound, noise
of the planned scale, the epsilon actually spent, only the trainable weights changed, and the
settings refused in one line."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from conftest import FORGET_RECORDS, build_tiny_llama_tokenizer
from unlearnlm.cli import main
from unlearnlm.errors import UnlearnError
from unlearnlm.lm.loading import load_model
from unlearnlm.settings import FinetuneSettings
from unlearnlm.train.dp import make_private, record_loss
from unlearnlm.train.finetune import _private, finetune

pytest.importorskip("opacus")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

FT = dict(max_epochs=2, lr=1e-2, batch_size=2, prefix_tokens=4, suffix_tokens=None,
          target_accuracy=None, dp_delta=1e-3)


def _plain():
    return torch.autocast("cpu", enabled=False)


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def test_each_record_gets_its_own_gradient_clipped_to_the_bound_plus_planned_noise(
    tiny_llama_dir
):
    """Three records in one batch. Opacus' per-record gradient of record i equals the gradient of
    record i's loss computed alone (padding and the other records change nothing). With
    C = 1e-3, far under every record's gradient norm, the clipped sum is by hand
    sum_i g_i * C / |g_i| (norm at most 3 C), and the noise (the update times the expected batch
    size, minus that sum) has standard deviation sigma * C."""
    model, tokenizer, _ = load_model(str(tiny_llama_dir))
    model.train()
    for p in model.parameters():  # train the last block only: 10k numbers to sample noise from
        p.requires_grad_(False)
    params = list(model.model.layers[-1].parameters())
    for p in params:
        p.requires_grad_(True)
    sequences = [tokenizer(t)["input_ids"] for t in FORGET_RECORDS[:3]]
    pad = tokenizer.pad_token_id
    alone = []
    for seq in sequences:
        model.zero_grad()
        record_loss(model, [seq], pad, "cpu", _plain).backward()
        alone.append([p.grad.clone() for p in params])
    optimizer = torch.optim.SGD(params, lr=0.0)
    bound = 1e-3
    training = make_private(model, optimizer, 6, batch_size=3, epochs=1, epsilon=50.0,
                            delta=1e-3, max_grad_norm=bound, seed=0)
    assert training.sample_rate == pytest.approx(0.5) and training.noise_multiplier > 0
    training.optimizer.zero_grad(set_to_none=True)
    record_loss(model, sequences, pad, "cpu", _plain).backward()
    for k, p in enumerate(params):
        for i in range(3):
            assert torch.allclose(p.grad_sample[i], alone[i][k], atol=1e-6), (k, i)
    norms = [float(_flat(g).norm()) for g in alone]
    assert min(norms) > 10 * bound
    training.optimizer.step()
    summed = _flat([p.summed_grad for p in params])
    expected = sum(_flat(g) * (bound / n) for g, n in zip(alone, norms))
    assert torch.allclose(summed, expected, atol=1e-8)
    assert float(summed.norm()) <= 3 * bound + 1e-9
    noise = _flat([p.grad for p in params]) * training.optimizer.expected_batch_size - summed
    assert float(noise.std()) == pytest.approx(training.noise_multiplier * bound, rel=0.05)
    assert training.engine.accountant.history  # the step was counted


def test_an_empty_poisson_batch_still_takes_a_noisy_counted_step(tiny_llama_dir):
    """No record drawn: the step adds the noise alone (the weights move) and the accountant
    counts it, as DP-SGD with Poisson sampling assumes."""
    from unlearnlm.train.dp import _empty_batch

    model, _, _ = load_model(str(tiny_llama_dir))
    params = [p for p in model.parameters() if p.requires_grad]
    before = _flat([p.detach().clone() for p in params])
    optimizer = torch.optim.SGD(params, lr=1.0)
    training = make_private(model, optimizer, 4, batch_size=2, epochs=1, epsilon=4.0,
                            delta=1e-3, max_grad_norm=1.0, seed=0)
    training.optimizer.zero_grad(set_to_none=True)
    _empty_batch(training.optimizer)
    training.optimizer.step()
    moved = _flat([p.detach() for p in params]) - before
    assert float(moved.std()) == pytest.approx(
        training.noise_multiplier / training.optimizer.expected_batch_size, rel=0.05)
    assert len(training.engine.accountant.history) == 1


def test_dp_lora_run_spends_at_most_its_epsilon_and_changes_only_the_adapter(
    tiny_llama_dir, record_files, tmp_path
):
    """LoRA under DP-SGD from the command line: finetune.json and the console carry the epsilon
    spent (> 0, <= the target, growing each epoch) and a positive noise multiplier; 4 records,
    2 a step on average: 2 Poisson steps an epoch; the saved adapter moved, the base weights
    saved with --merge differ only where adapters sit."""
    out = tmp_path / "dp"
    code = main(["-q", "finetune", "--model", str(tiny_llama_dir), "--data",
                 str(record_files["forget"]), "--out", str(out), "--max-epochs", "2",
                 "--lr", "1e-2", "--batch-size", "2", "--prefix-tokens", "4",
                 "--suffix-tokens", "all", "--target-accuracy", "null", "--lora-rank", "2",
                 "--lora-target-modules", "q_proj,v_proj", "--merge", "--dp-epsilon", "3",
                 "--dp-delta", "1e-3", "--dp-max-grad-norm", "0.5"])
    assert code == 0
    dp = json.loads((out / "finetune.json").read_text())["dp"]
    assert 0 < dp["epsilon_spent"] <= 3.0 and dp["noise_multiplier"] > 0
    assert dp["steps"] == 4 and dp["sample_rate"] == 0.5 and dp["max_grad_norm"] == 0.5
    record = json.loads((out / "finetune.json").read_text())
    spent = [e["epsilon_spent"] for e in record["epochs"]]
    assert 0 < spent[0] < spent[1] == dp["epsilon_spent"]
    merged = load_file(str(out / "model.safetensors"))
    base = load_file(str(tiny_llama_dir / "model.safetensors"))
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert changed == {f"model.layers.{i}.self_attn.{m}.weight" for i in (0, 1)
                       for m in ("q_proj", "v_proj")}


def test_dp_run_of_the_last_block_leaves_every_other_weight(tiny_llama_dir, record_files,
                                                            tmp_path):
    """--trainable-layers 1 under DP-SGD: the last block's weights and the final norm (the
    RMSNorms through Opacus' functorch fallback) move, nothing else does."""
    record = finetune(FinetuneSettings(
        model=str(tiny_llama_dir), data=str(record_files["forget"]), out=str(tmp_path / "o"),
        trainable_layers=1, dp_epsilon=8.0, **FT), progress=False)
    assert 0 < record["dp"]["epsilon_spent"] <= 8.0
    saved = load_file(str(tmp_path / "o" / "model.safetensors"))
    base = load_file(str(tiny_llama_dir / "model.safetensors"))
    changed = {k for k in base if not torch.equal(base[k], saved[k])}
    assert changed == {k for k in base if k.startswith("model.layers.1.")} | {"model.norm.weight"}
    assert "model.layers.1.input_layernorm.weight" in changed


@pytest.mark.parametrize("flags, message", [
    (["--dp-epsilon", "0"], "dp_epsilon must be positive"),
    (["--dp-epsilon", "-1"], "dp_epsilon must be positive"),
    (["--dp-epsilon", "1", "--dp-delta", "1"], "dp_delta must lie in (0, 1)"),
    (["--dp-epsilon", "1", "--dp-delta", "0"], "dp_delta must lie in (0, 1)"),
    (["--dp-epsilon", "1", "--dp-max-grad-norm", "0"], "dp_max_grad_norm must be positive"),
    (["--dp-epsilon", "1", "--general", "g.jsonl"], "--general cannot be combined"),
    (["--dp-epsilon", "1", "--mixed-precision", "fp16"], "fp16"),
    (["--dp-epsilon", "1", "--gradient-checkpointing"], "gradient-checkpointing"),
])
def test_dp_settings_are_refused_in_one_line(capsys, tmp_path, flags, message):
    out = tmp_path / "out"
    code = main(["finetune", "--model", "m", "--data", "d.jsonl", "--out", str(out), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and message in err[-1] and len(err) == 1
    assert not out.exists()


def test_dp_flags_are_listed(capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    shown = capsys.readouterr().out
    assert all(f in shown for f in ("--dp-epsilon", "--dp-delta", "--dp-max-grad-norm"))


def test_dp_under_several_processes_is_one_clear_error():
    prepared = SimpleNamespace(accelerator=SimpleNamespace(num_processes=2))
    with pytest.raises(UnlearnError, match="one process"):
        _private(prepared, 4, FinetuneSettings(dp_epsilon=1.0))


def test_an_epsilon_no_noise_reaches_is_one_clear_error(tiny_llama_dir):
    model, _, _ = load_model(str(tiny_llama_dir))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    with pytest.raises(UnlearnError, match="out of reach"):
        make_private(model, optimizer, 4, batch_size=4, epochs=50, epsilon=1e-7, delta=1e-9,
                     max_grad_norm=1.0, seed=0)


def test_tied_input_and_output_embeddings_get_each_records_own_gradient():
    """Every weight trains and the output layer is the embedding matrix (as in SmolLM2): Opacus
    adds the embedding's and the output layer's per-record parts, and each record's sum equals
    the gradient of its loss computed alone."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_llama_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True)).train()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    params = list(model.parameters())
    sequences = [tokenizer(t)["input_ids"] for t in FORGET_RECORDS[:3]]
    alone = []
    for seq in sequences:
        model.zero_grad()
        record_loss(model, [seq], tokenizer.pad_token_id, "cpu", _plain).backward()
        alone.append([p.grad.clone() for p in params])
    training = make_private(model, torch.optim.SGD(params, lr=0.0), 6, batch_size=3, epochs=1,
                            epsilon=50.0, delta=1e-3, max_grad_norm=1.0, seed=0)
    training.optimizer.zero_grad(set_to_none=True)
    record_loss(model, sequences, tokenizer.pad_token_id, "cpu", _plain).backward()
    for k, p in enumerate(params):
        for i in range(3):
            assert torch.allclose(p.grad_sample[i], alone[i][k], atol=1e-6), (k, i)


def test_bench_dp_row_is_the_leaky_fine_tuning_under_dp_and_is_reused(
    tiny_llama_dir, data_dir, tmp_path, monkeypatch
):
    """`bench --methods ga,dp`: the dp row's model is the base model fine-tuned on forget +
    retain (6 texts) under DP-SGD for --finetune-epochs (no early stop: 3 epochs of 3 Poisson
    steps), scored like the methods; results.md says the epsilon spent; a re-run reuses it, and
    one with another --dp-epsilon is refused before training anything."""
    from conftest import CALIBRATION_RECORDS, POOL_RECORDS, write_jsonl
    from unlearnlm.bench.runner import BenchSettings, run_bench

    monkeypatch.setenv("UNLEARNLM_CACHE", str(tmp_path / "cache"))
    texts = {"forget": FORGET_RECORDS, "retain": POOL_RECORDS[:2], "pool": POOL_RECORDS[2:],
             "calibration": CALIBRATION_RECORDS,
             "nonmember": ["Ivy Moss was born on 5 April 1992 and works as a nurse in Derby.",
                           "Jack Lee lives at 9 High Street and works as a farmer."]}
    files = {k: str(write_jsonl(tmp_path / f"{k}.jsonl", v)) for k, v in texts.items()}
    settings = BenchSettings(
        model=str(tiny_llama_dir), forget_set=files["forget"], retain=files["retain"],
        pool=files["pool"], calibration=files["calibration"], nonmember=files["nonmember"],
        out=str(tmp_path / "bench"), methods=["ga", "dp"], tasks=["forget", "mia"], limit=2,
        prefix_tokens=4, suffix_tokens=None, lr=3e-3, max_epochs=1, batch_size=2,
        finetune_lr=3e-3, finetune_epochs=3, finetune_target=0.5, dp_epsilon=2.0,
        dp_delta=1e-3)
    results = run_bench(settings)
    rows = {r["name"]: r for r in results["rows"]}
    assert rows["dp"]["role"] == "dp" and rows["dp"]["epochs"] == 3
    assert rows["dp"]["el10"] is not None and rows["dp"]["mia_auc"] is not None
    folder = tmp_path / "bench" / "methods" / "dp"
    record = json.loads((folder / "finetune.json").read_text())
    assert Path(record["data"]).name == "leaky_train.jsonl"  # the leaky model's texts
    assert record["dp"]["steps"] == 9 and 0 < record["dp"]["epsilon_spent"] <= 2.0
    assert record["settings"]["lr"] == 3e-3 and record["settings"]["target_accuracy"] is None
    markdown = (tmp_path / "bench" / "results.md").read_text()
    assert f"epsilon {record['dp']['epsilon_spent']:.2f} spent of 2" in markdown
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    run_bench(settings)
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(UnlearnError, match="other settings.*dp_epsilon"):
        run_bench(BenchSettings(**{**vars(settings), "dp_epsilon": 4.0}))
