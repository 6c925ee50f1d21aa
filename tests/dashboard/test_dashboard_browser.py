"""The dashboard in a real browser (headless Chromium through Selenium) beside a real
``enginectl serve`` and ``enginectl dashboard``: the token, a study followed live to the
colours of ``status.csv``, a step cancelled from the page, hostile names shown as text,
the latency from an event to the page, and a 10,000-instance study's first drawing.

Timings are measured and reported (``TROUPE_DASHBOARD_REPORT=FILE`` appends them as JSON
lines), never asserted beyond sanity. ``TROUPE_DASHBOARD_SHOTS=DIR`` copies the
screenshots there (docs/img/ holds the ones docs/dashboard.md shows).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engine.dagformat import dominant_state
from engine.layout import read_study_graph
from engine.status import read_status
from tests.dashboard.conftest import Dashboard, open_dashboard

pytestmark = pytest.mark.slow

FOLLOWED = """\
description: {name: dashdemo, description: a study to watch}
batch: {type: local}
study:
  - name: prepare
    description: make the inputs
    run: {cmd: "sleep 1; echo prepared"}
  - name: simulate
    description: one run per parameter value
    run: {cmd: "sleep $(DELAY); echo sim $(SEED); echo warning $(SEED) >&2",
          depends: [prepare]}
  - name: collect
    description: gather every simulation
    run: {cmd: "echo collected", depends: [simulate_*]}
  - name: report
    description: only if most simulations finished
    run: {cmd: "echo report", depends: [simulate_*],
          when: "fraction(simulate_*.completed) >= 0.5"}
  - name: hold
    description: runs until someone cancels it
    run: {cmd: "sleep 600"}
  - name: after_hold
    description: cancelled with its parent
    run: {cmd: "echo never", depends: [hold]}
global.parameters:
  SEED: {values: [1, 2, 3, 4, 5, 6], label: "SEED.%%"}
  DELAY: {values: [1, 2, 1, 3, 2, 1], label: "DELAY.%%"}
"""
HOSTILE = """\
description: {name: hostile, description: "names that must stay text"}
batch: {type: local}
study:
  - name: "<img src=x onerror=window.__pwned=1>"
    description: "line one\\n<script>window.__pwned=2<\\\\script>\\nline three"
    run: {cmd: "echo '<b>bold</b>'; echo '</pre><script>window.__pwned=3</script>' >&2"}
  - name: "q\\"uo'te&amp;<i>"
    description: plain
    run: {cmd: "echo hi", depends: ["<img src=x onerror=window.__pwned=1>"]}
"""


def wait_until(what: str, check: Callable[[], Any], timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def submit(engine: Any, tmp_path: Path, text: str, name: str) -> tuple[str, Path]:
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(text)
    out = tmp_path / name
    done = engine.ctl("submit", str(spec), "-o", str(out))
    assert 0 == done.returncode, done.stderr
    return done.stdout.strip(), out


def shot(driver: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    driver.save_screenshot(str(path))
    if os.environ.get("TROUPE_DASHBOARD_SHOTS"):
        shutil.copy(path, Path(os.environ["TROUPE_DASHBOARD_SHOTS"]) / path.name)
    return path


def report(**figures: Any) -> None:
    print(json.dumps(figures))
    if os.environ.get("TROUPE_DASHBOARD_REPORT"):
        with open(os.environ["TROUPE_DASHBOARD_REPORT"], "a") as fh:
            fh.write(json.dumps(figures) + "\n")


def node_states(driver: Any) -> dict[str, str]:
    return driver.execute_script(
        "const o = {}; for (const g of document.querySelectorAll('g.node')) "
        "o[g.dataset.node] = g.dataset.state; return o;")


def expected_states(study_dir: Path) -> dict[str, str]:
    """Each step's colour as status.csv says: its instances' states, folded by the rule
    the page uses (``engine.dagformat.dominant_state``, as ``enginectl graph``)."""
    graph = read_study_graph(study_dir)
    counts: dict[str, dict[str, int]] = {}
    for row in read_status(str(study_dir / "status.csv")):
        step = graph.by_name[row["Step Name"]].step
        counts.setdefault(step, {}).setdefault(row["State"], 0)
        counts[step][row["State"]] += 1
    return {step: dominant_state(c) for step, c in counts.items()}


def text(driver: Any, css: str) -> str:
    """The text of the first element matching ``css``, or "" if there is none yet."""
    return str(driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';", css))


def click(driver: Any, css: str) -> None:
    """Click the first element matching ``css`` (looked up at the moment of the click: the
    page redraws rows and panels as the study goes on)."""
    assert driver.execute_script(
        "const e = document.querySelector(arguments[0]); if (!e) return false; "
        "e.dispatchEvent(new MouseEvent('click', {bubbles: true})); return true;", css), css


def open_study(driver: Any, dash: Dashboard, study: str) -> None:
    driver.get(f"{dash.base}/#/study/{study}")
    wait_until("the DAG", lambda: driver.find_elements("css selector", "g.node"))


def test_the_page_follows_a_study_and_cancels_a_step(standalone: Any, browser: Any,
                                                      tmp_path: Path) -> None:
    engine, dash = standalone
    study, out = submit(engine, tmp_path, FOLLOWED, "dashdemo")
    # Without the token: a form asking for it, nothing of the study.
    browser.get(dash.base + "/")
    assert "token" in browser.page_source
    assert "dashdemo" not in browser.page_source and study not in browser.page_source
    browser.get(f"{dash.base}/api/study?study={study}")
    assert "dashdemo" not in browser.page_source
    # With it: the studies page, live.
    browser.get(dash.url)
    wait_until("the study's row", lambda: "dashdemo" in text(browser, "#studies"))
    time.sleep(1.5)
    shot(browser, tmp_path, "dashboard-studies")
    click(browser, f"tr[data-study='{study}'] a")
    wait_until("the DAG", lambda: len(node_states(browser)) == 6)
    wait_until("simulate running", lambda: node_states(browser)["simulate"] == "RUNNING")
    click(browser, "g.node[data-node='simulate'] rect.box")
    wait_until("the instances", lambda: browser.find_elements("css selector", ".cell"))
    shot(browser, tmp_path, "dashboard-study-running")
    wait_until("collect and report done", lambda: node_states(browser)["collect"] == "FINISHED"
               and node_states(browser)["report"] == "FINISHED")
    assert "RUNNING" == node_states(browser)["hold"]
    # No control without the client password.
    click(browser, "g.node[data-node='hold'] rect.box")
    wait_until("the panel", lambda: browser.find_elements("css selector", "#instance h2"))
    assert not browser.find_elements("css selector", "#cancel-instance, #cancel-study")
    browser.find_element("id", "unlock-password").send_keys(dash.client_password())
    click(browser, "#unlock button")
    wait_until("the cancel button", lambda: browser.find_elements("css selector", "#cancel-instance"))
    assert browser.find_elements("css selector", "#cancel-study")
    click(browser, "#cancel-instance")
    rows = wait_until("hold CANCELLED in status.csv", lambda: {
        r["Step Name"]: r["State"] for r in read_status(str(out / "status.csv"))
        if r["State"] == "CANCELLED"} or None)
    assert {"hold": "CANCELLED", "after_hold": "CANCELLED"} == rows
    wait_until("the study's end", lambda: text(browser, "#study-state") in (
        "CANCELLED", "FAILURE", "FINISHED"))
    expected = expected_states(out)
    wait_until(f"every node as in status.csv: {expected}",
               lambda: node_states(browser) == expected)
    assert "FINISHED" == expected["simulate"] and "CANCELLED" == expected["hold"]
    # The panel shows an instance's attempts and output.
    click(browser, "g.node[data-node='prepare'] rect.box")
    pre = wait_until("prepare's output", lambda: [p for p in browser.find_elements(
        "css selector", "#instance pre") if p.text == "prepared"])
    assert pre
    click(browser, "button[data-tab='timeline']")
    bars = wait_until("the timeline", lambda: browser.find_elements("css selector", "#gantt g[data-step]"))
    assert 10 == len(bars)  # prepare, 6 simulate, collect, report, hold (after_hold never ran)
    shot(browser, tmp_path, "dashboard-timeline")
    logs = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"
            and "401 (Unauthorized)" not in e["message"]]  # (the visits without the token)
    assert [] == logs


def test_hostile_names_stay_text(standalone: Any, browser: Any, tmp_path: Path) -> None:
    engine, dash = standalone
    study, _ = submit(engine, tmp_path, HOSTILE, "hostile")
    browser.get(dash.url)
    open_study(browser, dash, study)
    names = ["<img src=x onerror=window.__pwned=1>", "q\"uo'te&amp;<i>"]
    wait_until("both FINISHED", lambda: set(node_states(browser).values()) == {"FINISHED"})
    assert names == list(node_states(browser))
    click(browser, "g.node rect.box")
    pre = wait_until("the .err tail", lambda: [p for p in browser.find_elements(
        "css selector", "#instance pre") if "script" in p.text])
    assert "</pre><script>window.__pwned=3</script>" == pre[0].text
    assert "<img src=x onerror=window.__pwned=1>" == browser.find_element(
        "css selector", "#instance h2").text
    assert browser.execute_script("return window.__pwned") is None
    assert not browser.find_elements("css selector", "#main img, #main script, #main b, #main i")


def test_latency_from_an_event_to_the_page(standalone: Any, browser: Any,
                                           tmp_path: Path) -> None:
    """A 1,000-step chain (W2's shape at W1's size) followed by an open study page: the
    page records, for every event behind each update, engine time to DOM."""
    engine, dash = standalone
    steps = ["  - name: c0\n    description: gate\n    run: {cmd: \"sleep 4\"}\n"]
    steps += [f"  - name: c{i}\n    description: link\n    run: {{cmd: \"true\", depends: [c{i-1}]}}\n"
              for i in range(1, 1000)]
    spec = ("description: {name: chain1000, description: latency}\n"
            "batch: {type: local, shell: /bin/sh}\nstudy:\n" + "".join(steps))
    study, _ = submit(engine, tmp_path, spec, "chain")
    browser.get(dash.url)
    open_study(browser, dash, study)
    browser.execute_script("window.__troupeLatency.length = 0")
    wait_until("c999 FINISHED", lambda: node_states(browser).get("c999") == "FINISHED",
               timeout=300)
    shot(browser, tmp_path, "dashboard-chain")
    lat = sorted(browser.execute_script("return window.__troupeLatency"))
    assert len(lat) >= 3000, len(lat)  # events after the gate: WAITING, PENDING, RUNNING, FINISHED
    p50, p99 = lat[len(lat) // 2], lat[int(len(lat) * 0.99)]
    assert -1.0 < lat[0] and lat[-1] < 60.0  # sanity only: one clock, same machine
    report(test="latency", events=len(lat), p50_ms=round(p50 * 1000, 1),
           p99_ms=round(p99 * 1000, 1), max_ms=round(lat[-1] * 1000, 1),
           mean_ms=round(statistics.fmean(lat) * 1000, 1))


def test_a_10000_instance_study_draws_its_steps(engine: Any, browser: Any,
                                                tmp_path: Path) -> None:
    """A sweep of 10,000 instances (run --dry: DRYRUN events for all), drawn at step level
    by a dashboard started after it ended (so the server loads it for this page): the time
    from opening the page to its nodes on screen, and a page of instances on demand."""
    values = ", ".join(str(i) for i in range(10_000))
    spec = ("description: {name: wide, description: scale}\nbatch: {type: local}\nstudy:\n"
            "  - name: w\n    description: one of many\n    run: {cmd: \"true $(I)\"}\n"
            "  - name: f\n    description: the funnel\n    run: {cmd: \"true\", depends: [w_*]}\n"
            f"global.parameters:\n  I: {{values: [{values}], label: \"I.%%\"}}\n")
    (tmp_path / "wide.yaml").write_text(spec)
    done = engine.ctl("submit", str(tmp_path / "wide.yaml"), "-o", str(tmp_path / "wide"),
                      "--dry", "--wait", timeout=600)
    assert 0 == done.returncode, done.stderr
    study = done.stdout.strip().splitlines()[0]
    with open_dashboard(engine) as dash:
        browser.get(dash.url)
        wait_until("the studies page", lambda: browser.find_elements("css selector", "tr[data-study]"))
        browser.get("about:blank")
        started = time.monotonic()
        browser.get(f"{dash.base}/#/study/{study}")
        wait_until("both nodes DRYRUN",
                   lambda: node_states(browser) == {"w": "DRYRUN", "f": "DRYRUN"})
        drawn = time.monotonic() - started
        assert "10000/10000" in text(browser, "g.node[data-node='w']")
        click(browser, "g.node[data-node='w'] rect.box")
        cells = wait_until("a page of instances", lambda: browser.find_elements("css selector", ".cell"))
        assert 200 == len(cells)
        shot(browser, tmp_path, "dashboard-wide")
    assert drawn < 60  # sanity only
    report(test="scale", instances=10_000, drawn_s=round(drawn, 3))
