"""Process-wide settings a run needs: thread budget, device, determinism, seeds."""

from __future__ import annotations

import os
import random
from contextlib import contextmanager

from dmlbench.core.errors import DMLBenchError

# A pool worker's line for its progress bar (1, 2, ...; the driver's overall bar is line 0); None
# outside a pool, where a run's bar is the only one.
BAR_POSITION: int | None = None


@contextmanager
def interrupts_ignored(exc: BaseException | None = None):
    """While a Ctrl-C is being handled (``exc`` a KeyboardInterrupt, or None: always), ignore
    further ones in this (main) thread: a second Ctrl-C would break off the stopping of workers,
    Ray tasks or Ray itself with a traceback (inside Ray's shutdown, a crash). The clean-up is
    bounded, and the handler is restored after it."""
    import signal
    import threading

    if (exc is not None and not isinstance(exc, KeyboardInterrupt)) or \
            threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def default_threads() -> int:
    """The CPUs this process may use, capped at 8 (at least 1)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def limit_threads(n: int | None = None) -> int:
    """The thread budget for BLAS (numpy, scikit-learn) only, without importing torch: for a
    process that loads data and writes tables while its runs happen elsewhere."""
    from threadpoolctl import threadpool_limits

    n = n or default_threads()
    threadpool_limits(n)
    return n


def set_threads(n: int | None = None) -> int:
    """One thread budget for torch, faiss and BLAS, so they do not oversubscribe a small machine."""
    import torch
    from threadpoolctl import threadpool_limits

    n = n or default_threads()
    torch.set_num_threads(n)
    try:
        import faiss

        faiss.omp_set_num_threads(n)
    except ImportError:
        pass
    threadpool_limits(n)
    return n


def resolve_device(name: str):
    """The ``torch.device`` for ``name``; a CUDA one this machine lacks is a :class:`DMLBenchError`."""
    import torch

    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DMLBenchError(f"device {name}: CUDA is not available in this torch build ({torch.__version__}); "
                                "use cpu or install a CUDA build of torch")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise DMLBenchError(f"device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(name)


def set_determinism(deterministic: bool, device) -> None:
    """Deterministic CUDA kernels: cuDNN's deterministic algorithms and no autotuning, torch's
    deterministic implementations, and cuBLAS's fixed workspace (which must be set before the
    first cuBLAS call, hence here, before training). CPU runs are deterministic either way."""
    import torch

    if getattr(device, "type", str(device)) != "cuda":
        return
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    # warn_only: an op without a deterministic CUDA kernel warns (naming itself) instead of failing the run.
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global random generators with ``seed``."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def epoch_generator(seed: int, epoch: int, stream: int = 0):
    """A CPU generator for one epoch's sampling (stream 0) or augmentation (stream 1): a function of
    (seed, epoch, stream) alone, so a resumed run draws the same batches and crops as an
    uninterrupted one, on any device."""
    import torch

    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 2 + stream)


def log_to_stderr(level: int, fresh: bool = False) -> None:
    """dmlbench's own log lines on stderr (a worker process's, where no handler is set yet), and
    only dmlbench's: libraries (faiss, matplotlib) keep their chatter to themselves. ``fresh``:
    replace the handler this function set before (an earlier in-process command's stream may be
    closed, as with a test runner's captured streams)."""
    import logging
    import sys

    logger = logging.getLogger("dmlbench")
    if fresh:
        for h in [h for h in logger.handlers if getattr(h, "_dmlbench_stderr", False)]:
            logger.removeHandler(h)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._dmlbench_stderr = True
        logger.addHandler(handler)
    logger.setLevel(level)


def echo_line(msg: str) -> None:
    """A whole line on stderr in one write: print() writes the text and its newline apart, and the
    workers of a pool share the driver's stderr, so two of their lines could run into one."""
    import sys

    sys.stderr.write(msg + "\n")
    sys.stderr.flush()
