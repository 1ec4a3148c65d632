"""The bench's ``sisa`` row: SISA training on forget + retain texts, then an exact deletion.

Nothing is unlearned from the leaky model. Instead the base model is trained the SISA way
(``train.sisa``: one LoRA adapter per shard, a checkpoint after each slice) on the leaky model's
texts, forget + retain, into ``out/methods/sisa-trained``, and the forget set is deleted from it
with ``sisa forget`` into ``out/methods/sisa``: only the shards that held a forget text retrain.
The row is the ensemble after the deletion, scored by the same suite through the model interface;
its wall time is the deletion's, and the results note gives the training's time, the shards'
sizes and which shards retrained. Both folders are reused on a re-run when their settings match
(a different setting is refused). The ensemble is not audited: relearning and quantisation attack
one set of weights, and it has several.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from unlearnlm.data.texts import file_sha256
from unlearnlm.errors import UnlearnError

log = logging.getLogger(__name__)
SISA_METHOD = "sisa"


def sisa_settings(s: Any, data_file: str, folder: Path) -> Any:
    """The SISA training settings of the ``sisa`` row (``s``: the bench's settings)."""
    from unlearnlm.train.sisa import SisaTrainSettings

    return SisaTrainSettings(
        model=s.model, data=data_file, out=str(folder), shards=s.sisa_shards,
        slices=s.sisa_slices, epochs=s.sisa_epochs, lr=s.sisa_lr, batch_size=s.batch_size,
        lora_rank=s.sisa_lora_rank, seed=s.seed, overwrite=True)


def run_sisa(s: Any, files: dict[str, str], folder: Path) -> dict:
    """Train on ``files['leaky_train']`` and delete ``files['forget']`` (module docstring).
    Returns the deleted folder's ``sisa.json`` as ``record``, the ``folder``, ``wall_time_s``
    (the deletion's), ``resumed`` (always false) and ``sisa``, the row's summary."""
    from unlearnlm.train.sisa import SisaForgetSettings, sisa_forget, sisa_train

    trained_dir = folder.parent / f"{SISA_METHOD}-trained"
    wanted = sisa_settings(s, files["leaky_train"], trained_dir)
    trained = _reused(trained_dir, wanted)
    if trained is None:
        log.info("  %s: training %d shards of %d slices on forget + retain", SISA_METHOD,
                 wanted.shards, wanted.slices)
        trained = sisa_train(wanted)
    forget_sha = file_sha256(files["forget"])
    found = folder / "sisa.json"
    record = json.loads(found.read_text(encoding="utf-8")) if found.is_file() else None
    if not (record and record["deletions"]
            and record["deletions"][-1]["forget_sha256"] == forget_sha
            and record["settings"] == trained["settings"]):
        log.info("  %s: deleting the forget set from %s", SISA_METHOD, trained_dir)
        record = sisa_forget(SisaForgetSettings(sisa_dir=str(trained_dir), forget=files["forget"],
                                                out=str(folder), overwrite=True))
    else:
        log.info("  %s: reusing the deletion in %s", SISA_METHOD, folder)
    deletion = record["deletions"][-1]
    summary = {"shards": wanted.shards, "slices": wanted.slices, "epochs": wanted.epochs,
               "lr": wanted.lr, "lora_rank": wanted.lora_rank,
               "shard_sizes": trained["shard_sizes"], "train_seconds": trained["seconds"],
               "deletion_seconds": deletion["seconds"], "texts_deleted": deletion["texts"],
               "retrained_from_slice": deletion["retrained_from_slice"]}
    log.info("  %s: deleted %d texts in %.0f s (training took %.0f s)", SISA_METHOD,
             deletion["texts"], deletion["seconds"], trained["seconds"])
    return {"record": record, "folder": str(folder), "wall_time_s": deletion["seconds"],
            "resumed": False, "sisa": summary}


def _reused(folder: Path, wanted: Any) -> dict | None:
    """The SISA folder's record when it was trained as ``wanted`` says, None when there is none;
    a folder trained otherwise is refused."""
    from unlearnlm.train.sisa import new_record_settings

    found = folder / "sisa.json"
    if not found.is_file():
        return None
    record = json.loads(found.read_text(encoding="utf-8"))
    expected = new_record_settings(wanted)
    changed = sorted(k for k in expected if record["settings"].get(k) != expected[k])
    if changed or record.get("data_sha256") != file_sha256(wanted.data):
        what = ", ".join(changed) or "the training texts"
        raise UnlearnError(f"{folder} holds a SISA training with other settings ({what}); delete "
                           "it or choose another --out")
    log.info("  %s: reusing the SISA training in %s", SISA_METHOD, folder)
    return record
