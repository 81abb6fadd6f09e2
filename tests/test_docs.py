"""The front door and the manual: the README is short and starts with its two commands, its links
and commands point at things that exist, and docs/configuration.md is what the config's own field
docs generate (a stale page fails here)."""

from __future__ import annotations

import re
import shlex

from helpers import ROOT

from arhn_ray.cli.arguments import parser
from arhn_ray.config_docs import render

README = ROOT / "README.md"


def test_configuration_page_is_generated_from_the_config():
    page = (ROOT / "docs" / "configuration.md").read_text()
    assert page == render(), "docs/configuration.md is stale: python -m arhn_ray.config_docs > docs/configuration.md"
    # every leaf key of the config is on the page, with the help written at its field
    assert "| `method.negatives_per_query` | `10` |" in page and "| `screen.top_k` |" in page
    assert "| `input.storage_options` | `{}` | fsspec options" in page


def test_readme_is_a_front_door():
    lines = README.read_text().splitlines()
    assert len(lines) <= 200
    head = "\n".join(lines[:40])
    assert "bash jobs/install-cpu.sh && arhn-ray refine conf/local.yaml" in head
    assert "bash jobs/install-cpu.sh --test && python -m pytest -q" in head
    assert all(len(line) <= 110 for line in lines), [line for line in lines if len(line) > 110]


def test_readme_links_and_paths_exist():
    text = README.read_text()
    links = re.findall(r"\]\(([^)#]+)\)", text)
    assert {"docs/configuration.md", "docs/method.md", "docs/evaluate.md", "docs/cluster.md",
            "docs/reliability.md", "docs/outputs.md"} <= set(links)  # fmt: skip
    for link in links:
        assert (ROOT / link).exists(), link
    for doc in (ROOT / "docs").glob("*.md"):  # the manual's own links, relative to the page
        for link in re.findall(r"\]\(([^)#:]+)\)", doc.read_text()):
            assert (doc.parent / link).exists() or (ROOT / link).exists(), (doc.name, link)
    for path in re.findall(r"\b((?:conf|jobs|arhn_ray)/[\w./-]+\.(?:yaml|py|sh|md))\b", text):
        assert (ROOT / path).exists(), path


def test_every_command_the_readme_shows_parses():
    """Each `arhn-ray ...` line of the README's code blocks is a command the CLI accepts (its
    subcommand and options), so a renamed option cannot leave the front door stale."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    commands = [line.split("#")[0].strip() for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    shown = [c for c in commands if c.startswith("arhn-ray ") and "|" not in c]
    assert len(shown) >= 8
    for command in shown:
        args = shlex.split(command)[1:]
        parser().parse_args(args)  # SystemExit (argparse's error) fails the test, naming the command
