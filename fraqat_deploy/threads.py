"""How many CPU threads the toolkit's own compute uses (PyTorch, ONNX Runtime's CPU sessions).

PyTorch's default is one OpenMP thread per core, busy-waiting at every parallel region. On a machine where another
process already keeps a core busy, those threads wait on each other: a digits-Sana training step measured 2.33 s
with the default threads and 0.32 s with one thread under the same load. So the default is the physical cores this
process may use, minus the cores other processes keep busy (the 1-minute load average), at least one: never more
threads than free cores. ``--threads N`` (or ``FRAQAT_THREADS``) overrides it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

ENV = "FRAQAT_THREADS"


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    physical_cores: int
    busy_cores: float  # what other processes used (1-minute load average), when the choice was automatic
    why: str

    def to_dict(self) -> dict[str, object]:
        return {"threads": self.threads, "physical_cores": self.physical_cores, "busy_cores": self.busy_cores,
                "why": self.why}


_chosen: ThreadChoice | None = None


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (hyper-thread siblings count once)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            cores.add(siblings.read_text().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))


def busy_cores() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def choose(requested: int | None = None, *, cores: int | None = None, load: float | None = None) -> ThreadChoice:
    """The thread count: ``requested`` (``--threads``) or ``$FRAQAT_THREADS`` if given, else free physical cores."""
    cores = physical_cores() if cores is None else cores
    if requested is None and os.environ.get(ENV, "").strip():
        try:
            requested = int(os.environ[ENV])
        except ValueError:
            requested = None
    if requested is not None:
        return ThreadChoice(max(1, requested), cores, 0.0, "requested")
    load = busy_cores() if load is None else load
    free = int(cores - load + 0.5)  # a core counts as busy when another process keeps it more than half busy
    return ThreadChoice(max(1, min(cores, free)), cores, round(load, 2),
                        "free physical cores" if free >= 1 else "one: every core is busy with other processes")


def apply(requested: int | None = None) -> ThreadChoice:
    """Choose and set the thread count for this process (PyTorch intra-op and inter-op, OpenMP, ORT sessions)."""
    global _chosen
    choice = choose(requested)
    n = str(choice.threads)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = n  # libraries loaded later read these
    os.environ[ENV] = n  # child processes (the simulator engine, DDP workers) get the same choice
    if "torch" in sys.modules:  # else torch reads OMP_NUM_THREADS when it is first imported
        _set_torch(choice.threads)
    _chosen = choice
    return choice


def _set_torch(n: int) -> None:
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1 if n <= 2 else 2)
    except RuntimeError:  # only settable before any parallel work started; the intra-op count is what matters
        pass


def current() -> ThreadChoice:
    """The choice made by ``apply`` (the CLI calls it once), else the automatic one without setting anything."""
    return _chosen or choose()


def count() -> int:
    return current().threads
