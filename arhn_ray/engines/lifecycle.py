"""An engine's lifecycle inside a replica: clear what a dead predecessor left, and start under a deadline.

Ray restarts a dead replica as the same actor, in the same placement group. When the replica died
by anything but :func:`~arhn_ray.engines.watchdog.leave` (the OOM killer, a segfault), vLLM's engine
core can outlive it, and with tensor parallelism keep its Ray workers and their GPUs: the new
engine would then wait forever for GPUs that never free. So before its engine starts, a replica
ends every process a predecessor of the same actor started (they carry its mark in their
environment) and every other actor in its placement group; and the start itself has a deadline,
past which the replica exits and Ray restarts it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from arhn_ray.engines.watchdog import is_resource_tracker, leave

log = logging.getLogger(__name__)

MARK = "ARHN_RAY_REPLICA"  # environment variable: the replica actor that started a process
T = TypeVar("T")


def prepare_replica() -> list[str]:
    """In a Ray actor: end what a predecessor left, then mark this process's future children.
    Returns what was ended (empty outside an actor or on a first start)."""
    mark = _actor_id()
    if mark is None:
        return []
    ended = [f"process {pid}" for pid in _end_marked_processes(mark)]
    try:  # the state API needs the dashboard (a KubeRay cluster has it); ending the engine core above
        # already ends the workers it owns, as Ray ends an actor whose owner died
        ended += [f"actor {a}" for a in _end_placement_group_actors(mark)]
    except Exception as e:
        log.info("placement group actors not checked: %s", e)
    if ended:
        message = f"ended what a dead predecessor left: {', '.join(ended)}"
        log.warning("%s", message)
        print(f"arhn-ray replica: {message}", flush=True)
    os.environ[MARK] = mark
    return ended


@contextmanager
def deadline(seconds: float, what: str) -> Iterator[None]:
    """Leave the replica (Ray restarts it) if the block has not ended after ``seconds``."""
    timer = threading.Timer(seconds, leave, args=(f"{what} took longer than {seconds:g} s (engine.start_timeout_s)",))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _actor_id() -> str | None:
    try:
        import ray

        if not ray.is_initialized():
            return None
        return ray.get_runtime_context().get_actor_id()
    except Exception:
        return None


def _end_marked_processes(mark: str) -> list[int]:
    import psutil

    mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    ended = []
    for proc in psutil.process_iter():
        try:
            if proc.pid in mine or proc.environ().get(MARK) != mark or is_resource_tracker(proc):
                continue
            proc.kill()
            ended.append(proc.pid)
        except psutil.Error:
            continue
    return ended


def _end_placement_group_actors(mark: str) -> list[str]:
    """Other live actors of this replica's placement group (a predecessor's tensor-parallel workers):
    STRICT_PACK puts them on this node, so their processes are ended here."""
    import psutil
    import ray
    from ray.util import get_current_placement_group
    from ray.util.state import list_actors

    pg = get_current_placement_group()
    if pg is None:
        return []
    node = ray.get_runtime_context().get_node_id()
    ended = []
    for actor in list_actors(
        filters=[("placement_group_id", "=", pg.id.hex()), ("state", "=", "ALIVE")], raise_on_missing_output=False
    ):
        if actor.actor_id == mark or actor.node_id != node or not actor.pid:
            continue
        try:
            psutil.Process(actor.pid).kill()
            ended.append(actor.actor_id)
        except psutil.Error:
            continue
    return ended


def start(make: Callable[[], T], seconds: float, what: str = "engine start") -> T:
    with deadline(seconds, what):
        return make()
