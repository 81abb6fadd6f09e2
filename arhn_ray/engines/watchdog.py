"""An engine's liveness: notice that it is gone, and take the replica down with it.

vLLM runs its engine core in child processes. When one dies (OOM killer, a CUDA or NCCL fault,
a lost tensor-parallel worker), ``vllm.LLM.generate`` can wait forever on a queue; when vLLM
does notice, it raises ``EngineDeadError``. Either way the engine will not come back, so the
replica must not turn the rest of its data into rejections: it leaves, and Ray restarts the
actor (``max_restarts``) and retries its batch (``max_task_retries``). A Ray actor restarts only
when its process dies, not when a call raises, hence :func:`leave`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

EXIT_ENGINE_DEAD = 75  # what a replica exits with when its engine died (EX_TEMPFAIL: try again)


class EngineDead(RuntimeError):
    """The engine cannot serve any more requests; the replica must be replaced."""


def is_engine_death(error: BaseException) -> bool:
    """vLLM's own verdict that its engine is gone (``EngineDeadError``, by name: releases move it)."""
    return isinstance(error, EngineDead) or any(type(e).__name__ == "EngineDeadError" for e in _chain(error))


def _chain(error: BaseException | None) -> Iterator[BaseException]:
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def leave(reason: str) -> None:
    """End this replica's process (and its engine's children) so that Ray replaces it.

    The multiprocessing resource tracker is spared: once this process is gone it unlinks the
    shared-memory segments vLLM's queues leave behind, which would otherwise fill /dev/shm
    one engine death at a time."""
    import psutil

    log.error("engine dead: %s; this replica exits so that Ray restarts it and retries its batch", reason)
    print(f"arhn-ray replica: engine dead: {reason}; restarting the replica", flush=True)
    for child in psutil.Process().children(recursive=True):
        try:
            if not is_resource_tracker(child):
                child.kill()
        except psutil.Error:
            pass
    os._exit(EXIT_ENGINE_DEAD)


def is_resource_tracker(proc) -> bool:
    """multiprocessing's resource tracker (``from multiprocessing.resource_tracker import main; main(fd)``)."""
    try:
        return any("resource_tracker" in part for part in proc.cmdline())
    except Exception:
        return False


class Watchdog:
    """Watches the engine's processes, and its progress while a call is in flight.

    ``processes`` are the engine's child processes, taken once the engine has started; one that
    exits is a dead engine. ``beat()`` is called on every engine step; a call in flight with no
    beat for ``stall_timeout_s`` is a dead engine too (a hung GPU, a stopped process).
    ``on_dead(reason)`` runs once, from the watchdog's thread.
    """

    def __init__(self, processes: list, stall_timeout_s: float, on_dead: Callable[[str], None] = leave, poll_s: float = 1.0,
                 grace_s: float = 5.0):  # fmt: skip
        self.processes = processes
        self.grace_s = grace_s  # an engine that exits is a death only if this process outlives it by this much
        self.stall_timeout_s = stall_timeout_s
        self.on_dead = on_dead
        self.poll_s = poll_s
        self._busy = 0
        self._last_beat = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="arhn-engine-watchdog", daemon=True)

    @classmethod
    def for_children(cls, stall_timeout_s: float, on_dead: Callable[[str], None] = leave) -> Watchdog:
        """A watchdog over every child process this one has now (call it once the engine is up)."""
        import psutil

        return cls(psutil.Process().children(recursive=True), stall_timeout_s, on_dead)

    def start(self) -> Watchdog:
        import atexit

        # registered after the engine's own exit handlers, so it runs before them: a replica that
        # ends (Ray Data closing its pool at the end of a run) takes its engine with it, no death
        atexit.register(self.stop)
        self._thread.start()
        return self

    def closing(self) -> bool:
        """The replica is ending on purpose: stopped, or its process is past its main thread."""
        import sys

        if self._stop.is_set() or sys.is_finalizing() or not threading.main_thread().is_alive():
            return True
        try:  # Ray asked this actor to exit (its pool is shutting down)
            import ray

            return bool(ray._private.worker.global_worker.core_worker.get_current_actor_should_exit())
        except Exception:
            return False

    def stop(self) -> None:
        self._stop.set()

    def beat(self) -> None:
        self._last_beat = time.monotonic()

    @contextmanager
    def busy(self) -> Iterator[None]:
        """A call in flight: from here on, no progress for ``stall_timeout_s`` means the engine is gone."""
        if not self._busy:
            self.beat()
        self._busy += 1
        try:
            yield
        finally:
            self._busy -= 1

    def check(self) -> str | None:
        """Why the engine is dead, or None while it lives."""
        import psutil

        for proc in self.processes:
            try:
                alive = proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
            except psutil.Error:
                alive = False
            if not alive:
                return f"engine process {proc.pid} exited"
        idle = time.monotonic() - self._last_beat
        if self._busy and self.stall_timeout_s and idle > self.stall_timeout_s:
            return f"no progress for {idle:.0f} s (engine.stall_timeout_s={self.stall_timeout_s:g})"
        return None

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            reason = self.check()
            if not reason:
                continue
            # Ray ends a replica's engine while it takes the replica down (the pool closing at the end
            # of a run): a replica that is gone within grace_s ended on purpose and says nothing
            deadline = time.monotonic() + (self.grace_s if reason.startswith("engine process") else 0.0)
            while not self.closing() and time.monotonic() < deadline:
                time.sleep(0.1)
            if self.closing():
                log.info("engine ended with the replica (%s)", reason)
                return
            self.on_dead(reason)
            return
