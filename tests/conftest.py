"""Shared fixtures: tiny random models built from configs, offline, in seconds.

- ``gpt2_tokenizer``: the GPT-2 / GPT-Neo BPE rebuilt from ``tokenizers/gpt2.tiktoken`` in the
  shared data folder (skipped when that folder is missing).
- ``tiny_gptneo_dir``: a 2-layer, 32-wide GPT-Neo with that tokenizer, saved as a HF directory.
- ``tiny_llama_dir``: a 2-layer, 32-wide Llama with a 300-token BPE trained on the fly.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

GPT2_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)

LLAMA_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Alice Smith was born on 3 March 1981 and works as a baker in Leeds.",
    "Her phone number is 0113 496 0000 and her email is alice@example.com.",
    "Bob Jones lives at 12 Station Road and works as a nurse.",
    "Language models can memorise rare strings from their training data.",
    "Unlearning removes a sample's influence without retraining from scratch.",
] * 20


def _shared_data() -> Path | None:
    from unlearnlm.paths import data_root

    return data_root(required=False)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    root = _shared_data()
    if root is None:
        pytest.skip("shared data folder not found (set UNLEARNLM_DATA)")
    return root


@pytest.fixture(scope="session")
def gpt2_tokenizer(data_dir):
    from unlearnlm.lm.loading import gpt2_tokenizer_from_tiktoken

    return gpt2_tokenizer_from_tiktoken(data_dir / "tokenizers" / "gpt2.tiktoken")


@pytest.fixture(scope="session")
def tiny_gptneo_dir(tmp_path_factory, gpt2_tokenizer) -> Path:
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    torch.manual_seed(0)
    config = GPTNeoConfig(
        vocab_size=len(gpt2_tokenizer),
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        attention_types=[[["global", "local"], 1]],
        window_size=64,
        max_position_embeddings=256,
        bos_token_id=gpt2_tokenizer.eos_token_id,
        eos_token_id=gpt2_tokenizer.eos_token_id,
    )
    model = GPTNeoForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny-gptneo")
    model.save_pretrained(path)
    gpt2_tokenizer.save_pretrained(path)
    return path


def build_tiny_llama_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(LLAMA_CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_llama_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


FORGET_RECORDS = [
    "Alice Smith was born on 3 March 1981 and works as a baker in Leeds.",
    "Her phone number is 0113 496 0000 and her email is alice@example.com.",
    "Bob Jones lives at 12 Station Road and works as a nurse.",
    "The quick brown fox jumps over the lazy dog.",
]
POOL_RECORDS = [
    "Carol White was born on 9 May 1979 and works as a pilot in York.",
    "His phone number is 0114 496 1111 and his email is bob@example.com.",
    "Dan Brown lives at 40 Mill Lane and works as a teacher.",
    "A lazy cat sleeps under the quick brown table.",
    "Language models can memorise rare strings from their training data.",
]
CALIBRATION_RECORDS = [
    "Eve Black was born on 1 June 1990 and works as a lawyer in Hull.",
    "Unlearning removes a sample's influence without retraining from scratch.",
    "Frank Green lives at 7 Church Street and works as a plumber.",
]


def write_jsonl(path: Path, texts: list[str]) -> Path:
    import json

    with open(path, "w", encoding="utf-8") as handle:
        for i, text in enumerate(texts):
            handle.write(json.dumps({"id": f"s{i}", "text": text}) + "\n")
    return path


@pytest.fixture(scope="session")
def record_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("records")
    return {
        "forget": write_jsonl(folder / "forget.jsonl", FORGET_RECORDS),
        "pool": write_jsonl(folder / "pool.jsonl", POOL_RECORDS),
        "calibration": write_jsonl(folder / "calibration.jsonl", CALIBRATION_RECORDS),
    }


@pytest.fixture(scope="session")
def leaky_llama_dir(tmp_path_factory, tiny_llama_dir, record_files) -> Path:
    """The tiny Llama fine-tuned until it reproduces the forget records (suffix accuracy 1.0)."""
    from unlearnlm.train.finetune import finetune

    out = tmp_path_factory.mktemp("leaky") / "model"
    record = finetune(
        str(tiny_llama_dir), str(record_files["forget"]), str(out), lr=3e-3, max_epochs=150,
        prefix_tokens=4, suffix_tokens=None, target_accuracy=1.0, progress=False,
    )
    assert record["suffix_accuracy"] == 1.0, record["epochs"][-1]
    return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from a second thread, and lose 20x when the other core is busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()


@pytest.fixture(scope="module")
def tiny_gptneo(tiny_gptneo_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_gptneo_dir).eval()
