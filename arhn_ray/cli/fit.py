"""What the commands print, fit to the terminal they print on (80 columns is the common case)."""

from __future__ import annotations

import sys


def for_terminal(text: str, width: int | None = None) -> str:
    """``text`` as a terminal of ``width`` columns shows it without wrapping mid-cell: a markdown
    table wider than that becomes one block a row (its first cell, then ``header: value`` lines),
    other long lines wrap at spaces under their own indent. The files keep their full width; a
    pipe (not a TTY, no ``width``) gets the text unchanged, for scripts.

    Example:
        >>> print(for_terminal("| set | a | b |\n|---|---:|---:|\n| scifact | 0.71 | 0.69 |", width=12))
        scifact
          a: 0.71
          b: 0.69
    """
    import shutil
    import textwrap

    if width is None:
        if not sys.stdout.isatty():
            return text
        width = shutil.get_terminal_size((80, 24)).columns
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        if lines[i].startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append(lines[i])
                i += 1
            out += block if max(map(len, block)) <= width else _vertical(block, width)
            continue
        line = lines[i]
        indent = " " * (len(line) - len(line.lstrip()))
        out += (
            textwrap.wrap(line, width, subsequent_indent=indent + "  ", break_on_hyphens=False) if len(line) > width else [line]
        )
        i += 1
    return "\n".join(out)


def _vertical(block: list[str], width: int) -> list[str]:
    import textwrap

    cells = [[c.strip() for c in row.strip().strip("|").split("|")] for row in block]
    header, rows = cells[0], [r for r in cells[1:] if not all(set(c) <= set(":-") for c in r)]
    out = []
    for row in rows:
        out += textwrap.wrap(row[0], width) or [""]
        for name, value in zip(header[1:], row[1:]):
            out += textwrap.wrap(f"{name}: {value}", width, initial_indent="  ", subsequent_indent="    ")
    return out
