"""A line on the terminal at least every ``every_s`` while evaluate works: training and encoding
run in Ray workers whose own output goes to the log, and minutes without a word look frozen."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


class Heartbeat:
    """What evaluate is doing now (``phase``), said again every ``every_s`` when nothing else was.

    Example:
        >>> with Heartbeat(every_s=15).running() as beat:
        ...     beat.phase("training 3 runs")
    """

    def __init__(self, every_s: float = 15.0):
        self.every_s = every_s
        self.started = self.since = time.monotonic()
        self.now = "starting"
        self._stop = threading.Event()

    def phase(self, what: str) -> None:
        self.now, self.since = what, time.monotonic()

    @contextmanager
    def running(self) -> Iterator[Heartbeat]:
        thread = threading.Thread(target=self._beat, name="arhn-evaluate-heartbeat", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(timeout=2)

    def _beat(self) -> None:
        while not self._stop.wait(self.every_s):
            now = time.monotonic()
            log.info("evaluate: %s (%.0f s so far, %.0f s in all)", self.now, now - self.since, now - self.started,
                     extra={"notice": True})  # fmt: skip
