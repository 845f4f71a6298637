"""The processes of a sweep that spreads whole tasks: who this process is among them, and the children
it starts.

A sweep with ``spread: tasks`` runs N processes that each take whole (relation, trial) tasks, each with
its own one-device Lightning fit; no fit spans processes, so Lightning launches nothing and the
processes are found (or started) here, the way Lightning does for DDP:

- launched from outside (torchrun, SLURM's srun, or a user who sets ``LOCAL_RANK`` himself): the
  ranks come from Lightning's cluster environments (``TorchElasticEnvironment``, ``SLURMEnvironment``,
  ``LightningEnvironment``);
- otherwise the first process (local rank 0) starts its N - 1 local children by re-running the same
  command (Lightning's ``_basic_subprocess_cmd``: ``python -m <module>`` or the script), with
  ``LOCAL_RANK``, ``NODE_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` set, as its
  ``_SubprocessScriptLauncher`` does.

The processes meet in a gloo group made directly (``ProcessGroupGloo`` over a rendezvous store), not
as torch's default group: the one-device fits must see no default group, or :mod:`distributed`'s
helpers would shard their prompts across the sweep's processes. Its barriers wait up to a week
(ranks wait for whole tasks) and, on the starting process, watch the children: a child that ends
with an error ends the command with that child's last stderr line (:class:`~lre_pl.errors.ProcessFailed`).
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch.distributed as dist
from lightning_fabric.plugins.environments import (
    LightningEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)

from lre_pl.errors import ProcessFailed

#: How long a barrier waits for the other processes: they may be in the middle of a whole task.
BARRIER_TIMEOUT = timedelta(days=7)


@dataclass(frozen=True)
class Place:
    """This process among the sweep's processes."""

    global_rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    """Processes on this node (they share its cores)."""
    main_address: str
    main_port: int
    external: bool
    """Whether this process was started with its rank set (torchrun, srun, the user, or our own local
    rank 0); else it is local rank 0 and starts its node's children itself."""


def process_count(trainer: dict) -> tuple[int, int]:
    """(processes per node, nodes) that the Trainer settings ask for: ``devices`` (an int, or a list
    of device indices) x ``num_nodes``; 1 x 1 where they give neither."""
    devices = trainer.get("devices", 1)
    per_node = (
        len(devices) if isinstance(devices, (list, tuple)) else int(devices) if str(devices).isdigit() else 1
    )
    return max(per_node, 1), max(int(trainer.get("num_nodes", 1)), 1)


def find_place(trainer: dict) -> Place:
    """Where this process stands: from an external launcher's environment where there is one (as
    Lightning detects it), else from the Trainer settings (this process is local rank 0, or a child
    that local rank 0 started with ``LOCAL_RANK`` set)."""
    per_node, nodes = process_count(trainer)
    if TorchElasticEnvironment.detect():
        env = TorchElasticEnvironment()
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", env.world_size()))
        return Place(env.global_rank(), env.world_size(), env.local_rank(), local_world,
                     env.main_address, env.main_port, external=True)  # fmt: skip
    if SLURMEnvironment.detect():
        env = SLURMEnvironment()
        tasks = re.match(r"\d+", os.environ.get("SLURM_NTASKS_PER_NODE", ""))
        local_world = int(tasks.group()) if tasks else env.world_size()
        return Place(env.global_rank(), env.world_size(), env.local_rank(), local_world,
                     env.main_address, env.main_port, external=True)  # fmt: skip
    env = LightningEnvironment()
    started = "LOCAL_RANK" in os.environ  # a child of ours, or processes the user started himself
    world = int(os.environ.get("WORLD_SIZE", per_node * nodes)) if started else per_node * nodes
    # A child of ours sets no RANK: its global rank is its node's first rank + its local rank, as in DDP.
    rank = env.node_rank() * per_node + env.local_rank()
    main_port = env.main_port if world > 1 else 0  # one process needs no port
    return Place(rank, world, env.local_rank(), per_node, env.main_address, main_port, external=started)


class Processes:
    """The sweep's processes as this one sees them: its children (where it started them) and the gloo
    group of all of them. A context manager: on an error it stops the children it started."""

    def __init__(self, place: Place):
        self.place = place
        self.children: list[subprocess.Popen] = []
        self._stderr: dict[int, collections.deque[str]] = {}
        self._forwarders: list[threading.Thread] = []
        self.group = None

    def __enter__(self) -> Processes:
        place = self.place
        if place.world_size == 1:
            return self
        if place.local_rank == 0 and not place.external:
            self._start_children()
        store, rank, world = next(
            dist.rendezvous(
                f"tcp://{place.main_address}:{place.main_port}?rank={place.global_rank}&world_size={place.world_size}",
                timeout=BARRIER_TIMEOUT,
            )
        )
        self.group = dist.ProcessGroupGloo(
            dist.PrefixStore("lre_pl_sweep/", store), rank, world, BARRIER_TIMEOUT
        )
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if error is not None:
            self.stop()

    def _start_children(self) -> None:
        """Local ranks 1..n-1 of this node: the same command again, as Lightning's launcher runs it."""
        from lightning_fabric.strategies.launchers.subprocess_script import _basic_subprocess_cmd

        place = self.place
        env = {
            **os.environ, "MASTER_ADDR": place.main_address, "MASTER_PORT": str(place.main_port),
            "NODE_RANK": str(place.global_rank // place.local_world_size), "WORLD_SIZE": str(place.world_size),
        }  # fmt: skip
        for local_rank in range(1, place.local_world_size):
            child = subprocess.Popen(
                _basic_subprocess_cmd(), env={**env, "LOCAL_RANK": str(local_rank)}, stderr=subprocess.PIPE,
                text=True, errors="replace",
            )  # fmt: skip
            self.children.append(child)
            self._stderr[child.pid] = lines = collections.deque(maxlen=50)
            forwarder = threading.Thread(target=_forward, args=(child.stderr, lines), daemon=True)
            forwarder.start()
            self._forwarders.append(forwarder)

    def check(self) -> None:
        """Raise :class:`ProcessFailed` where a child has ended with an error (its last stderr line)."""
        for local_rank, child in enumerate(self.children, start=1):
            if child.poll():
                for forwarder in self._forwarders:
                    forwarder.join(timeout=5)  # its last lines
                said = [line.strip() for line in self._stderr[child.pid] if line.strip()]
                raise ProcessFailed(
                    f"sweep process {self.place.global_rank + local_rank} (pid {child.pid}) failed with exit "
                    f"code {child.returncode}: {said[-1] if said else '(nothing on stderr)'}",
                    code=child.returncode,
                )

    def barrier(self, while_waiting: Callable[[], None] | None = None) -> None:
        """Wait for every process here; meanwhile check the children and call ``while_waiting``."""
        if self.group is None:
            return
        work = self.group.barrier()
        while not work.is_completed():
            self.check()
            if while_waiting is not None:
                while_waiting()
            time.sleep(0.2)
        try:
            work.wait()
        except RuntimeError:  # a process that ended broke the group: say which one, where it is our child
            for child in self.children:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(timeout=10)
            self.check()
            raise

    def join(self) -> None:
        """Wait for the children to end (after the last barrier) and fail where one failed."""
        for child in self.children:
            child.wait()
        self.check()

    def stop(self) -> None:
        """End the children (SIGTERM, then SIGKILL: one blocked in a barrier runs no signal handler)."""
        for child in self.children:
            if child.poll() is None:
                child.terminate()
        deadline = time.monotonic() + 5
        for child in self.children:
            try:
                child.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def _forward(stream, lines: collections.deque) -> None:
    """Copy a child's stderr to ours, line by line, keeping its last lines for the error message."""
    for line in stream:
        lines.append(line)
        sys.stderr.write(line)
        sys.stderr.flush()
