"""Running as one of several processes (DDP through ``accelerate launch``, ``torchrun`` or
``mtrain run --nproc N``).

Every process runs the same :func:`matryoshka_train.training.run`; the trainer (Accelerate) shards
the batches and averages the gradients. What is ours: which process does the one-off work (the
baseline and final evaluation, carbon, results and model files: the main process), the few
collective calls that keep the processes in step (a barrier; "did any process see a signal or a
NaN"), and the launch command behind ``--nproc``. (The test hooks are in :mod:`matryoshka_train.testing`.)
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

from ..errors import UserError


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def local_world_size() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size())) or 1)


def is_main() -> bool:
    return rank() == 0


def init() -> None:
    """Join the process group early (the trainer would do it later), so that our own barriers work
    before the trainer exists. CPU-only machines use gloo."""
    if world_size() <= 1:
        return
    import torch  # heavy; the CLI imports this module before the hub probe
    from accelerate import PartialState  # heavy; only with several processes

    if not torch.cuda.is_available():
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    PartialState(cpu=not torch.cuda.is_available())


def _dist() -> Any:
    import torch.distributed as dist  # heavy; only with several processes

    return dist if world_size() > 1 and dist.is_available() and dist.is_initialized() else None


def barrier() -> None:
    dist = _dist()
    if dist is not None:
        dist.barrier()


_HOST_GROUP: list[Any] = []  # the CPU (gloo) process group for host-side flags, made on first use


def host_group(dist: Any) -> Any:
    """A process group whose collectives run on the host: the default group itself when it is gloo
    (CPU training), else one gloo group made once (every process makes it at the same call, as
    :func:`any_process` is called at the same step everywhere). ``None`` means the default group."""
    if dist.get_backend() == "gloo":
        return None
    if not _HOST_GROUP:
        _HOST_GROUP.append(dist.new_group(backend="gloo"))
    return _HOST_GROUP[0]


def any_process(flag: bool) -> bool:
    """True on every process when it is True on at least one (one tiny all-reduce).

    Called every step (the signal check), so it runs on the host: a CPU tensor over a gloo group.
    With NCCL, a CUDA tensor here would make every step wait for the GPU's queue to drain before
    its ``.item()`` returns (issue #14: no synchronisation in the hot loop)."""
    dist = _dist()
    if dist is None:
        return bool(flag)
    import torch  # heavy; only with several processes

    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=host_group(dist))
    return bool(t.item())


def first_flagged_step(step: int) -> int:
    """The smallest non-negative ``step`` over all processes, or -1 when none flagged one."""
    dist = _dist()
    if dist is None:
        return step
    import torch  # heavy; only with several processes

    never = 2**62
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([step if step >= 0 else never], dtype=torch.long, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    found = int(t.item())
    return -1 if found == never else found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_argv(nproc: int, run_args: list[str]) -> tuple[list[str], dict[str, str]]:
    """The ``accelerate launch`` command (and environment) that ``mtrain run ... --nproc N`` becomes:
    N processes on this machine running ``python -m matryoshka_train <run_args>``."""
    import torch  # heavy; only for --nproc


    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus and nproc > gpus:
        raise UserError(f"--nproc {nproc} asks for more processes "
                        f"than the {gpus} GPU(s) this machine has", where="--nproc")
    env = dict(os.environ)
    env.setdefault("MASTER_PORT", str(free_port()))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(nproc),
           "--main_process_port", env["MASTER_PORT"]]
    if not _has_accelerate_config():
        # without a config file: spell out the defaults (no warnings), DDP over torchrun
        cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        if nproc > 1:
            cmd.append("--multi_gpu")  # the torchrun launcher; with no GPU the processes use gloo on CPU
    if not gpus:
        env["ACCELERATE_USE_CPU"] = "true"
    return cmd + ["-m", "matryoshka_train", *run_args], env


def _has_accelerate_config() -> bool:
    if os.environ.get("ACCELERATE_CONFIG_FILE"):
        return True
    try:
        from accelerate.commands.config import default_config_file  # only for --nproc
    except ImportError:  # pragma: no cover
        return False
    return Path(default_config_file).is_file()
