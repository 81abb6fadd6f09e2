"""What a user sees while a run goes: one progress line and the summary. Everything else
(Ray's and vLLM's logs, the C++ core worker's lines, worker output Ray forwards to the driver)
goes to a log file, on the terminal only with ``-v``.

File descriptors 1 and 2 are pointed at the log file, not just ``sys.stdout``: Ray's core
worker writes to fd 2 from C++. The terminal keeps a descriptor of its own for arhn-ray's lines,
so the same holds under ``ray job submit`` (whose driver output is what ``ray job logs`` shows).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TextIO, TypeVar

from arhn_ray.data import layout
from arhn_ray.data.layout import OutputLayout
from arhn_ray.outputs.stats import demo_labels

if TYPE_CHECKING:
    from arhn_ray.plan import RunEstimate

T = TypeVar("T")

PROGRESS_LOGGER = "arhn_ray.progress"
# ``log.info(..., extra={"notice": True})``: a line for the terminal that is no warning


@contextmanager
def quiet(log_path: str) -> Iterator[TextIO]:
    """Send fds 1 and 2 to ``log_path`` while the block runs; yields a stream to the terminal."""
    os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    log = open(log_path, "ab")
    console = os.fdopen(os.dup(saved[1]), "w", buffering=1)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    try:
        yield console
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        log.close()
        console.close()


class ProgressHandler(logging.Handler):
    """The progress line on the terminal: rewritten in place on a TTY, one line every
    ``every_s`` otherwise (a log a person reads later, or ``ray job logs``). Warnings and errors
    are printed as they come."""

    def __init__(self, stream: TextIO, every_s: float = 30.0):
        super().__init__(logging.INFO)
        self.stream = stream
        self.tty = stream.isatty()
        self.every_s = every_s
        self.last = 0.0
        self.open_line = False
        self.printed = ""

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        if record.levelno >= logging.WARNING:
            self._end_line()
            self.stream.write(self._lines(f"arhn-ray: {record.levelname.lower()}: {text}"))
        elif getattr(record, "notice", False):
            self._end_line()
            self.stream.write(self._lines(f"arhn-ray: {text}"))
        elif record.name == PROGRESS_LOGGER and text != self.printed:
            self.printed = text
            now = time.monotonic()
            final = text.startswith("progress:") and "done" in text.split(";")[0]
            if self.tty:
                width = os.get_terminal_size(self.stream.fileno()).columns - 1
                self.stream.write("\r" + fit(text, getattr(record, "short", text), width) + "\x1b[K")
                self.open_line = True
            elif final or now - self.last >= self.every_s:
                self.stream.write(text + "\n")
                self.last = now
        self.stream.flush()

    def _lines(self, text: str) -> str:
        """A terminal's message wrapped to its width (paths and words whole, the rest indented);
        a log keeps one line a message."""
        if not self.tty:
            return text + "\n"
        width = max(40, os.get_terminal_size(self.stream.fileno()).columns - 1)
        return "\n".join(wrapped for line in text.splitlines() for wrapped in wrap_line(line, 2, width)) + "\n"

    def _end_line(self) -> None:
        if self.open_line:
            self.stream.write("\n")
            self.open_line = False

    def close(self) -> None:
        self._end_line()
        super().close()


def fit(text: str, short: str, width: int) -> str:
    """``text`` when it fits in ``width`` columns, else ``short`` less its last '; ' segments until it
    does: a narrow terminal loses whole facts from the end, never the half of a number."""
    if len(text) <= width:
        return text
    segments = short.split("; ")
    while len(segments) > 1 and len("; ".join(segments)) > width:
        segments.pop()
    return "; ".join(segments)[:width]


def quietly(work: Callable[[], T], out: OutputLayout, command: str, banner: str) -> T:
    """``work()`` with Ray's and vLLM's output in ``OUTPUT/logs/<command>-<time>.log`` (copied there at
    the end when the output is remote); the terminal shows the banner, progress and our warnings.
    A Ray this process did not start (a notebook's, a test session's) is left up."""
    import ray

    name = f"{command}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    path = out.file(layout.log_file(name)) if out.local else f"arhn-ray-logs/{name}"
    ours = not ray.is_initialized()
    try:
        with quiet(path) as console:
            console.write(f"arhn-ray: {banner}\n  Ray and vLLM log to {shown(path)}; -v shows them\n")
            handler = ProgressHandler(console)
            handler.addFilter(only_ours)
            logging.getLogger().addHandler(handler)
            try:
                result = work()
                if ours and ray.is_initialized():  # workers' last lines (their shutdown) go to the log, not the terminal
                    ray.shutdown()
                return result
            finally:  # while the terminal stream is open: the handler ends its progress line on it
                logging.getLogger().removeHandler(handler)
                handler.close()
    finally:
        if not out.local:
            try:
                out.put(path, layout.log_file(name))
                os.remove(path)  # the output holds it now; nothing is left in the working directory
            except Exception as e:  # the log stays where it is
                print(f"arhn-ray: log kept at {path} ({type(e).__name__} copying it to {out.path})", file=sys.stderr)


def shown(path: str) -> str:
    """``path`` as the user can type it from here: relative under the working directory (it fits the
    terminal), else as it is."""
    relative = os.path.relpath(path) if os.path.isabs(path) else path
    return path if relative.startswith("..") else relative


def only_ours(record: logging.LogRecord) -> bool:
    """The terminal shows arhn-ray's progress and any warning or error from arhn-ray."""
    return record.name == PROGRESS_LOGGER or (
        record.name.startswith("arhn_ray") and (record.levelno >= logging.WARNING or getattr(record, "notice", False))
    )


def summary(stats: dict, output: str) -> str:
    o = stats["overall"]
    t = stats.get("throughput", {})
    lines = [
        f"arhn-ray: wrote {output}",
        f"  rows in       {o['queries'] + o['rejected']}",
        f"  refined       {o['queries']}",
        f"  rejected      {o['rejected']}" + (f" ({counts(stats['rejected_reasons'])})" if stats["rejected_reasons"] else ""),
        f"  negatives     {o['negatives_in']}: relabeled {o['relabel']}, filtered {o['filter']}, kept {o['keep']}",
        *(
            [f"  not judged    {o['unjudged']} past the first {stats.get('negatives_per_query')} a query (not kept)"]
            if o.get("unjudged")
            else []
        ),
        *([f"  screened      {o['screened']} kept without a Stage 1 call ({stats.get('screen')})"] if o.get("screened") else []),
        *(
            [
                f"  stage 1       {o['stage1_calls']} calls ({o.get('stage1_cut', 0)} cut by max_tokens), "
                f"{o['stage1_prompt_tokens']} prompt + {o['stage1_output_tokens']} output tokens",
                f"  stage 2       {o['stage2_calls']} calls ({o['stage2_skipped']} skipped, {o.get('stage2_cut', 0)} cut by max_tokens), "
                f"{o['stage2_prompt_tokens']} prompt + {o['stage2_output_tokens']} output tokens",
            ]
            if stats.get("method", "arhn") == "arhn"
            else [f"  method        {stats['method']}, teacher {stats.get('model')}"]
        ),
        f"  wall time     {stats.get('this_run', t).get('wall_s', 0):.1f} s"
        + ("" if stats.get("this_run", {}).get("refined", True) else " (every part was already written: nothing refined)"),
        # the card's figure, in the card's words: the output's queries over every run's wall time
        f"  throughput    {t.get('queries_per_s', 0):.3f} queries/s over {t.get('wall_s', 0):.1f} s wall time",
        *(
            [f"  preemptions   {stats['preemptions']} (vLLM recomputed these requests: more in flight than its KV cache held)"]
            if "preemptions" in stats
            else []
        ),
    ]
    if stats.get("unreadable_shards"):
        lines.append(f"  unreadable    {json.dumps(stats['unreadable_shards'])}")
    lines.append(f"  dataset card  {output.rstrip('/')}/README.md")
    if stats.get("review"):
        lines.append(f"  review page   {stats['review']} (open it in a browser)")
    if warning := demo_labels(stats):
        lines.append(f"  NOTE          {warning}")
    return "\n".join(wrapped for line in lines for wrapped in wrap_line(line))


def wrap_line(line: str, indent: int = 16, width: int = 80) -> list[str]:
    """A line as lines of at most ``width`` columns, continued ``indent`` columns in (a summary's:
    under its value); words and paths are never split."""
    return textwrap.wrap(line, width, subsequent_indent=" " * indent, break_long_words=False, break_on_hyphens=False) or [line]


def say(text: str, hang: int = 2, file: TextIO | None = None) -> None:
    """Prints ``text``; on a terminal each line at most 80 columns, continued ``hang`` columns past
    its own indent, a path never split (export's and relabel's lines ran to 116). Piped or in a
    log, a message stays one line, as the notices do.

    Example:
        >>> say("arhn-ray: wrote 25 training rows to out/demo-train.parquet, from 25 of 25 queries")
        arhn-ray: wrote 25 training rows to out/demo-train.parquet, from 25 of 25 queries
    """
    stream = file or sys.stdout
    if not stream.isatty():
        print(text, file=stream)
        return
    for line in text.splitlines() or [""]:
        print("\n".join(wrap_line(line, len(line) - len(line.lstrip()) + hang)), file=stream)


def counts(counter: dict) -> str:
    """``{'no kept negative': 14}`` as a person reads it: ``14 no kept negative``, most first."""
    return ", ".join(f"{n} {reason}" for reason, n in sorted(counter.items(), key=lambda kv: -kv[1]))


def _plan_time(p: RunEstimate) -> list[str]:
    """The LLM's hours and the assumptions they rest on (arhn_ray/gpu_rates.py), a line each."""
    r = p.assumptions["rates"]
    return [
        f"  time              ~{p.hours:.3g} h on {p.gpus} GPUs = ~{p.gpu_hours:.3g} GPU-hours"
        + (f" (the screen's teacher: {p.screen_hours:.2g} h of it)" if p.screen_pairs else ""),
        f"    rates           {p.prefill_tokens_per_gpu_s:,.0f} prompt, {p.decode_tokens_per_gpu_s:,.0f} output tokens/s a GPU "
        f"({r['model']} on {r['gpu']})",
        f"    assumed         {r['fraction_of_peak']:g} of {r['peak_tflops']:g} TFLOP/s peak, {r['fraction_of_bandwidth']:g} of "
        f"{r['hbm_tb_s']:g} TB/s, KV {r['kv_bytes_per_token'] // 1024} KiB a token",
        f"    checked         {p.rates_check}",  # fits 80 columns on two lines
        f"    floor           ~{p.floor_hours:.3g} h: the same tokens at 100% of peak",
        *([f"    screen          {p.screen_pairs:,} pairs scored on the replicas' GPUs "
           f"(assumed {p.assumptions['teacher_pairs_per_gpu_s']:g} pairs/s a GPU)"] if p.screen_pairs else []),
    ]  # fmt: skip


def render_plan(p: RunEstimate) -> str:
    """``arhn-ray plan``'s report: what a run would do and cost, a fact a line."""
    a = p.assumptions
    about = " (scaled from the rows read)" if p.scaled else ""
    return "\n".join(
        [
            f"arhn-ray plan: {p.files} files, {p.parts} parts to refine, {p.rows:,} rows ({p.rows_sampled:,} read{', the rest scaled' if p.scaled else ''})"
            + (f"; {p.parts_written} parts already written" if p.parts_written else ""),
            f"  output            {p.output}",
            f"  rows invalid      {p.rows_invalid:,}{about}",
            f"  negatives         {p.negatives:,}: {p.duplicates_of_positive:,} duplicates of the positive (filtered without a call), "
            f"{p.unjudged:,} past the first {p.negatives_per_query or 'all'} a query (not judged, not kept)"
            + (f", {p.screened:,} screened (no Stage 1 call)" if p.screen_pairs else ""),
            f"  chunks            {p.chunks:,}",
            f"  stage 1 calls     {p.stage1_calls:,}, {p.stage1_prompt_tokens:,} prompt tokens (counted with {p.tokenizer})",
            f"                    ~{p.stage1_output_tokens:,} output tokens (assumed {a['stage1_output_tokens_per_doc']:g} per document)",
            f"  stage 2 calls     at most {p.stage2_calls_at_most:,} (none for a chunk whose negatives are all NO_ANSWER)",
            f"                    at most ~{p.stage2_prompt_tokens_at_most:,} prompt + ~{p.stage2_output_tokens_at_most:,} output tokens "
            f"(assumed {a['stage2_item_tokens']:g} tokens a snippet, {a['stage2_output_tokens_per_item']:g} per ranked item)",
            f"  prefix cache      every Stage 1 prompt shares its first {p.stage1_shared_prefix_tokens:,} tokens, Stage 2 its first "
            f"{p.stage2_shared_prefix_tokens:,}: ~{p.cached_prompt_tokens:,} prompt tokens served from the cache, no prefill "
            f"(whole blocks of {a['prefix_block_tokens']:g}; enable_prefix_caching)",
            *(_plan_time(p) if p.gpus and not p.teachers else []),
            *(["  time              see teachers"] if p.teachers else []),
            *([] if p.gpus else ["  time              no GPU estimate: this config runs on CPU or an external server"]),
            f"  evaluate          ~{p.evaluate_hours:.3g} h to train {p.evaluate_runs} runs (3 arms x seeds), {p.evaluate_arms_at_once} at a time "
            f"(~{p.evaluate_device_hours:.3g} {p.evaluate_device}-hours; assumed "
            f"{a['train_queries_per_' + p.evaluate_device.lower() + '_s']:g} training queries/s a worker; "
            "encoding the evaluation corpus not included)",
            *(
                [
                    f"  evaluate encoding ~{p.evaluate_encode_hours:.3g} h: {p.evaluate_runs + 1} models x {a['eval_passages']:,} passages (the paper's 16 BEIR sets) "
                    f"on {p.evaluate_encoders} GPUs (assumed {a['encode_passages_per_gpu_s']:g} passages/s an A100); FAISS searches them block by block"
                ]
                if p.evaluate_encode_hours
                else []
            ),
            *(
                [
                    f"  teachers          {p.teachers} TopK-PercPos teachers, one GPU each, no LLM call: ~{p.teacher_hours:.3g} h "
                    f"(assumed {a['teacher_pairs_per_gpu_s']:g} scored pairs/s a GPU)"
                ]
                if p.teachers
                else []
            ),
        ]
    )
