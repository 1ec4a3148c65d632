"""SISA training (Bourtoule et al. 2021, "Machine Unlearning", IEEE S&P): an ensemble that forgets
a text exactly, by retraining only the part of it that saw the text.

- **Sharding and slicing.** Each training text goes to one of S shards and, inside it, to one of R
  slices, both read from a hash of the seed and the text. A text's place depends on nothing
  else, so the split of the data without some texts is the split of the data with them, less
  those texts.
- **Training.** One LoRA adapter per shard trains on the frozen base model in R stages: stage r
  trains on slices 1..r (the paper's incremental training) for ``epochs`` epochs with a fresh
  AdamW, then the adapter is saved as the checkpoint ``shard-K/slice-r`` (``slice-0``: the
  initial adapter, seeded per shard). Each epoch visits the texts in the order of a hash of
  (seed, shard, stage, epoch, text), which again is the order of the remaining texts when some
  are removed. The loss is the NLL of every token, as in ``train.finetune``.
- **The ensemble** (``sisa_ensemble``): the mean of the shards' next-token distributions
  (``lm.lora.adapter_ensemble``), one base model in memory; every metric scores and decodes it
  like a plain model.
- **Forgetting** (``sisa_forget``): every shard that held a forgotten text reloads the checkpoint
  before the earliest slice that held one and trains the stages from that slice on again,
  without the forgotten texts; every other shard's files are copied unchanged. The stages start
  from the same adapter with the same texts in the same order as a training from scratch without
  those texts would, so the result is that training's adapter (bit for bit on a CPU, where the
  arithmetic is deterministic). A shard left without texts keeps its initial adapter.

A SISA folder (written atomically, never modified by ``sisa_forget``, which writes a new one):
``sisa.json`` (settings, base model and the hash of its weights, per text its id, hash, shard and
slice, per stage its seconds, the deletions so far), ``texts.jsonl`` (the training texts: SISA
keeps them to retrain, and a deletion removes them) and ``shard-K/slice-r/`` (peft adapter
folders; ``slice-R`` is the shard's trained adapter, loadable on its own with ``--model``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from unlearnlm.data.batches import collate
from unlearnlm.data.texts import Record, file_sha256, read_records
from unlearnlm.errors import UnlearnError
from unlearnlm.lm.generation import context_limit
from unlearnlm.lm.loading import load_model
from unlearnlm.lm.lora import adapter_ensemble, add_lora
from unlearnlm.methods.losses import nll
from unlearnlm.rundir import RunDir, environment_versions, replace_dir, write_json
from unlearnlm.settings import Settings, name_list, setting, shared
from unlearnlm.train.finetune import model_identity

log = logging.getLogger(__name__)

RECORD, TEXTS = "sisa.json", "texts.jsonl"
ADAPTER = "default"  # the peft adapter's name while a shard trains


@dataclass
class SisaTrainSettings(Settings):
    """``unlearnlm sisa train``: the shards, the slices and how each stage trains."""

    command = "sisa train"
    required = ("model", "data", "out")

    model: str = shared("model", help="base model, frozen: directory, hub id, .gguf or "
                        "'smollm2-135m'")
    data: str = setting("", "training texts (.jsonl, .csv, .txt)")
    out: str = setting("", "output folder: every shard's adapter, its checkpoints and sisa.json")
    shards: int = setting(4, "disjoint shards of the texts, one LoRA adapter each", positive=True)
    slices: int = setting(2, "slices of each shard; a checkpoint after each", positive=True)
    epochs: int = setting(10, "epochs of each stage (stage r trains on slices 1..r)",
                          positive=True)
    lr: float = shared("lr", 1e-3, "learning rate (AdamW, no weight decay)")
    batch_size: int = shared("batch_size", 8)
    lora_rank: int = setting(8, "LoRA rank of every shard's adapter", positive=True)
    lora_alpha: float = shared("lora_alpha")
    lora_target_modules: list[str] = shared("lora_target_modules")
    seed: int = shared("seed", help="seed of the split into shards and slices, of the adapters' "
                       "initialisation and of the order of the texts")
    cpu: bool = setting(False, "train on the CPU even when a GPU is present")
    overwrite: bool = shared("overwrite")

    def check(self) -> None:
        self.lora_target_modules = name_list(self.lora_target_modules)


@dataclass
class SisaForgetSettings(Settings):
    """``unlearnlm sisa forget``: which texts leave which SISA folder, and where the result goes."""

    command = "sisa forget"
    required = ("sisa_dir", "forget", "out")

    sisa_dir: str = setting("", "the SISA folder (the --out of `unlearnlm sisa train` or of an "
                            "earlier forget); it is never modified")
    forget: str = setting("", "texts to forget (.jsonl, .csv, .txt), each one of the folder's "
                          "training texts")
    out: str = setting("", "output folder: a new SISA folder without those texts")
    cpu: bool = setting(False, "retrain on the CPU even when a GPU is present")
    overwrite: bool = shared("overwrite")


# Settings that shape what trains: recorded in sisa.json and reused by sisa_forget.
_TRAINING = ("model", "shards", "slices", "epochs", "lr", "batch_size", "lora_rank",
             "lora_alpha", "lora_target_modules", "seed")


@dataclass(frozen=True)
class Placed:
    """A training text and where it sits: shard 0..S-1, slice 1..R."""

    id: str
    text: str
    key: str  # sha256 of the text without the white space at its ends
    shard: int
    slice: int


def text_key(text: str) -> str:
    return hashlib.sha256(text.strip().encode("utf-8")).hexdigest()


def _number(*parts: Any) -> int:
    return int(hashlib.sha256(":".join(str(p) for p in parts).encode()).hexdigest(), 16)


def place(records: list[Record], shards: int, slices: int, seed: int) -> list[Placed]:
    """Each text's shard and slice, from a hash of the seed and the text alone."""
    placed = []
    for record in records:
        key = text_key(record.text)
        number = _number(seed, key)
        placed.append(Placed(record.id, record.text, key, number % shards,
                             (number // shards) % slices + 1))
    return placed


def epoch_order(texts: list[Placed], seed: int, shard: int, stage: int,
                epoch: int) -> list[Placed]:
    """The order of one epoch: by a hash of (seed, shard, stage, epoch, text)."""
    return sorted(texts, key=lambda t: _number(seed, shard, stage, epoch, t.key))


class _ShardTrainer:
    """The frozen base model with one LoRA adapter, which each shard in turn initialises (or
    loads from a checkpoint), trains stage by stage and saves."""

    def __init__(self, s: SisaTrainSettings, cpu: bool) -> None:
        model, tokenizer, _ = load_model(s.model)
        self.device = torch.device("cuda" if torch.cuda.is_available() and not cpu else "cpu")
        self.model = add_lora(model, s.lora_rank, s.lora_alpha,
                              target_modules=s.lora_target_modules or None).to(self.device)
        self.s, self.tokenizer = s, tokenizer
        self.pad = tokenizer.pad_token_id
        self.limit = context_limit(self.model, 1024)
        self._ids: dict[str, list[int]] = {}

    def initialise(self, shard: int) -> None:
        """The shard's initial adapter: peft's initialisation (A random, B zero) under a seed
        of the shard's own."""
        torch.manual_seed(_number(self.s.seed, "init", shard) % 2**63)
        for module in self.model.modules():
            if hasattr(module, "reset_lora_parameters") and ADAPTER in module.lora_A:
                module.reset_lora_parameters(ADAPTER, True)

    def load(self, folder: Path) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(self.model, load_file(folder / "adapter_model.safetensors"))

    def save(self, folder: Path) -> None:
        self.model.save_pretrained(folder, safe_serialization=True)

    def tokens(self, text: Placed) -> list[int]:
        if text.key not in self._ids:
            ids = self.tokenizer(text.text, add_special_tokens=False)["input_ids"]
            if len(ids) > self.limit:
                log.warning("a training text of %d tokens is cut to the model's %d", len(ids),
                            self.limit)
            self._ids[text.key] = ids[: self.limit]
        return self._ids[text.key]

    def stage(self, shard: int, stage: int, texts: list[Placed]) -> float:
        """Train on the shard's texts of slices 1..stage; returns the seconds it took."""
        start = time.perf_counter()
        seen = [t for t in texts if t.shard == shard and t.slice <= stage]
        if not seen:
            return 0.0
        torch.manual_seed(_number(self.s.seed, "stage", shard, stage) % 2**63)
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.s.lr, weight_decay=0.0)
        self.model.train()
        size = self.s.batch_size
        for epoch in range(1, self.s.epochs + 1):
            order = epoch_order(seen, self.s.seed, shard, stage, epoch)
            for first in range(0, len(order), size):
                rows = [self.tokens(t) for t in order[first : first + size]]
                batch = collate(rows, [1] * len(rows), self.pad, self.device)
                logits = self.model(input_ids=batch["input_ids"],
                                    attention_mask=batch["attention_mask"]).logits
                loss = nll(logits, batch["input_ids"], batch["loss_mask"])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        seconds = time.perf_counter() - start
        log.info("shard %d, stage %d: %d texts, %d epochs, %.1f s", shard, stage, len(seen),
                 self.s.epochs, seconds)
        return seconds


def slice_dir(folder: Path, shard: int, stage: int) -> Path:
    return folder / f"shard-{shard}" / f"slice-{stage}"


def sisa_train(s: SisaTrainSettings) -> dict:
    """Train the shards' adapters (module docstring); writes the SISA folder ``s.out``."""
    s.require()
    run_dir = RunDir.create(s.out, s.model, s.overwrite)
    records = read_records(s.data, role="training")
    texts = place(records, s.shards, s.slices, s.seed)
    empty = [k for k in range(s.shards) if not any(t.shard == k for t in texts)]
    if empty:
        raise UnlearnError(f"shard {empty[0]} of {s.shards} gets none of the {len(texts)} texts; "
                           "give fewer --shards or more texts")
    identity = model_identity(s.model)
    start = time.perf_counter()
    trainer = _ShardTrainer(s, s.cpu)
    record = {
        "method": "sisa", "settings": new_record_settings(s),
        "model_sha256": identity, "data": s.data,
        "data_sha256": file_sha256(s.data), "versions": environment_versions(),
        "texts": [], "stages": {}, "deletions": [],
    }
    with _building(run_dir.out) as tmp:
        for shard in range(s.shards):
            trainer.initialise(shard)
            trainer.save(slice_dir(tmp, shard, 0))
            _train_stages(trainer, tmp, shard, 1, texts, record)
        record["seconds"] = round(time.perf_counter() - start, 2)
        _finish(tmp, record, texts)
    return record


def new_record_settings(s: SisaTrainSettings) -> dict:
    """What ``sisa.json`` records of the settings (what shapes the training)."""
    return {name: getattr(s, name) for name in _TRAINING} | {"model": _where(s.model)}


def _where(model: str) -> str:
    """A model folder or file as an absolute path (the SISA folder may be read from elsewhere);
    a name or hub id as given."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


def _train_stages(trainer: _ShardTrainer, folder: Path, shard: int, first: int,
                  texts: list[Placed], record: dict) -> None:
    for stage in range(first, trainer.s.slices + 1):
        seconds = trainer.stage(shard, stage, texts)
        trainer.save(slice_dir(folder, shard, stage))
        record["stages"][f"{shard}/{stage}"] = round(seconds, 3)


def _finish(folder: Path, record: dict, texts: list[Placed]) -> None:
    record["texts"] = [{"id": t.id, "sha256": t.key, "shard": t.shard, "slice": t.slice}
                       for t in texts]
    record["shard_sizes"] = [sum(t.shard == k for t in texts)
                             for k in range(record["settings"]["shards"])]
    lines = "".join(json.dumps({"id": t.id, "text": t.text}, ensure_ascii=False) + "\n"
                    for t in texts)
    (folder / TEXTS).write_text(lines, encoding="utf-8")
    write_json(folder / RECORD, record)


@contextmanager
def _building(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out`` that replaces ``out`` when the block ends normally and
    is removed when it raises (``rundir.replace_dir``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_sisa(folder: str | Path) -> tuple[dict, list[Placed]]:
    """``sisa.json`` and the placed training texts of a SISA folder."""
    folder = Path(folder)
    if not (folder / RECORD).is_file() or not (folder / TEXTS).is_file():
        raise UnlearnError(f"{folder} is not a SISA folder (no {RECORD} or {TEXTS}); give the "
                           "--out of `unlearnlm sisa train`")
    record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    rows = [json.loads(line) for line in (folder / TEXTS).read_text(encoding="utf-8").splitlines()]
    placed = {(p["id"], p["sha256"]): p for p in record["texts"]}
    texts = []
    for row in rows:
        p = placed.get((row["id"], text_key(row["text"])))
        if p is None:
            raise UnlearnError(f"{folder / TEXTS} holds a text that {RECORD} does not place (id "
                               f"{row['id']!r}); the folder was changed: train it again")
        texts.append(Placed(row["id"], row["text"], p["sha256"], p["shard"], p["slice"]))
    return record, texts


def sisa_forget(s: SisaForgetSettings) -> dict:
    """A new SISA folder ``s.out`` without the texts of ``s.forget`` (module docstring)."""
    s.require()
    source = Path(s.sisa_dir).expanduser().resolve()
    old, texts = read_sisa(source)
    run_dir = RunDir.create(s.out, str(source), s.overwrite)
    forget = read_records(s.forget, role="forget")
    present = {t.key for t in texts}
    missing = [r for r in forget if text_key(r.text) not in present]
    if missing:
        raise UnlearnError(f"{len(missing)} of the {len(forget)} forget texts (first: id "
                           f"{missing[0].id!r}) are not training texts of {source}; give them "
                           "as they were trained")
    train = SisaTrainSettings(**old["settings"], data=str(source / TEXTS), out=str(run_dir.out))
    if model_identity(train.model) != old["model_sha256"]:
        raise UnlearnError(f"the base model {train.model} is not the one {source} was trained "
                           "on (its weights changed); retraining on it would not be exact")
    start = time.perf_counter()
    gone = {text_key(r.text) for r in forget}
    kept = [t for t in texts if t.key not in gone]
    first = {}  # shard -> the earliest slice that held a forgotten text
    for t in texts:
        if t.key in gone:
            first[t.shard] = min(first.get(t.shard, t.slice), t.slice)
    record = {**old, "stages": dict(old["stages"])}
    trainer = _ShardTrainer(train, s.cpu)
    with _building(run_dir.out) as tmp:
        for shard in range(train.shards):
            if shard not in first:
                shutil.copytree(source / f"shard-{shard}", tmp / f"shard-{shard}")
                continue
            for stage in range(first[shard]):
                shutil.copytree(slice_dir(source, shard, stage), slice_dir(tmp, shard, stage))
            trainer.load(slice_dir(source, shard, first[shard] - 1))
            _train_stages(trainer, tmp, shard, first[shard], kept, record)
            if not any(t.shard == shard for t in kept):
                log.warning("shard %d holds no text now: its adapter is the initial one", shard)
        deletion = {"texts": len(texts) - len(kept), "ids": [t.id for t in texts if t.key in gone],
                    "forget_sha256": file_sha256(s.forget),
                    "retrained_from_slice": {str(k): v for k, v in sorted(first.items())},
                    "seconds": round(time.perf_counter() - start, 2)}
        record["deletions"] = [*old["deletions"], deletion]
        _finish(tmp, record, kept)
    return record


def sisa_ensemble(folder: str | Path):
    """The trained ensemble of a SISA folder as an ``LM`` (``lm.composite.EnsembleLM``)."""
    folder = Path(folder)
    record, _ = read_sisa(folder)
    settings = record["settings"]
    model, tokenizer, _ = load_model(settings["model"])
    last = settings["slices"]
    return adapter_ensemble(model, tokenizer, {f"shard-{k}": slice_dir(folder, k, last)
                                               for k in range(settings["shards"])})



def load_lm(spec: str):
    """``spec`` as an ``LM``: a SISA folder as its ensemble, anything else as ``LM.load`` reads
    it (``--model`` of ``unlearnlm eval`` and the bench's models)."""
    from unlearnlm.lm.interface import LM

    if (Path(spec).expanduser() / RECORD).is_file():
        return sisa_ensemble(Path(spec).expanduser())
    return LM.load(spec)
