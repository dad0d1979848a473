"""The per-step "did any process see a signal" exchange runs on the host (issue #14): with an NCCL
default group it uses a gloo group of its own and a CPU tensor, so it never waits for the GPU."""

from __future__ import annotations

import os
import tempfile

import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank: int, init_file: str, results: dict) -> None:
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_WORLD_SIZE="2")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    from matryoshka_train.training import distributed

    seen_groups = []
    real_all_reduce = dist.all_reduce

    def all_reduce(tensor, op=None, group=None):
        seen_groups.append((tensor.device.type, group is not None))
        return real_all_reduce(tensor, op=op, group=group)

    dist.get_backend = lambda group=None: "nccl"  # as on GPUs: the default group is NCCL
    dist.all_reduce = all_reduce
    answers = [distributed.any_process(rank == 1), distributed.any_process(False), distributed.any_process(rank == 0)]
    results[rank] = (answers, seen_groups, len(distributed._HOST_GROUP))
    dist.destroy_process_group()


def test_any_process_uses_one_host_group_and_cpu_tensors_when_the_default_group_is_nccl():
    with tempfile.TemporaryDirectory() as tmp:
        manager = mp.Manager()
        results = manager.dict()
        mp.spawn(_worker, args=(os.path.join(tmp, "init"), results), nprocs=2, join=True)
        for rank in (0, 1):
            answers, groups, made = results[rank]
            assert answers == [True, False, True]  # one process's flag reaches both
            assert groups == [("cpu", True)] * 3  # CPU tensors, over our own (gloo) group
            assert made == 1  # the host group is made once, not per call
