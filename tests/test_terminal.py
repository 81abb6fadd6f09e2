"""The main command at a real terminal (a pseudo-terminal of 80 columns, not a pipe): it ends with
its summary and exit code 0, shows no traceback, and its progress line keeps rows, percent and
rejected however narrow the screen. The replay engine stands in for the LLM here; the README's
main command with the real engine runs at a terminal too (tests/test_local_run.py)."""

from __future__ import annotations

import os
import re
import shutil

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
    assert rewrites and all(len(part) < columns for part in rewrites), [p for p in rewrites if len(p) >= columns]  # a wrapped one can't be rewritten
    assert lines.index(final) < next(i for i, line in enumerate(lines) if line.startswith("arhn-ray: wrote "))
    assert any(line.startswith("  rows in ") for line in lines) and any(line.startswith("  dataset card") for line in lines)
    return lines


def test_the_main_command_ends_with_its_summary_at_an_80_column_terminal(tmp_path):
    from test_pipeline import dataset

    data, recordings, _ = dataset(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [shutil.which("arhn-ray"), "refine", "conf/replay.yaml", f"input.path={data}", f"engine.replay_path={recordings}",
           f"output.path={tmp_path / 'out'}"]  # fmt: skip
    code, screen = run_in_terminal(cmd, env, columns=80)
    lines = check_screen(code, screen, rows=4)
    final = [line for line in lines if PROGRESS.match(line)][-1]
    assert final.startswith("4/4 rows 100% rej 1; ") and "relab 3 filt 2 kept 12" in final, final
