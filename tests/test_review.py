"""review.html, as a reviewer uses it: written at the end of a refine run (the replay engine on the
session's Ray), opened from a file:// URL in headless Chromium (Debian's ``chromium``, driven by
Playwright), filtered, judged, its verdicts downloaded and read by ``arhn-ray agreement``."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import blocks, make_row, passage
from test_pipeline import ANCHOR, replay_config, snippet, write_jsonl

from arhn_ray.data.layout import OutputLayout
from arhn_ray.outputs.agreement import agreement
from arhn_ray.outputs.review import choose

HOSTILE = 'Negative passage number 2. <script>window.__pwned = 1</script><img src="x" onerror="window.__pwned = 2">'
CHROMIUM = "/usr/bin/chromium"


def review_input(tmp: Path) -> tuple[Path, Path]:
    """Every decision the page shows: a relabeled, a filtered, a kept (hostile) negative and a
    duplicate of the positive in one query, a query of another subset, one where all are kept."""
    data = tmp / "in"
    data.mkdir()
    a = make_row(3, qid="a")
    a["negative_passages"][2] = passage("n2", HOSTILE)
    a["negative_passages"].append(passage("dup", a["positive_passages"][0]["text"]))
    c = make_row(2, qid="c")
    c["subset"] = "other"
    k = make_row(2, qid="k")
    write_jsonl(data / "part-0.jsonl", [a, k])
    write_jsonl(data / "part-1.jsonl", [c])
    rec = [
        {"query_id": "a", "stage": 1, "chunk": 0, "text": blocks([ANCHOR, snippet(0), snippet(1), None])},
        {"query_id": "a", "stage": 2, "chunk": 0, "text": "[2] > [1] > [3]"},
        {"query_id": "c", "stage": 1, "chunk": 0, "text": blocks([ANCHOR, snippet(0), snippet(1)])},
        {"query_id": "c", "stage": 2, "chunk": 0, "text": "[3] > [2] > [1]"},
        {"query_id": "k", "stage": 1, "chunk": 0, "text": blocks([ANCHOR, None, None])},
    ]
    write_jsonl(tmp / "rec.jsonl", rec)
    return data, tmp / "rec.jsonl"


@pytest.fixture(scope="module")
def reviewed(ray_cluster, tmp_path_factory):
    from arhn_ray.pipeline.job import run

    tmp = tmp_path_factory.mktemp("review")
    data, recordings = review_input(tmp)
    run(replay_config(data, recordings, tmp / "out"))
    return tmp / "out"


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module, started as the machine allows (no sandbox as root,
    no background connections on a closed network)."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: .ci/run installs it (apt-get install chromium)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                                    "--disable-sync", "--no-first-run", "--disable-quic"])  # fmt: skip
        yield b
        b.close()


def artifacts(tmp_path: Path) -> Path:
    """Where screenshots go: ``ARHN_RAY_TEST_ARTIFACTS`` when set (CI keeps it), else the test's folder."""
    path = Path(os.environ.get("ARHN_RAY_TEST_ARTIFACTS") or tmp_path)
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.mark.ray
def test_a_refine_run_writes_the_page_with_every_query_and_the_filtered_passages_from_the_input(reviewed):
    html = (reviewed / "review.html").read_text()
    data = json.loads(html.split('<script id="review-data" type="application/json">', 1)[1].split("</script>", 1)[0])
    by_id = {q["query_id"]: q for q in data["queries"]}
    assert sorted(by_id) == ["a", "c", "k"]
    decisions = {n["docid"]: n for n in by_id["a"]["negatives"]}
    assert {d: n["decision"] for d, n in decisions.items()} == {
        "n0": "relabeled",
        "n1": "filtered",
        "n2": "kept",
        "dup": "duplicate",
    }
    assert decisions["n1"]["text"].startswith(
        "Negative passage number 1."
    )  # filtered: not in the refined row, read from the input
    assert decisions["dup"]["text"] == by_id["a"]["positives"][0]["text"]
    assert [p["docid"] for p in by_id["a"]["positives"]] == ["p0"]  # the relabeled negative shows as a negative
    assert "<script>window.__pwned" not in html  # the embedded JSON cannot close its script element
    assert by_id["c"]["subset"] == "other" and by_id["k"]["stratum"] == "kept"


@pytest.mark.ray
@pytest.mark.browser
def test_the_page_in_a_browser_filters_marks_and_downloads_verdicts_agreement_reads(reviewed, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto((reviewed / "review.html").as_uri())
    assert page.locator("section.query").count() == 3
    assert page.locator("[data-count=relabeled]").inner_text() == "relabeled 3"  # n0 of a, n0 and n1 of c
    assert page.locator("[data-count=duplicate]").inner_text() == "duplicate 1"
    for mark in page.locator("mark").all():  # each snippet marked inside its own passage's text
        assert mark.inner_text() in mark.evaluate("m => m.closest('.passage').querySelector('.text').textContent")
    assert page.locator(".passage[data-decision] mark").count() == 4 and page.locator(".passage.positive mark").count() == 3
    hostile = page.locator(".passage[data-decision=kept]", has_text="window.__pwned").first
    assert "<script>" in hostile.inner_text() and page.evaluate("window.__pwned") is None  # shown as text, never run

    page.select_option("#decision", "filtered")
    assert set(page.locator(".passage[data-decision]").evaluate_all("ps => ps.map(p => p.dataset.decision)")) == {"filtered"}
    page.select_option("#decision", "")
    page.select_option("#subset", "other")
    assert page.locator("section.query").count() == 1

    page.select_option("#subset", "")
    page.locator(".passage[data-key]").nth(0).locator("button", has_text="yes").click()
    page.locator(".passage[data-key]").nth(1).focus()
    page.keyboard.press("n")  # the keyboard marks the focused negative
    page.keyboard.press("j")
    page.keyboard.press("u")  # unsure: not downloaded
    assert page.locator("#judged").inner_text() == "2"
    with page.expect_download() as info:
        page.click("#download")
    verdicts = tmp_path / "verdicts.jsonl"
    info.value.save_as(verdicts)
    lines = [json.loads(line) for line in verdicts.read_text().splitlines()]
    assert sorted((v["docid"], v["label"]) for v in lines) == [("n0", "false_negative"), ("n1", "negative")]
    result = agreement(str(reviewed), str(verdicts))
    assert result["overall"]["n"] == 2 and result["overall"]["kappa"] == 1.0  # the reviewer agrees with both decisions
    page.screenshot(path=str(artifacts(tmp_path) / "review-1280.png"), full_page=False)
    assert not errors, errors

    narrow = browser.new_page(viewport={"width": 390, "height": 800})
    narrow.goto((reviewed / "review.html").as_uri())
    assert narrow.evaluate("document.scrollingElement.scrollWidth <= window.innerWidth")  # no sideways scrolling
    narrow.screenshot(path=str(artifacts(tmp_path) / "review-390.png"))
    narrow.close()
    page.close()


def test_the_sample_is_bounded_and_drawn_from_every_decision_and_subset(tmp_path):
    """``choose`` reads three columns of every part: 3,000 queries in 6 parts give a page of 60,
    each of the six (subset, decision) strata equally, the same for the same seed."""
    out = tmp_path / "out"
    kinds = [("relabel", "ranked_above_positive"), ("filter", "answer_below_positive"), ("keep", "no_answer")]
    for part in range(6):
        rows = []
        for i in range(500):
            action, reason = kinds[i % 3] if i % 10 else kinds[0]  # relabeled queries are the most common
            d = {
                "docid": "n0",
                "action": action,
                "reason": reason,
                "snippet": None,
                "grounding": None,
                "rank": None,
                "score": None,
            }
            rows.append({"query_id": f"{part}-{i}", "subset": "s1" if part % 2 else "s2", "decisions": [d]})
        (out / "refined" / "x").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), out / "refined" / "x" / f"rows-{part:010d}.parquet")
    layout = OutputLayout(str(out))
    chosen = choose(layout, 60, seed=1)
    ids = [q for qs in chosen.values() for q in qs]
    assert len(ids) == len(set(ids)) == 60
    per = {}
    for q in ids:
        part, i = map(int, q.split("-"))
        key = ("s1" if part % 2 else "s2", kinds[i % 3][0] if i % 10 else "relabel")
        per[key] = per.get(key, 0) + 1
    assert sorted(per.values()) == [10] * 6, per
    assert choose(layout, 60, seed=1) == chosen and choose(layout, 60, seed=2) != chosen
    assert sum(map(len, choose(layout, 60, seed=1, subsets=["s1"]).values())) == 60


@pytest.mark.ray
def test_review_reads_the_output_alone_and_an_older_output_still_gets_a_page(reviewed, tmp_path):
    """``arhn-ray review`` on a copy of the output whose input is gone (manifests naming no input, the
    input folder elsewhere): the filtered passages' texts come from the rows' ``removed_passages``.
    On an older output without that column the page still comes, the filtered passages unread."""
    import subprocess

    def page_data(folder: Path) -> list[dict]:
        done = subprocess.run([sys.executable, "-m", "arhn_ray", "review", str(folder), "--sample", "3", "--seed", "3"],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "3 queries" in done.stdout and f"arhn-ray agreement {folder} --reference verdicts.jsonl" in done.stdout
        data = json.loads((folder / "review.html").read_text().split('type="application/json">', 1)[1].split("</script>", 1)[0])
        assert len(data["queries"]) == 3
        return [n for q in data["queries"] for n in q["negatives"] if n["decision"] in ("filtered", "duplicate")]

    copy = tmp_path / "copy"
    shutil.copytree(reviewed, copy)
    for manifest in (copy / "_parts").glob("*/*.json"):
        m = json.loads(manifest.read_text())
        m.pop("input")
        manifest.write_text(json.dumps(m))
    filtered = page_data(copy)
    assert filtered and all(n["text"] for n in filtered)

    for part in (copy / "refined").glob("*/*.parquet"):  # as an output written before removed_passages existed
        table = pq.read_table(part)
        pq.write_table(table.drop_columns(["removed_passages"]), part)
    filtered = page_data(copy)
    assert filtered and all(n["text"] is None for n in filtered)
