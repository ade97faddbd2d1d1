"""Training with several processes (one per GPU), started by torchrun or by Slurm.

Every process holds the whole model and runs the same loop on its own part of each batch
(``data.part_of``). Once per step the processes sum, in one all-reduce, the loss gradient and
the *signed* output derivatives that the sensitivities are the absolute values of, each taken
of its part's share of the batch mean. So every process applies the same update and ends with
the same weights, masks and sensitivities, which are those a single process would compute on
the whole batch (up to the order of floating-point sums). Evaluations (validation, the
threshold search, test) are divided up the same way and their sums all-reduced, so the pruning
decisions, read from identical numbers, are identical on every process.

Why not ``DistributedDataParallel``: the training step takes its gradients with
``torch.autograd.grad``, which DDP's reducer does not see (it hooks the accumulation into
``.grad``), and the sensitivities need their own reduction anyway; one explicit all-reduce of
all of them does what DDP's would do for the gradient alone. Batch-norm statistics, as under
DDP, are those of each process's part of the batch; the running averages are taken from
process 0 before every evaluation (DDP's ``broadcast_buffers``).

Only process 0 writes the run folder and prints; the others compute.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from sensreg.errors import UserError


class DistributedError(UserError, RuntimeError):
    """The process group could not be set up; the message says why and what to do."""


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: ``rank`` of ``world`` processes."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0  # its index on its machine: which GPU it takes
    # Small control messages (a stop request, the run folder) go through a gloo group on the
    # CPU, so that asking never waits for the GPU.
    control: Any = field(default=None, compare=False, repr=False)

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.world

    def device(self, device: torch.device) -> torch.device:
        """The device of this process: CUDA devices are taken one per process on each machine."""
        if self.enabled and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    @torch.no_grad()
    def all_sum_(self, tensors: list[Tensor]) -> None:
        """Replace every tensor by its sum over all processes, in place, in one all-reduce per
        dtype and device (the tensors are flattened into one buffer)."""
        if not self.enabled or not tensors:
            return
        import torch.distributed as dist

        groups: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
        for t in tensors:
            groups.setdefault((t.dtype, t.device), []).append(t)
        for group in groups.values():
            flat = torch.cat([t.reshape(-1) for t in group])
            dist.all_reduce(flat)
            offset = 0
            for t in group:
                t.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()

    @torch.no_grad()
    def broadcast_(self, tensors: list[Tensor]) -> None:
        """Overwrite every tensor with process 0's, in place."""
        if not self.enabled:
            return
        import torch.distributed as dist

        for t in tensors:
            if t.is_contiguous():
                dist.broadcast(t, src=0)
            else:  # a channels-last kernel: the collectives take dense row-major tensors
                dense = t.contiguous()
                dist.broadcast(dense, src=0)
                t.copy_(dense)

    def broadcast_object(self, obj: Any) -> Any:
        """Process 0's ``obj`` (anything picklable), on every process."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on at least one process (every process must ask)."""
        if not self.enabled:
            return flag
        import torch.distributed as dist

        t = torch.tensor([int(flag)])
        dist.all_reduce(t, group=self.control)
        return bool(t.item())

    def sync_model_(self, model: nn.Module) -> None:
        """Give every process process 0's parameters and buffers (batch-norm statistics)."""
        self.broadcast_([*model.parameters(), *model.buffers()])

    def sync_buffers_(self, model: nn.Module) -> None:
        """Give every process process 0's buffers: batch-norm running averages, which each
        process otherwise updates from its own part of the batches."""
        self.broadcast_(list(model.buffers()))


SINGLE = Dist()


def from_environment(env: dict[str, str] | None = None) -> Dist:
    """This process's place, from what its launcher set: torchrun's ``RANK``, ``WORLD_SIZE`` and
    ``LOCAL_RANK``, or a job with several tasks started by submitit (Hydra's submitit launcher
    with ``tasks_per_node`` > 1, on Slurm or locally), whose task numbers are exported in
    torchrun's terms. A plain process is rank 0 of 1."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env and env.get("SUBMITIT_EXECUTOR"):
        _export_submitit_tasks()
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local_rank = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise DistributedError(
            f"RANK={env.get('RANK')!r}, WORLD_SIZE={env.get('WORLD_SIZE')!r}, LOCAL_RANK="
            f"{env.get('LOCAL_RANK')!r} are not whole numbers; start several processes with "
            f"`torchrun --nproc-per-node N -m sensreg train ...`.") from None
    if not (world >= 1 and 0 <= rank < world):
        raise DistributedError(f"RANK={rank} does not lie in 0..WORLD_SIZE-1 (WORLD_SIZE={world}); start "
                               f"several processes with `torchrun --nproc-per-node N -m sensreg train ...`.")
    return Dist(rank, world, local_rank)


def _export_submitit_tasks() -> None:
    """In a submitit job of several tasks, set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR (the
    first node) and MASTER_PORT from its job environment. Every task keeps seeing all of the
    node's GPUs and takes the one of its local rank, as under torchrun."""
    try:
        import submitit

        if submitit.JobEnvironment().num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    except Exception as err:  # an old submitit without the helper, or a broken job environment
        raise DistributedError(
            f"this submitit job's distributed set-up could not be read ({type(err).__name__}: {err}). "
            f"Install submitit >= 1.4 (pip install -e '.[slurm]'), or run one task per job "
            f"(hydra.launcher.tasks_per_node=1).") from None


def init(d: Dist, device: torch.device) -> Dist:
    """Join the process group (NCCL on GPUs, gloo on the CPU); returns ``d`` with its control
    group. A single process joins nothing."""
    if not d.enabled:
        return d
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.set_device(d.device(device))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend, rank=d.rank, world_size=d.world)
        except (RuntimeError, ValueError) as err:
            raise DistributedError(
                f"process {d.rank} of {d.world} could not join the process group ({backend}: {err}). "
                f"Start the processes with torchrun, which sets MASTER_ADDR and MASTER_PORT.") from None
    control = dist.new_group(backend="gloo") if backend != "gloo" else None
    return Dist(d.rank, d.world, d.local_rank, control)


def shutdown(d: Dist) -> None:
    """Leave the process group (at the end of a run; a sweep joins it again for the next job)."""
    if d.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
