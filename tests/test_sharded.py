"""DeepSpeed ZeRO-2/ZeRO-3 and FSDP: every configuration in configs/accelerate/ parses, and the
code that prepares model and optimiser (``train.models.prepare_training``) accepts it on the CPU
under ``accelerate launch --config_file ... --num_processes 1``, with the reference model outside
the sharded optimiser. A ZeRO-3 unlearning run gives the plain run's weights.

The DeepSpeed cases need the ``deepspeed`` package (the ``deepspeed`` extra) and are skipped
without it. Accelerate turns FSDP on only where GPUs are, so on the CPU the FSDP case hands the
launcher's FSDP settings to the accelerator itself (tests/sharded_check.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unlearnlm import unlearn
from unlearnlm.data.batches import collate
from unlearnlm.lm.loading import load_model
from unlearnlm.settings import UnlearnConfig
from unlearnlm.train.models import make_accelerator, prepare_training
from unlearnlm.train.unlearn import unlearning_step

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {p.stem: p for p in sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))}
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
needs_deepspeed = pytest.mark.skipif(not HAS_DEEPSPEED, reason="deepspeed is not installed "
                                     "(pip install -e '.[deepspeed]')")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _launch(config: str, *command: str) -> list[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(CONFIGS[config]), "--num_processes", "1", "--mixed_precision", "no",
            "--main_process_port", str(port), *command]


def test_the_shipped_accelerate_configs_say_what_their_names_say():
    from accelerate.commands.config.config_args import load_config_from_file

    assert set(CONFIGS) == {"zero2", "zero3", "fsdp"}
    zero2, zero3, fsdp = (load_config_from_file(str(CONFIGS[n])) for n in ("zero2", "zero3",
                                                                           "fsdp"))
    assert (zero2.distributed_type, zero2.deepspeed_config["zero_stage"]) == ("DEEPSPEED", 2)
    assert (zero3.distributed_type, zero3.deepspeed_config["zero_stage"]) == ("DEEPSPEED", 3)
    assert zero3.deepspeed_config["zero3_save_16bit_model"] is True  # the save gathers weights
    assert (fsdp.distributed_type, fsdp.fsdp_config["fsdp_version"]) == ("FSDP", 2)
    assert fsdp.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    for config in (zero2, zero3, fsdp):
        assert config.num_processes == 8 and config.mixed_precision == "bf16"


def _plain_first_loss(model_dir: Path) -> float:
    """The check script's step without accelerate's sharding: its loss before the update."""
    model, _, _ = load_model(str(model_dir))
    prepared = prepare_training(model, make_accelerator(cpu=True), UnlearnConfig(),
                                reference=True,
                                optimizer=lambda params: torch.optim.Adam(params, lr=1e-2))
    ids = torch.randint(3, 250, (2, 10), generator=torch.Generator().manual_seed(0)).tolist()
    batch = collate(ids, [1, 1], 2, torch.device("cpu"))
    return unlearning_step({"forget_ga": 1.0, "analogous_kl": 1.0}, prepared.model,
                           prepared.reference, prepared.optimizer, prepared.accelerator,
                           {"forget": batch, "analogous": batch})["total"]


CASES = [pytest.param("zero2", "full", marks=needs_deepspeed),
         pytest.param("zero3", "lora", marks=needs_deepspeed),
         ("fsdp", "full"), ("fsdp", "lora")]


@pytest.mark.slow
@pytest.mark.parametrize("config, mode", CASES)
def test_prepare_accepts_each_config_with_the_reference_outside(config, mode, tiny_llama_dir):
    """The policy comes back wrapped by DeepSpeed or FSDP (its weights sharded except under
    ZeRO-2), one step runs, its loss is the plain step's, and the reference is no parameter of
    the policy or the optimiser: a whole copy (full runs) or the adapters switched off (LoRA),
    its outputs unchanged by the step."""
    script = str(ROOT / "tests" / "sharded_check.py")
    done = subprocess.run(_launch(config, script, str(tiny_llama_dir), mode), env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    deepspeed = config.startswith("zero")
    assert found["distributed_type"] == ("DEEPSPEED" if deepspeed else "FSDP")
    assert found["wrapper"] == "DeepSpeedEngine" if deepspeed else found["wrapper"].startswith(
        "FSDP")
    assert found["shards_parameters"] is found["policy_sharded"] is (config != "zero2")
    assert found["reference_in_optimizer"] == found["reference_in_policy"] == 0
    if mode == "lora":
        assert (found["reference_kind"], found["reference_parameters"]) == ("AdapterOff", 0)
    else:
        assert found["reference_parameters"] == 21 and found["reference_whole"]  # 2 blocks
    assert found["reference_unchanged"]
    assert found["loss"] == pytest.approx(_plain_first_loss(tiny_llama_dir), abs=1e-5)


@pytest.mark.slow
@needs_deepspeed
def test_a_zero3_unlearning_run_gives_the_plain_run_weights(leaky_llama_dir, record_files,
                                                             tmp_path):
    """The documented ZeRO-3 command on one CPU process: the weights DeepSpeed gathers and saves
    are the plain run's (no clipping on either side), and the run says it writes no checkpoints."""
    settings = dict(method="icu", lr=3e-3, max_epochs=2, bleu_threshold=0.5,
                    bertscore_threshold=0.9, prefix_tokens=4, suffix_tokens=None, batch_size=2,
                    seed=7)
    plain = tmp_path / "plain"
    unlearn(model=str(leaky_llama_dir), forget=str(record_files["forget"]),
            pool=str(record_files["pool"]), out=str(plain), quick_check=False, **settings)
    flags = ["--model", str(leaky_llama_dir), "--forget", str(record_files["forget"]), "--pool",
             str(record_files["pool"]), "--out", str(tmp_path / "zero3"), "--suffix-tokens",
             "all", "--no-check"]
    flags += [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()
              if k != "suffix_tokens"]
    done = subprocess.run(_launch("zero3", "-m", "unlearnlm", "unlearn", *flags), env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "no per-epoch checkpoint is written" in done.stderr
    a = load_file(str(plain / "model.safetensors"))
    b = load_file(str(tmp_path / "zero3" / "model.safetensors"))
    assert sorted(a) == sorted(b)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    assert json.loads((tmp_path / "zero3" / "run.json").read_text())["dropped_order"] == \
        json.loads((plain / "run.json").read_text())["dropped_order"]
