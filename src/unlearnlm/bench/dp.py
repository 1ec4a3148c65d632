"""The bench's ``dp`` row: no unlearning, the leaky model's counterpart trained under DP-SGD.

The leaky model is the base model fine-tuned on forget + retain texts; the ``dp`` row is the
same fine-tuning (same texts, learning rate, epochs, blocks) under DP-SGD (``train.dp``) at the
bench's ``dp_epsilon``, ``dp_delta`` and ``dp_max_grad_norm``, with no early stop: the noise is
planned for ``finetune_epochs`` epochs. Nothing has to be forgotten afterwards; each record's
influence was bounded while it was learnt. Its model lies in ``out/methods/dp`` and is evaluated
(and audited) as a method's; its row adds the epsilon spent.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from unlearnlm.errors import UnlearnError
from unlearnlm.rundir import write_text_atomic

log = logging.getLogger(__name__)
DP_METHOD = "dp"


def dp_settings(s: Any, data_file: str, folder: Path) -> Any:
    """The fine-tuning settings of the ``dp`` row (``s``: the bench's settings)."""
    from unlearnlm.settings import FinetuneSettings

    return FinetuneSettings(
        model=s.model, data=data_file, out=str(folder), max_epochs=s.finetune_epochs,
        lr=s.finetune_lr, batch_size=s.batch_size, target_accuracy=None,
        prefix_tokens=s.prefix_tokens, suffix_tokens=s.suffix_tokens, seed=s.seed,
        trainable_layers=s.trainable_layers, mixed_precision=s.mixed_precision,
        dp_epsilon=s.dp_epsilon, dp_delta=s.dp_delta, dp_max_grad_norm=s.dp_max_grad_norm,
        overwrite=True)


def run_dp(s: Any, data_file: str, folder: Path) -> dict:
    """Train the ``dp`` row's model into ``folder``, or reuse the one there when it was trained
    with the same settings. Returns finetune.json's ``record``, the ``folder``, ``wall_time_s``
    and ``resumed`` (always false: a killed DP run starts over)."""
    from unlearnlm.train.finetune import finetune

    wanted = dp_settings(s, data_file, folder)
    found = folder / "finetune.json"
    if found.is_file():
        record = json.loads(found.read_text(encoding="utf-8"))
        changed = sorted(k for k, v in record["settings"].items() if getattr(wanted, k) != v)
        if changed:
            raise UnlearnError(f"{folder} holds a DP model trained with other settings "
                               f"({', '.join(changed)}); delete it or choose another --out")
        log.info("  %s: reusing the DP model in %s", DP_METHOD, folder)
        timing = folder / "bench_time.json"
        spent = json.loads(timing.read_text()) if timing.is_file() else {
            "wall_time_s": record.get("seconds"), "resumed": False}
        return {"record": record, "folder": str(folder), **spent}
    log.info("  %s: fine-tuning the base model on forget + retain under DP-SGD (epsilon %g, "
             "delta %g, clipping at %g)", DP_METHOD, s.dp_epsilon, s.dp_delta,
             s.dp_max_grad_norm)
    clock = time.perf_counter()
    record = finetune(wanted, progress=False)
    spent = {"wall_time_s": round(time.perf_counter() - clock, 1), "resumed": False}
    write_text_atomic(folder / "bench_time.json", json.dumps(spent))
    log.info("  %s: epsilon spent %.3f in %d steps, %.0f s", DP_METHOD,
             record["dp"]["epsilon_spent"], record["dp"]["steps"], spent["wall_time_s"])
    return {"record": record, "folder": str(folder), **spent}
