"""Fixtures of the dashboard tests: an engine with its dashboard, and a headless Chromium.

The browser is Debian's ``chromium`` driven through Debian's ``/usr/bin/chromedriver``
(Selenium Manager is told to stay offline: nothing is downloaded). A session fixture
installs the two packages when they are missing and the tests run as root; otherwise the
browser tests are skipped with the reason, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests.conftest import ENGINECTL, wait_for_path

CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM = Path("/usr/bin/chromium")


def unavailable(reason: str) -> NoReturn:
    """Skip the test for ``reason``; under ``CI=true``, fail instead: CI must run it."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the browser tests must run)")
    pytest.skip(reason)


class Dashboard:
    """A running dashboard: its base address, its token and the address with the token."""

    def __init__(self, state: Path) -> None:
        info = json.loads((state / "dashboard.json").read_text())
        self.url: str = info["url"]
        self.token: str = info["token"]
        self.base = self.url.split("/?", 1)[0]
        self.state = state

    def client_password(self) -> str:
        return str(json.loads((self.state / "client.json").read_text())["password"])


def wait_dashboard(state: Path, proc: subprocess.Popen[bytes] | None = None) -> Dashboard:
    """Wait for ``<state>/dashboard.json`` (written once the dashboard listens)."""
    try:
        wait_for_path(state / "dashboard.json", timeout=30)
    except TimeoutError:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the dashboard exited {proc.returncode}") from None
        raise
    return Dashboard(state)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Any, Dashboard]]:
    """An ``enginectl serve --dashboard 0`` (the engine and its dashboard in one process)."""
    from tests.engine_proc import Engine

    eng = Engine(tmp_path / "state", "--drain-timeout", "5", "--dashboard", "0").start()
    try:
        yield eng, wait_dashboard(eng.state)
    finally:
        eng.stop()


@contextmanager
def open_dashboard(engine: Any) -> Iterator[Dashboard]:
    """An ``enginectl dashboard --port 0`` process beside ``engine``, stopped at the end."""
    (engine.state / "dashboard.json").unlink(missing_ok=True)
    log = engine.state.parent / "dashboard.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([*ENGINECTL, "dashboard", "--state-dir", str(engine.state),
                                 "--port", "0"], stdout=out, stderr=out,
                                stdin=subprocess.DEVNULL, env={**os.environ, "TROUPE_DEBUG": "1"})
    try:
        yield wait_dashboard(engine.state, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def standalone(engine: Any) -> Iterator[tuple[Any, Dashboard]]:
    """An ``enginectl dashboard --port 0`` process beside the ``engine`` fixture's serve."""
    with open_dashboard(engine) as dash:
        yield engine, dash


def _apt(*args: str) -> int:
    return subprocess.run(["apt-get", *args], capture_output=True, timeout=900, check=False,
                          env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}).returncode


@pytest.fixture(scope="session")
def chromedriver() -> str:
    """Debian's chromedriver (and chromium), installed with apt-get when missing and root."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        unavailable("selenium is not installed (pip install -e '.[test]' brings it)")
    if not (CHROMEDRIVER.exists() and CHROMIUM.exists()):
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            unavailable("needs Debian's chromium and chromium-driver (apt-get install -y "
                        "chromium chromium-driver, as root)")
        install = ("install", "-y", "-qq", "--no-install-recommends", "chromium", "chromium-driver")
        if _apt(*install) != 0:
            _apt("update", "-qq")
            _apt(*install)
    if not (CHROMEDRIVER.exists() and CHROMIUM.exists()):
        unavailable("apt-get could not install chromium and chromium-driver")
    return str(CHROMEDRIVER)


@pytest.fixture
def browser(chromedriver: str, tmp_path: Path) -> Iterator[Any]:
    """A headless Chromium (1400x900) through Selenium, closed at the end of the test."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager: never download a browser or driver
    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,900", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(chromedriver))
    try:
        yield driver
    finally:
        driver.quit()
