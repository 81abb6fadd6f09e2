"""The run's progress line: rows done of the total, rate, time left, and what the labels did so far.

Counts come from the writer as parts flow in; the total comes from parquet metadata and, for
JSONL, from an estimate that each finished part replaces with its real count.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from arhn_ray.data.parts import Part

log = logging.getLogger("arhn_ray.progress")


class Progress:
    def __init__(self, todo: list[Part], done: list[dict], every_s: float = 10.0, replicas: int = 1, batch_size: int = 16):
        self.before = sum(m["rows"] for m in done)
        self.parts_before = len(done)
        self.sizes = {p.key: p.rows if p.rows is not None else p.estimated_rows for p in todo}
        self.exact = {p.key for p in todo if p.rows is not None}
        self.files = len({p.uri for p in todo})
        self.every_s = every_s
        self.replicas, self.batch_size = max(1, replicas), max(1, batch_size)
        self.started = time.monotonic()
        self.last = self.started
        self.lock = threading.Lock()  # the writer's thread and the heartbeat's
        self.waiting: str | None = None  # what a retry waits for (a lost node's replicas), said on the line
        self.waiting_since = 0.0

    def wait_for(self, what: str | None) -> None:
        """``what`` the run waits for until rows come back (None: nothing): the line says it, not a
        time left frozen on the last pace."""
        self.waiting, self.waiting_since = what, time.monotonic()

    @property
    def total(self) -> int:
        return self.before + sum(self.sizes.values())

    def plan_line(self, unreadable: dict[str, str]) -> str:
        about = "" if len(self.exact) == len(self.sizes) else "~"
        return (
            f"{len(self.sizes)} parts to refine ({about}{sum(self.sizes.values()):,} rows) in {self.files} files; "
            f"{self.parts_before} parts ({self.before:,} rows) already written; {len(unreadable)} unreadable files"
        )

    def announce(self, unreadable: dict[str, str]) -> None:
        log.info("%s", self.plan_line(unreadable))

    def line(self, sink) -> str:
        return self.texts(sink)[0]

    def texts(self, sink) -> tuple[str, str]:
        """The progress line, and its short form for a narrow terminal: the same facts, fewer words,
        in order of importance (segments after '; ' may be dropped from the end to fit)."""
        for manifest in sink.finished:
            key = f"{manifest['shard']}/{manifest['part']}"
            if key not in self.exact:
                self.sizes[key] = manifest["rows"]
                self.exact.add(key)
        done = sink.rows_done
        elapsed = time.monotonic() - self.started
        left = max(0, self.total - self.before - done)
        # the pace ahead while rows are left (it sets the time left); at the end, rows over the wall time
        rate = (
            self._rate(done, elapsed, getattr(sink, "engine_s", 0.0), left) if left else (done / elapsed if elapsed > 0 else 0.0)
        )
        if not left:
            eta = "done"
        elif self.waiting:
            eta = f"{self.waiting}, {_duration(time.monotonic() - self.waiting_since)} so far"
        elif rate > 0:
            eta = f"{_duration(left / rate)} left"
        else:  # engines load and the first batches run: minutes on a CPU before a row comes back
            eta = f"no row back yet, {_duration(elapsed)} in"
        about = "" if len(self.exact) == len(self.sizes) else "~"
        a, rejected = sink.counts, sink.counts["rejected"]
        rows, share = f"{self.before + done:,}", f"{(self.before + done) / max(1, self.total):.0%}"
        parts = f"{self.parts_before + len(sink.finished)}/{self.parts_before + len(self.sizes)}"
        full = (
            f"progress: {rows} / {about}{self.total:,} rows ({share}), {rate:.3g} rows/s, {eta}; parts written {parts}; "
            f"relabeled {a['relabel']:,}, filtered {a['filter']:,}, kept {a['keep']:,}; rejected {rejected:,}"
        )
        short = (
            f"{rows}/{about}{self.total:,} rows {share} rej {rejected:,}; {rate:.3g}/s {eta}; "
            f"relab {a['relabel']:,} filt {a['filter']:,} kept {a['keep']:,}; parts {parts}"
        )
        return full, short

    def _rate(self, done: int, elapsed: float, busy_s: float, left: int) -> float:
        """Rows a second from here on. Once rows are back it is the replicas' own pace (their busy
        seconds a row, ``busy_s`` summed over replicas), as many at once as the rows left fill
        batches: the engines' start is behind the run, so it is not spread over the rows ahead."""
        if done and busy_s > 0:
            working = min(self.replicas, -(-left // self.batch_size)) if left else self.replicas
            return done * max(1, working) / busy_s
        return done / elapsed if elapsed > 0 else 0.0

    def update(self, sink, force: bool = False) -> None:
        with self.lock:
            now = time.monotonic()
            if force or now - self.last >= self.every_s:
                self.last = now
                full, short = self.texts(sink)
                log.info("%s", full, extra={"short": short})

    @contextmanager
    def heartbeat(self, sink, every_s: float = 15.0) -> Iterator[None]:
        """The line again every ``every_s`` while no batch arrives (the engines' start, a long batch):
        a terminal that shows nothing for minutes looks frozen."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(every_s):
                if time.monotonic() - self.last >= every_s:
                    self.update(sink, force=True)

        thread = threading.Thread(target=beat, name="arhn-ray-progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
