"""The main command at a real terminal (a pseudo-terminal of 80 columns, not a pipe): it ends with
its summary and exit code 0, shows no traceback, and its progress line keeps rows, percent and
rejected however narrow the screen. The replay engine stands in for the LLM here; the README's
main command with the real engine runs at a terminal too (tests/test_local_run.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from helpers import run_in_terminal, terminal_lines

pytestmark = pytest.mark.ray

PROGRESS = re.compile(r"^(progress: )?[\d,]+ ?/ ?~?[\d,]+ rows \(?\d+%")


def check_screen(code: int, screen: str, rows: int, columns: int = 80) -> list[str]:
    """What a person must see at the end of a run, whatever the engine; returns the screen's lines."""
    assert code == 0, screen[-3000:]
    assert "Traceback" not in screen and "I/O operation on closed file" not in screen, screen[-3000:]
    lines = terminal_lines(screen)
    progress = [line for line in lines if PROGRESS.match(line)]
    assert progress, screen
    final = progress[-1]
    assert final.startswith(f"{rows}/{rows} rows 100% rej ") or final.startswith(f"progress: {rows} / {rows} rows (100%)"), final
    rewrites = [part for line in re.sub(r"\x1b\[K", "", screen).split("\n") for part in line.split("\r")[1:]]
    assert rewrites and all(len(part) < columns for part in rewrites), [
        p for p in rewrites if len(p) >= columns
    ]  # a wrapped one can't be rewritten
    assert lines.index(final) < next(
        i for i, line in enumerate(lines) if line.startswith("arhn-ray: wrote")
    )  # a long path goes on the next line
    assert any(line.startswith("  rows in ") for line in lines) and any(line.startswith("  dataset card") for line in lines)
    return lines


def test_the_main_command_ends_with_its_summary_at_an_80_column_terminal(tmp_path):
    from test_pipeline import dataset

    data, recordings, _ = dataset(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [sys.executable, "-m", "arhn_ray", "refine", "conf/replay.yaml", f"input.path={data}", f"engine.replay_path={recordings}", "method.negatives_per_query=null",
           f"output.path={tmp_path / 'out'}"]  # fmt: skip
    code, screen = run_in_terminal(cmd, env, columns=80)
    lines = check_screen(code, screen, rows=4)
    final = [line for line in lines if PROGRESS.match(line)][-1]
    assert final.startswith("4/4 rows 100% rej 1; ") and "relab 3 filt 2 kept 12" in final, final


OTHER_RAY = """
import sys
import ray
ray.init(address="local", num_cpus=1, include_dashboard=False)
print(ray.get_runtime_context().gcs_address, flush=True)
for _ in sys.stdin:  # a probe: is this Ray still whole? one task, the nodes it has
    print(ray.get(ray.remote(lambda: "ran").remote()), len(ray.nodes()), flush=True)
ray.shutdown()
"""


def test_refine_and_relabel_with_another_local_ray_on_the_machine_start_their_own_and_stay_quiet(tmp_path):
    """Issue 28: a notebook's Ray runs on the machine. refine and relabel start a Ray of their own
    (``ray.init()`` would join the other one, and Ray Train's cleaner once killed an evaluate arm
    that way), leave the other one up, and show at an 80-column terminal only their own lines."""
    import subprocess
    import sys

    from test_pipeline import dataset

    other = subprocess.Popen([sys.executable, "-c", OTHER_RAY], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        other_gcs = other.stdout.readline().strip()
        assert other_gcs, "the other Ray did not start"
        data, recordings, _ = dataset(tmp_path)
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        out, again = tmp_path / "out", tmp_path / "filter"
        code, screen = run_in_terminal([sys.executable, "-m", "arhn_ray", "refine", "conf/replay.yaml", f"input.path={data}",
                                        f"engine.replay_path={recordings}", f"output.path={out}"], env)  # fmt: skip
        check_screen(code, screen, rows=4)
        code, screen = run_in_terminal(
            [sys.executable, "-m", "arhn_ray", "relabel", str(out), "--variant", "filter", "--out", str(again)], env
        )
        lines = [line for line in terminal_lines(screen) if line.strip()]
        assert code == 0 and (again / "stats.json").exists(), screen[-3000:]
        ours = re.compile(r"^(arhn-ray: |  \S|\s{16}\S|progress: |[\d,]+ ?/ ?~?[\d,]+ rows)")
        assert all(ours.match(line) for line in lines), [line for line in lines if not ours.match(line)]
        assert lines[0].startswith("arhn-ray: relabeling") and any(line.startswith("  negatives ") for line in lines), lines
        for log in [*(out / "logs").glob("refine-*.log"), *(again / "logs").glob("relabel-*.log")]:
            text = log.read_text(errors="replace")
            assert "Started a local Ray instance" in text and other_gcs not in text and "multiple active Ray" not in text, log
        other.stdin.write("probe\n")
        other.stdin.flush()
        assert other.stdout.readline().split() == ["ran", "1"], "the other process's Ray is not whole"
    finally:
        other.stdin.close()  # it shuts its Ray down and exits
        try:
            other.wait(60)
        except subprocess.TimeoutExpired:
            other.kill()


def test_the_tools_screens_fit_80_columns(tmp_path):
    """Issue 36: plan's lines ran to 192 characters and the markdown tables of stats and agreement to
    182. At an 80-column terminal every line fits (a wide table turns into a block a row); piped,
    the text is unchanged, and the files keep their full width."""
    from helpers import RLHN_STAGE1, RLHN_STAGE2, ROOT

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = tmp_path / "demo"
    py = [sys.executable, "-m", "arhn_ray"]
    code, screen = run_in_terminal([*py, "refine", "conf/demo.yaml", f"output.path={out}"], env)
    words = " ".join(" ".join(check_screen(code, screen, rows=25)).split())
    # one throughput, in the same words on the screen and in the card
    (figure,) = re.findall(r"\*\*Throughput:\*\* ([0-9.]+ queries/s over [0-9.]+ s wall time)", (out / "README.md").read_text())
    assert f"throughput {figure}" in words, (figure, words)
    commands = {
        "stats": [*py, "stats", str(out)],
        "agreement": [*py, "agreement", str(out), "--reference", str(RLHN_STAGE1), "--stage2-reference", str(RLHN_STAGE2)],
        "plan": [
            *py,
            "plan",
            str(ROOT / "conf" / "qwen3-32b-a100x16.yaml"),
            f"input.path={ROOT / 'arhn_ray' / 'samples'}",
            f"output.path={tmp_path / 'plan'}",
        ],  # fmt: skip
        # what the README's demo path runs after refine: export's and relabel's lines ran to 116 columns
        "export": [*py, "export", str(out), "--format", "sentence-transformers", "--out", str(tmp_path / "demo-train.parquet")],
        "relabel": [*py, "relabel", str(out), "--variant", "relabel", "--out", str(tmp_path / "demo-relabel")],
        "review": [*py, "review", str(out)],
    }
    for name, cmd in commands.items():
        code, screen = run_in_terminal(cmd, env, columns=80)
        lines = terminal_lines(screen)
        assert code == 0, (name, screen[-2000:])
        assert "Traceback" not in screen
        # a path is not cut: a line may overflow only by the path it ends with
        wide = [
            line for line in lines if len(line) > 80 and not ("/" in line.split()[-1] and len(line) - len(line.split()[-1]) <= 80)
        ]
        assert not wide, (name, wide)
        assert len([line for line in lines if line.strip()]) > (1 if name in ("export", "review") else 5), (name, screen)
    piped = subprocess.run(commands["stats"], capture_output=True, text=True, env=env, timeout=120)
    assert piped.stdout.startswith((out / "report.md").read_text().splitlines()[0])
    assert max(map(len, (out / "report.md").read_text().splitlines())) > 80  # the file keeps its wide tables


def test_warnings_and_notices_wrap_at_the_terminal_and_stay_one_line_in_a_log():
    """Issue 36: evaluate's notices ran to 146 columns. On a terminal they wrap at its width (words
    and paths whole, the rest indented); piped to a log they stay one line a message."""
    import fcntl
    import io
    import logging
    import pty
    import struct
    import termios

    from arhn_ray.cli.console import ProgressHandler

    long = ("evaluate: the topk_percpos arm: 50 training examples (25 queries x 2 epochs; 0 queries gave none: "
            "no positive or no negative left) in /tmp/a/very/long/path/that/stays/whole/evaluate/examples/topk_percpos")  # fmt: skip
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    with os.fdopen(slave, "w") as tty:
        handler = ProgressHandler(tty)
        for level, extra in ((logging.INFO, {"notice": True}), (logging.WARNING, {})):
            handler.emit(logging.makeLogRecord({"name": "arhn_ray.evaluate.run", "levelno": level, "levelname": logging.getLevelName(level),
                                                "msg": long, **extra}))  # fmt: skip
    import select

    chunks = []
    while select.select([master], [], [], 1.0)[0]:  # a pty hands its output over in pieces
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the other end is closed and read
            break
        if not chunk:
            break
        chunks.append(chunk)
    screen = b"".join(chunks).decode()
    os.close(master)
    lines = [line for line in screen.replace("\r", "").split("\n") if line]
    assert len(lines) >= 6 and all(len(line) <= 79 for line in lines), lines
    assert all(line.startswith(("arhn-ray: ", "  ")) for line in lines), lines
    assert " ".join(" ".join(lines).split()).count(" ".join(long.split())) == 2  # every word, in order, twice
    piped = io.StringIO()
    ProgressHandler(piped).emit(
        logging.makeLogRecord({"name": "x", "levelno": logging.WARNING, "levelname": "WARNING", "msg": long})
    )
    assert piped.getvalue() == f"arhn-ray: warning: {long}\n"
