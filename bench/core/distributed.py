"""One run as several processes: the torch.distributed world a run's ranks share, and the few
collectives its training and evaluation need.

A run with ``--nproc-per-run N`` is N processes (ranks) in one world: NCCL between GPUs that are
each a rank's own, gloo on CPUs (and where ranks share a GPU). A process joins its world once
(:func:`join`: from a launcher's address and port, or from ``torchrun``'s environment), and the
stages ask :func:`current` for it (None in a one-process run, which changes nothing). What they share:

- :class:`RowShard`: this rank's rows of a step's batch, and an all-gather of them back to the
  whole batch in its own order that keeps gradients;
- :func:`average_`: the mean over ranks of tensors (gradients and loss terms, in one call);
- :func:`broadcast`: rank 0's decision (resume from which epoch, skip a complete run) to all;
- :func:`gather_rows`: evaluation embeddings computed in shards, gathered to rank 0.

A rank that dies (killed, crashed, its node lost) closes its connections: the others' next
collective fails at once, and a rank that hangs alive fails them after :func:`timeout_s`; either
way it is one line (:class:`RankLostError`), never a hang. Imports torch only inside functions.
"""

from __future__ import annotations

import datetime
import functools
import os
import re
import socket
from dataclasses import dataclass

from dmlbench.core.errors import DMLBenchError

# Seconds a collective waits for a rank that is alive but does not answer. Generous: rank 0 alone
# writes checkpoints and computes the metrics while the others wait. A dead rank is noticed at
# once (its sockets close), whatever this says.
TIMEOUT_S = 1800.0
TIMEOUT_ENV = "DMLBENCH_DIST_TIMEOUT_S"
BACKEND_ENV = "DMLBENCH_DIST_BACKEND"  # gloo or nccl: overrides the choice below (e.g. gloo on one GPU)
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
# What torch's collectives say when a peer is gone or silent (gloo, NCCL, the TCP store).
LOST_MARKERS = ("Connection closed by peer", "Connection reset by peer", "gloo/transport", "ProcessGroupGloo",
                "ProcessGroupNCCL", "NCCL communicator was aborted", "DistNetworkError")


class RankLostError(DMLBenchError):
    """Another rank of this run died or stopped answering; the run stops (a re-run resumes it)."""


@dataclass(frozen=True)
class World:
    """This process's place in its run's world: rank, size, backend, and its rank on this machine."""

    rank: int
    size: int
    backend: str
    local_rank: int = 0
    local_size: int = 1
    launcher: str = "local"  # local (dmlbench spawned the ranks), torchrun or ray

    @property
    def main(self) -> bool:
        """Rank 0: it alone writes the run's files and computes its metrics."""
        return self.rank == 0

    def info(self) -> dict:
        """What config.json records of the world."""
        return {"world_size": self.size, "backend": self.backend, "launcher": self.launcher}


_CURRENT: World | None = None


def current() -> World | None:
    """The world this process belongs to, or None (a one-process run)."""
    return _CURRENT


def timeout_s() -> float:
    """The collectives' timeout: ``$DMLBENCH_DIST_TIMEOUT_S``, else :data:`TIMEOUT_S`."""
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        return float(raw) if raw else TIMEOUT_S
    except ValueError:
        raise DMLBenchError(f"{TIMEOUT_ENV}={raw!r} must be a number of seconds") from None


def free_port(host: str = "") -> int:
    """A TCP port free on this machine now, for rank 0's rendezvous."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def node_address() -> str:
    """This machine's address as other machines reach it (rank 0's, for a world across machines)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))  # no packet is sent: this picks the outgoing interface
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"


def choose_backend(device: str, shared_gpu: bool) -> str:
    """gloo on the CPU and where ranks share a GPU (NCCL refuses two ranks on one device), NCCL where
    each rank has a GPU of its own; ``$DMLBENCH_DIST_BACKEND`` overrides."""
    forced = os.environ.get(BACKEND_ENV, "")
    if forced:
        if forced not in ("gloo", "nccl"):
            raise DMLBenchError(f"{BACKEND_ENV}={forced!r} must be gloo or nccl")
        return forced
    return "nccl" if str(device).startswith("cuda") and not shared_gpu else "gloo"


def rank_device(device: str, world: World | None) -> str:
    """The device of this rank: ``cuda`` becomes the rank's own GPU on its machine (``cuda:LOCAL_RANK``,
    wrapping around where ranks outnumber GPUs); ``cpu`` and ``cuda:N`` are kept."""
    if world is None or device != "cuda":
        return device
    import torch

    count = torch.cuda.device_count()
    return f"cuda:{world.local_rank % count}" if count else device


def gpus_shared(device: str, local_size: int) -> bool:
    """Whether the ranks on this machine would share a GPU: a fixed ``cuda:N``, or more ranks than GPUs."""
    if not str(device).startswith("cuda"):
        return False
    if device != "cuda":
        return local_size > 1
    import torch

    return local_size > torch.cuda.device_count()


def join(rank: int, size: int, *, address: str, port: int | None, device: str = "cpu", local_rank: int | None = None,
         local_size: int | None = None, launcher: str = "local", shared_gpu: bool | None = None) -> World:
    """Join the world of ``size`` ranks as ``rank``: its rank 0 listens at ``address:port`` (None:
    torchrun's ``MASTER_ADDR``/``MASTER_PORT``). The backend follows :func:`choose_backend`."""
    import torch
    import torch.distributed as dist

    global _CURRENT
    local_rank = rank if local_rank is None else local_rank
    local_size = size if local_size is None else local_size
    if shared_gpu is None:
        shared_gpu = gpus_shared(device, local_size)
    backend = choose_backend(device, shared_gpu)
    world = World(rank, size, backend, local_rank, local_size, launcher)
    if backend == "nccl":
        torch.cuda.set_device(torch.device(rank_device(device, world)))
    init = f"tcp://{address}:{port}" if port is not None else "env://"
    try:
        dist.init_process_group(backend, init_method=init, rank=rank, world_size=size,
                                timeout=datetime.timedelta(seconds=timeout_s()))
    except Exception as e:  # noqa: BLE001 - the store's and the backends' errors vary by version
        raise RankLostError(f"rank {rank} of {size} could not join its world at {init} ({_first_line(e)}); "
                            "check that every rank started and can reach rank 0") from None
    _CURRENT = world
    return world


def torchrun_env() -> dict | None:
    """``torchrun``'s RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE, as ints; None outside torchrun."""
    if not all(k in os.environ for k in TORCHRUN_ENV):
        return None
    try:
        env = {k: int(os.environ[k]) for k in (*TORCHRUN_ENV, "LOCAL_WORLD_SIZE") if k in os.environ}
    except ValueError:
        raise DMLBenchError(f"torchrun's {', '.join(TORCHRUN_ENV)} must be integers, got "
                            f"{', '.join(os.environ[k] for k in TORCHRUN_ENV)}") from None
    env.setdefault("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])
    return env


def join_torchrun(device: str) -> World:
    """Join the world ``torchrun`` (or ``srun torchrun``) started this process in."""
    env = torchrun_env()
    if env is None:
        raise DMLBenchError("not started by torchrun: RANK, WORLD_SIZE and LOCAL_RANK are not set")
    return join(env["RANK"], env["WORLD_SIZE"], address="", port=None, device=device, local_rank=env["LOCAL_RANK"],
                local_size=env["LOCAL_WORLD_SIZE"], launcher="torchrun")


def leave() -> None:
    """Leave the world (at the end of a launched rank; torchrun's processes leave as they exit)."""
    import torch.distributed as dist

    global _CURRENT
    _CURRENT = None
    if dist.is_initialized():
        dist.destroy_process_group()


def _first_line(e: BaseException) -> str:
    """The first sentence of ``e``'s message, without the C++ source location torch's backends put first."""
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    text = re.sub(r"^\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", text)
    return text.split(". ")[0][:300]


def lost_error(e: BaseException) -> RankLostError | None:
    """``e`` as a :class:`RankLostError` where it says a peer is gone or silent; None otherwise."""
    if isinstance(e, RankLostError):
        return e
    text = str(e)
    dist_error = type(e).__name__ in ("DistError", "DistBackendError", "DistNetworkError", "DistStoreError")
    if not dist_error and not any(m in text for m in LOST_MARKERS):
        return None
    world = current()
    who = f"rank {world.rank} of {world.size}" if world else "a rank"
    return RankLostError(f"{who} lost contact with another rank of this run ({_first_line(e)}); a killed or crashed "
                         "rank ends the run: re-run the same command to resume from its last checkpoint")


def _comm_device(world: World):
    """Where collectives' tensors live: the rank's GPU for NCCL, the CPU for gloo."""
    import torch

    if world.backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast(obj, world: World | None = None):
    """Rank 0's ``obj`` on every rank (picklable objects); ``obj`` itself without a world."""
    world = world or current()
    if world is None or world.size == 1:
        return obj
    import torch.distributed as dist  # (here: a command without a world imports no torch)

    box = [obj]
    dist.broadcast_object_list(box, src=0, device=_comm_device(world))
    return box[0]


def barrier(world: World | None = None) -> None:
    """Wait until every rank gets here."""
    world = world or current()
    if world is not None and world.size > 1:
        import torch.distributed as dist  # (here: a command without a world imports no torch)

        dist.barrier()


def average_(tensors: list, world: World | None = None) -> None:
    """Replace each tensor (same dtype) by its mean over the ranks, in place, in one all-reduce."""
    import torch
    import torch.distributed as dist

    world = world or current()
    if world is None or world.size == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat.div_(world.size)  # a power of two (2, 4, 8 ranks) divides exactly
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset:offset + n].view_as(t))
        offset += n


def broadcast_tensors(tensors, world: World | None = None) -> None:
    """Overwrite each tensor with rank 0's, in place (the model's state at the start, so every rank
    begins from the same bits whatever seeded it)."""
    import torch.distributed as dist

    world = world or current()
    if world is None or world.size == 1:
        return
    for t in tensors:
        dist.broadcast(t, src=0)


def gather_rows(t, counts: list[int], world: World | None = None):
    """Rank 0 gets every rank's rows of ``t`` (rank r holds ``counts[r]`` of them), in rank order; the
    other ranks get None. The counts are known to every rank, so nothing but the rows is sent."""
    import torch
    import torch.distributed as dist

    world = world or current()
    if world is None or world.size == 1:
        return t
    dev = _comm_device(world)
    rows = max(max(counts), 1)
    padded = torch.zeros((rows, *t.shape[1:]), dtype=t.dtype, device=dev)
    padded[:len(t)] = t.to(dev)
    bucket = [torch.empty_like(padded) for _ in range(world.size)] if world.main else None
    dist.gather(padded, bucket, dst=0)
    if not world.main:
        return None
    return torch.cat([b[:n] for b, n in zip(bucket, counts)]).to(t.device)


@functools.cache
def _gather_function():
    """The autograd function behind :meth:`RowShard.gather`, made on first use (it imports torch)."""
    import torch
    import torch.distributed as dist

    class GatherRows(torch.autograd.Function):
        """All-gather along the first dimension. The backward sums, over ranks, each rank's
        gradient with respect to the whole gathered tensor, and keeps this rank's rows."""

        @staticmethod
        def forward(ctx, t, rank: int, size: int):
            ctx.rank, ctx.n = rank, len(t)
            parts = [torch.empty_like(t) for _ in range(size)]
            dist.all_gather(parts, t.contiguous())
            return torch.cat(parts)

        @staticmethod
        def backward(ctx, grad):
            grad = grad.contiguous().clone()
            dist.all_reduce(grad)
            return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n], None, None

    return GatherRows


class RowShard:
    """This rank's rows of a step's batch. ``rows``: (ranks, rows per rank) positions in the whole
    batch, each rank's in the order its images are stacked.

    Every rank computes a whole-batch loss from :meth:`gather`, the same on every rank. Its
    gradient reaches each rank's rows summed over the ranks, i.e. ``size`` times this rank's
    share; averaging the parameters' gradients over the ranks (:func:`average_`) then gives the
    one-process gradient exactly: sum over ranks of each rank's share. A loss's own parameters
    (ArcFace's proxies) get the whole gradient on every rank, and their average is that gradient.
    A term that is a mean over this rank's images alone (a VAE's) averages to the batch mean too.
    """

    def __init__(self, rows, world: World):
        import torch

        self.world = world
        self.all_rows = rows
        self.rows = rows[world.rank]
        flat = rows.reshape(-1)
        # gathered[q] is the whole batch's row flat[q]: the batch's row j is gathered[order[j]].
        self.order = None if torch.equal(flat, torch.arange(len(flat))) else torch.argsort(flat)

    def gather(self, t):
        """The whole batch's rows of ``t`` (this rank's rows of it in, every rank's out), in the batch's
        order, with gradients flowing back to each rank's rows."""
        out = _gather_function().apply(t, self.world.rank, self.world.size)
        return out if self.order is None else out[self.order.to(out.device)]

    def local(self, t):
        """This rank's rows of a whole-batch tensor ``t`` (e.g. noise drawn for the whole batch)."""
        return t[self.rows.to(t.device)]
