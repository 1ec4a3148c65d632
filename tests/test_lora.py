"""LoRA runs (``--lora-rank``): only the adapter trains, the reference is the base model with the
adapter off (no copy), the output is the adapter or, with ``--merge``, the merged model. And the
memory-saving reference of a run that trains only the last blocks."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from unlearnlm import unlearn
from unlearnlm.cli import main
from unlearnlm.errors import UnlearnError
from unlearnlm.lm.loading import load_model
from unlearnlm.settings import FinetuneSettings, UnlearnConfig
from unlearnlm.train.finetune import finetune
from unlearnlm.train.models import make_accelerator, prepare_training, state_bytes

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NPO = dict(method="npo", prefix_tokens=4, suffix_tokens=None, batch_size=2, lr=3e-3,
           bleu_threshold=0.0, bertscore_threshold=0.0, stop_on_el=False, seed=5,
           quick_check=False)  # the check after a run has its own tests (test_audit.py)


def _ids(n: int = 3, length: int = 12) -> torch.Tensor:
    return torch.randint(3, 250, (n, length), generator=torch.Generator().manual_seed(1))


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


def _adam(params):
    return torch.optim.Adam(params, lr=1e-2)


def test_lora_reference_is_the_base_model_with_no_weights_of_its_own(tiny_llama_dir):
    """With B random (the adapter no longer adds zero), the policy's logits move away from the
    base model's while the reference's stay exactly the base model's; the reference owns no
    tensor, and calling it leaves the policy in training mode."""
    base, _, _ = load_model(str(tiny_llama_dir))
    model, _, _ = load_model(str(tiny_llama_dir))
    settings = UnlearnConfig(lora_rank=4, lora_alpha=8.0)
    prepared = prepare_training(model, make_accelerator(cpu=True), settings, reference=True,
                                optimizer=_adam)
    policy = prepared.unwrapped
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    ids = _ids()
    policy.train()
    reference = prepared.reference(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert policy.training
    assert torch.equal(reference, _logits(base, ids))
    assert not torch.allclose(_logits(policy, ids), reference, atol=1e-3)
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert state_bytes(prepared)["reference"] == 0


def test_last_blocks_reference_shares_the_frozen_weights(tiny_llama_dir):
    """trainable_layers=1: the reference's frozen tensors are the policy's own (same storage);
    only the last block is copied, and a step on the policy leaves that copy as it was."""
    model, _, _ = load_model(str(tiny_llama_dir))
    original, _, _ = load_model(str(tiny_llama_dir))
    settings = UnlearnConfig(trainable_layers=1)
    prepared = prepare_training(model, make_accelerator(cpu=True), settings, reference=True,
                                optimizer=_adam)
    policy, reference = prepared.unwrapped, prepared.reference
    pairs = list(zip(policy.named_parameters(), reference.parameters()))
    shared = [n for (n, p), r in pairs if p.data_ptr() == r.data_ptr()]
    copied = [n for (n, p), r in pairs if p.data_ptr() != r.data_ptr()]
    assert shared and copied
    assert all(n.startswith("model.layers.1.") or n == "model.norm.weight" for n in copied)
    assert not any(n.startswith("model.layers.1.") for n in shared)
    trained_bytes = sum(p.numel() * p.element_size() for p in policy.parameters()
                        if p.requires_grad)
    assert state_bytes(prepared)["reference"] == trained_bytes
    ids = _ids()
    loss = prepared.model(input_ids=ids, labels=ids).loss
    loss.backward()
    prepared.optimizer.step()
    assert torch.equal(_logits(reference, ids), _logits(original, ids))
    assert not torch.allclose(_logits(policy, ids), _logits(original, ids), atol=1e-4)


def test_lora_unlearn_writes_the_adapter_and_leaves_the_base_weights(
    leaky_llama_dir, record_files, tmp_path
):
    """NPO (a term that reads the reference) with --lora-rank 4 for 2 epochs: the output holds the
    adapter alone; on the base model it names, the base weights are the input's bit for bit and
    the adapter is trained (B no longer zero); ``load_model`` reads it back merged."""
    out = tmp_path / "adapter"
    record = unlearn(model=str(leaky_llama_dir), forget=str(record_files["forget"]),
                     out=str(out), max_epochs=2, lora_rank=4, lora_alpha=8.0, **NPO)
    assert not (out / "model.safetensors").exists()
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert adapter and all("lora_A" in k or "lora_B" in k for k in adapter)
    assert any(v.abs().max() > 0 for k, v in adapter.items() if "lora_B" in k)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(leaky_llama_dir)
    trainable = record["model"]["trainable_parameters"]
    assert trainable == sum(v.numel() for v in adapter.values())

    from peft import PeftModel

    base, _, _ = load_model(str(leaky_llama_dir))
    adapted = PeftModel.from_pretrained(base, str(out))
    inputs = load_file(str(leaky_llama_dir / "model.safetensors"))
    for name, value in adapted.get_base_model().state_dict().items():
        key = name.replace(".base_layer", "")
        if key in inputs:
            assert torch.equal(value, inputs[key]), name
    merged, _, source = load_model(str(out))
    assert source.kind == "adapter"
    ids = _ids()
    assert torch.allclose(_logits(merged, ids), _logits(adapted, ids), atol=1e-5)


def test_merged_save_is_base_plus_scaled_adapter_and_reloads(
    leaky_llama_dir, record_files, tmp_path
):
    """The same run with --merge: transformers loads the output as a plain model, and each
    adapted weight is W0 + (alpha / rank) B A with the A, B of the adapter-only run (same seed,
    so the same training); every other weight is W0."""
    adapter_out, merged_out = tmp_path / "adapter", tmp_path / "merged"
    for out, merge in ((adapter_out, False), (merged_out, True)):
        unlearn(model=str(leaky_llama_dir), forget=str(record_files["forget"]), out=str(out),
                max_epochs=1, lora_rank=4, lora_alpha=8.0, merge=merge, **NPO)
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(merged_out)
    assert type(plain).__name__ == "LlamaForCausalLM"
    merged = load_file(str(merged_out / "model.safetensors"))
    base = load_file(str(leaky_llama_dir / "model.safetensors"))
    adapter = load_file(str(adapter_out / "adapter_model.safetensors"))
    adapted = set()
    for key, a in adapter.items():
        if "lora_A" not in key:
            continue
        target = key.replace("base_model.model.", "").replace(".lora_A.weight", ".weight")
        b = adapter[key.replace("lora_A", "lora_B")]
        expected = base[target] + (8.0 / 4) * b @ a
        assert torch.allclose(merged[target], expected, atol=1e-6), target
        adapted.add(target)
    assert adapted and {k.rsplit(".", 2)[-2] for k in adapted} == {"q_proj", "v_proj"}
    for key in set(base) - adapted:
        assert torch.equal(merged[key], base[key]), key


def test_finetune_with_lora_on_named_modules_from_the_command_line(
    tiny_llama_dir, record_files, tmp_path
):
    """`unlearnlm finetune --lora-rank 2 --lora-target-modules o_proj,down_proj --merge`: only
    those weights differ from the base model in the merged output."""
    out = tmp_path / "ft"
    code = main(["-q", "finetune", "--model", str(tiny_llama_dir), "--data",
                 str(record_files["forget"]), "--out", str(out), "--max-epochs", "2",
                 "--lr", "1e-2", "--prefix-tokens", "4", "--suffix-tokens", "all",
                 "--target-accuracy", "null", "--lora-rank", "2", "--lora-target-modules",
                 "o_proj,down_proj", "--merge"])
    assert code == 0
    merged = load_file(str(out / "model.safetensors"))
    base = load_file(str(tiny_llama_dir / "model.safetensors"))
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert changed == {f"model.layers.{i}.{m}.weight" for i in (0, 1)
                       for m in ("self_attn.o_proj", "mlp.down_proj")}
    record = json.loads((out / "finetune.json").read_text())
    assert record["settings"]["lora_target_modules"] == ["o_proj", "down_proj"]


def test_finetune_kl_reference_with_lora_is_the_adapter_switched_off(
    tiny_llama_dir, record_files, tmp_path
):
    """The general-text KL term compares with the base model: at the first step the adapter adds
    zero, so the KL is 0 and the first epoch's loss is the plain NLL."""
    general = record_files["pool"]
    record = finetune(FinetuneSettings(
        model=str(tiny_llama_dir), data=str(record_files["forget"]), out=str(tmp_path / "ft"),
        max_epochs=1, lr=1e-9, batch_size=4, prefix_tokens=4, suffix_tokens=None,
        target_accuracy=None, general=str(general), general_per_step=2, lora_rank=2),
        progress=False)
    plain = finetune(FinetuneSettings(
        model=str(tiny_llama_dir), data=str(record_files["forget"]), out=str(tmp_path / "nll"),
        max_epochs=1, lr=1e-9, batch_size=4, prefix_tokens=4, suffix_tokens=None,
        target_accuracy=None, lora_rank=2), progress=False)
    assert record["epochs"][0]["loss"] == pytest.approx(plain["epochs"][0]["loss"], abs=1e-6)
    assert (tmp_path / "ft" / "adapter_config.json").is_file()


@pytest.mark.parametrize("flags, message", [
    (["--lora-rank", "4", "--trainable-layers", "1"], "not both"),
    (["--lora-target-modules", "q_proj"], "LoRA runs only"),
    (["--lora-rank", "0"], "lora_rank must be positive"),
])
def test_lora_settings_are_refused_in_one_line(capsys, tmp_path, flags, message):
    out = tmp_path / "out"
    code = main(["unlearn", "--model", "m", "--forget", "f.jsonl", "--out", str(out), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and message in err[-1] and len(err) == 1
    assert not out.exists()


def test_a_lora_model_that_fits_no_module_is_one_clear_error(tiny_llama_dir):
    model, _, _ = load_model(str(tiny_llama_dir))
    with pytest.raises(UnlearnError, match="lora-target-modules"):
        prepare_training(model, make_accelerator(cpu=True),
                         UnlearnConfig(lora_rank=2, lora_target_modules=["no_such_layer"]),
                         reference=False, optimizer=_adam)
