"""Several processes: a global batch split over processes gives the global loss and gradient, and
`accelerate launch` with two CPU processes (gloo) gives the one-process result, also after a kill
and `--resume`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from unlearnlm import unlearn
from unlearnlm.data.batches import collate
from unlearnlm.methods.losses import combined_loss
from unlearnlm.train.checkpoint import CHECKPOINT, partial_dir
from unlearnlm.train.distributed import relaunch_command, shard_batches

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# relabel (the default method) at a high rate: on the tiny leaky model the four records drop one
# by one (epochs 2, 3, 5, 6), and batches of 3 over 2 processes give shares of 2 and 1, and of 1
# and none (a last batch of one row)
SETTINGS = {"lr": 1e-2, "max_epochs": 6, "batch_size": 3, "opening_tokens": 3, "seed": 7}
WEIGHT_TOLERANCE = 1e-4  # measured: at most 9.4e-6 apart after 6 epochs (weights up to 1.2)


def _random_batch(rows: int, length: int, start: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 250, (rows, length), generator=g).tolist()
    ids = [row[: length - (i % 3)] for i, row in enumerate(ids)]  # ragged: padding and counts vary
    return collate(ids, [start] * rows, 2, torch.device("cpu"))


def test_shares_of_a_batch_average_to_the_whole_batch(tiny_llama):
    """ICU's three terms and DPO on 5 rows (3 preference pairs): for 2 processes the shares' loss
    values average to the whole batch's, and so do their gradients (what DDP's averaging gives),
    though the shares hold 3 and 2 rows with different token counts."""
    weights = {"forget_ga": 1.0, "analogous_nll": 0.5, "analogous_kl": 1.0, "forget_dpo": 1.0}
    reference = type(tiny_llama)(tiny_llama.config).eval()
    parts = {"forget": _random_batch(5, 9, 3, 1), "analogous": _random_batch(5, 8, 1, 2),
             "preference": _random_batch(6, 9, 4, 3)}
    params = [p for p in tiny_llama.parameters()]

    def loss_and_grad(batches):
        tiny_llama.zero_grad()
        loss, terms = combined_loss(weights, tiny_llama, reference, batches)
        loss.backward()
        return terms, [p.grad.clone() for p in params]

    whole_terms, whole_grads = loss_and_grad(parts)
    shares = [shard_batches(parts, rank, 2) for rank in (0, 1)]
    assert [s["forget"]["input_ids"].shape[0] for s, _ in shares] == [3, 2]
    assert [s["preference"]["input_ids"].shape[0] for s, _ in shares] == [4, 2]  # pairs kept
    assert torch.equal(shares[1][0]["preference"]["input_ids"][1], parts["preference"]
                       ["input_ids"][4])  # pair 1's rejected row follows pair 1's preferred row
    results = [loss_and_grad(share) for share, empty in shares]
    for name, value in whole_terms.items():
        assert (results[0][0][name] + results[1][0][name]) / 2 == pytest.approx(value, abs=1e-5)
    for i, grad in enumerate(whole_grads):
        assert torch.allclose((results[0][1][i] + results[1][1][i]) / 2, grad, atol=1e-6)


def test_an_empty_share_is_marked():
    parts = {"forget": _random_batch(1, 6, 2, 4)}
    assert shard_batches(parts, 0, 2)[1] is False
    share, empty = shard_batches(parts, 1, 2)
    assert empty and share["forget"]["input_ids"].shape[0] == 1


# --- two processes through `accelerate launch` ---------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args: list[str], multi_gpu: bool = True) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch",
            *(["--multi_gpu"] if multi_gpu else []), "--num_processes", "2", "--num_machines",
            "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
            str(_free_port()), "-m", "unlearnlm", "-q", "unlearn", *args]


LAUNCHED = {"ACCELERATE_MIXED_PRECISION": "no", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "2345"}


@pytest.mark.parametrize("launcher", [
    ["accelerate", "launch", "--num_processes", "3", "-m", "unlearnlm", "unlearn"],
    ["python", "-m", "accelerate.commands.launch", "--num_processes=3", "-m", "unlearnlm"],
])
def test_the_processes_accelerate_did_not_start_are_started(launcher):
    """accelerate's simple launcher (no GPUs, no --multi_gpu) ran one process for 3: the command
    starts 3 through the multi-process launcher, same port and precision, same arguments."""
    command = relaunch_command(LAUNCHED, launcher, 0, ["-q", "unlearn", "--model", "m"])
    assert command[1:4] == ["-m", "accelerate.commands.launch", "--multi_gpu"]
    flags = dict(zip(command[4:14:2], command[5:14:2]))
    assert flags == {"--num_processes": "3", "--num_machines": "1", "--mixed_precision": "no",
                     "--dynamo_backend": "no", "--main_process_port": "2345"}
    assert command[14:] == ["-m", "unlearnlm", "-q", "unlearn", "--model", "m"]


@pytest.mark.parametrize("environ, launcher, gpus", [
    ({**LAUNCHED, "WORLD_SIZE": "2", "RANK": "0"}, ["accelerate", "launch", "--num_processes",
                                                    "2"], 0),  # already one of the processes
    (LAUNCHED, ["accelerate", "launch", "--num_processes", "1"], 0),  # one was asked for
    (LAUNCHED, ["accelerate", "launch", "--num_processes", "2"], 2),  # GPUs: accelerate's job
    ({"MASTER_ADDR": "127.0.0.1"}, ["torchrun", "--num_processes", "2"], 0),  # not accelerate
    ({k: v for k, v in LAUNCHED.items() if k != "MASTER_ADDR"},
     ["accelerate", "launch", "x.py"], 0),  # plain `accelerate launch`: one process asked for
])
def test_nothing_is_relaunched_when_nothing_is_missing(environ, launcher, gpus):
    assert relaunch_command(environ, launcher, gpus, ["unlearn"]) is None


def _args(model, files, out) -> list[str]:
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SETTINGS.items()]
    return ["--model", str(model), "--forget", str(files["forget"]), "--pool", str(files["pool"]),
            "--calibrate-on", str(files["calibration"]), "--out", str(out), "--no-check", *flags]


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def one_process(leaky_llama_dir, record_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    unlearn(model=str(leaky_llama_dir), forget=str(record_files["forget"]),
            pool=str(record_files["pool"]), calibrate_on=str(record_files["calibration"]),
            out=str(out), quick_check=False, **SETTINGS)
    return out


def _same_result(one, two) -> None:
    a, b = (json.loads((p / "run.json").read_text()) for p in (one, two))
    assert a["dropped_order"] == b["dropped_order"]
    # at least one record dropped, so that the drop path is compared (how many drop within
    # max_epochs hangs on the tiny model's float rounding, which differs between CPUs)
    assert len(a["dropped_order"]) >= 1 and a["stopped"] == b["stopped"]
    assert [e["dropped"] for e in a["epochs"]] == [e["dropped"] for e in b["epochs"]]
    for x, y in zip(a["epochs"][1:], b["epochs"][1:]):
        assert y["losses"] == pytest.approx(x["losses"], abs=1e-4)
    wa, wb = load_file(str(one / "model.safetensors")), load_file(str(two / "model.safetensors"))
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < WEIGHT_TOLERANCE
    assert (a["processes"], b["processes"]) == (1, 2)


@pytest.mark.slow
def test_two_processes_give_the_one_process_result(one_process, leaky_llama_dir, record_files,
                                                   tmp_path):
    """`accelerate launch --num_processes 2 -m unlearnlm unlearn` on the CPU (no --multi_gpu:
    the command line starts the second process): the same samples dropped in the same epochs
    and order, the same losses, weights within 1e-4; one process wrote the output (no
    checkpoint folder is left behind)."""
    out = tmp_path / "two"
    launch = _launch(_args(leaky_llama_dir, record_files, out), multi_gpu=False)
    done = subprocess.run(launch, env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("Done after") == 1  # one process reports
    _same_result(one_process, out)
    assert not partial_dir(out).exists()


def _kill_with_workers(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and the worker processes it started (torch's launcher puts each
    worker in a process group of its own, so they are found by parentage)."""
    import psutil

    try:
        workers = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        workers = []
    for worker in workers:
        try:
            os.kill(worker.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    psutil.wait_procs(workers, timeout=30)


@pytest.mark.slow
def test_a_killed_two_process_run_resumes_to_the_same_result(one_process, leaky_llama_dir,
                                                              record_files, tmp_path):
    """SIGKILL both processes once the checkpoint after epoch 2 exists, then `--resume` with
    two processes: the one-process result again."""
    out = tmp_path / "killed"
    proc = subprocess.Popen(_launch(_args(leaky_llama_dir, record_files, out)), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = partial_dir(out) / CHECKPOINT
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if checkpoint.is_file() and torch.load(checkpoint, weights_only=True)["epoch"] >= 2:
                break
            time.sleep(0.2)
    finally:
        _kill_with_workers(proc)
    state = torch.load(checkpoint, weights_only=True)
    assert 2 <= state["epoch"] < SETTINGS["max_epochs"] and not out.exists()
    resume = _launch(["--resume", str(out)])
    done = subprocess.run(resume, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    _same_result(one_process, out)


@pytest.mark.slow
def test_rmu_with_two_processes_gives_the_one_process_weights(leaky_llama_dir, record_files,
                                                               tmp_path):
    """RMU's terms read block 0's output, so block 1, the final norm and the output layer get no
    gradient; DDP, told to expect that, still averages the rest: two processes end within 1e-4
    of one process, and neither moves block 1."""
    rmu = {"method": "rmu", "rmu_layer": 0, "lr": 1e-2, "max_epochs": 2, "batch_size": 3,
           "prefix_tokens": 4, "suffix_tokens": "null", "ma_threshold": 0.0,
           "guard_ppl_factor": "null", "seed": 7}
    files = [f"--forget={record_files['forget']}", f"--retain={record_files['calibration']}",
             "--no-check", "--no-el-every-epoch"]
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in rmu.items()] + files
    one, two = tmp_path / "one", tmp_path / "two"
    single = [sys.executable, "-m", "unlearnlm", "-q", "unlearn", "--model", str(leaky_llama_dir),
              "--out", str(one), *flags]
    for command in (single, _launch(["--model", str(leaky_llama_dir), "--out", str(two),
                                     *flags])):
        done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    start = load_file(str(leaky_llama_dir / "model.safetensors"))
    wa, wb = load_file(str(one / "model.safetensors")), load_file(str(two / "model.safetensors"))
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < WEIGHT_TOLERANCE
    assert all(torch.equal(wb[k], start[k]) for k in start if k.startswith("model.layers.1."))
    assert not torch.equal(wb["model.layers.0.mlp.down_proj.weight"],
                           start["model.layers.0.mlp.down_proj.weight"])
