"""The dashboard over HTTP, against a real ``enginectl serve --dashboard``: the token,
CSRF, the controls' unlock, contained output tails, the event stream, and the command's
errors."""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ENGINECTL, REPO, enginectl
from tests.dashboard.conftest import Dashboard

STATIC = REPO / "engine" / "dashboard" / "static"
SPEC = """\
description: {name: tailtest, description: outputs to tail}
batch: {type: local}
study:
  - name: speak
    description: writes both streams
    run: {cmd: "echo hello-out; echo hello-err >&2"}
  - name: hold
    description: runs until cancelled
    run: {cmd: "sleep 300"}
"""


def authed(dash: Dashboard) -> httpx.Client:
    """A client that opened the token link (so it holds both cookies) and knows the CSRF
    value of its session."""
    client = httpx.Client(base_url=dash.base, timeout=30)
    first = client.get(f"/?token={dash.token}", follow_redirects=False)
    assert 303 == first.status_code
    client.headers["X-Troupe-Token"] = client.get("/api/session").json()["csrf"]
    return client


def submit(engine: Any, tmp_path: Path, text: str = SPEC) -> tuple[str, Path]:
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    out = tmp_path / "study"
    done = engine.ctl("submit", str(spec), "-o", str(out))
    assert 0 == done.returncode, done.stderr
    return done.stdout.strip(), out


def wait_state(client: httpx.Client, study: str, step: str, state: str,
               timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        got = client.get("/api/instance", params={"study": study, "name": step})
        if got.status_code == 200 and got.json()["state"] == state:
            return got.json()
        assert time.monotonic() < deadline, f"{step} never {state}: {got.text}"
        time.sleep(0.1)


def test_every_endpoint_answers_401_without_the_token(served: Any, tmp_path: Path) -> None:
    engine, dash = served
    study, _ = submit(engine, tmp_path)
    anon = httpx.Client(base_url=dash.base, timeout=30)
    for path in ["/api/session", "/api/studies", f"/api/study?study={study}", "/api/stream",
                 f"/api/stream?study={study}", f"/api/timeline?study={study}",
                 f"/api/instance?study={study}&name=speak", "/static/app.js",
                 f"/api/output?study={study}&name=speak&file=x.out"]:
        assert 401 == anon.get(path).status_code, path
    for path in ["/api/cancel", "/api/restart", "/api/unlock"]:
        assert 401 == anon.post(path, json={"study": study}).status_code, path
    page = anon.get("/")
    assert 401 == page.status_code
    assert "tailtest" not in page.text and study not in page.text
    wrong = anon.get("/?token=" + "0" * len(dash.token), follow_redirects=False)
    assert 401 == wrong.status_code and "set-cookie" not in wrong.headers
    anon.cookies.set("troupe_token", "nope")
    assert 401 == anon.get("/api/studies").status_code


def test_the_token_link_sets_strict_httponly_cookies_and_leaves_the_address(served: Any) -> None:
    _, dash = served
    anon = httpx.Client(base_url=dash.base, timeout=30)
    first = anon.get(f"/?token={dash.token}", follow_redirects=False)
    assert (303, "/") == (first.status_code, first.headers["location"])
    cookies = first.headers.get_list("set-cookie")
    assert 2 == len(cookies)
    assert all("HttpOnly" in c and "SameSite=strict" in c for c in cookies)
    assert 200 == anon.get("/api/studies").status_code  # the cookie now does it
    page = anon.get("/")
    assert 200 == page.status_code and "app.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]


def test_the_output_tail_never_reads_outside_the_study(served: Any, tmp_path: Path) -> None:
    engine, dash = served
    client = authed(dash)
    study, out = submit(engine, tmp_path)
    data = wait_state(client, study, "speak", "FINISHED")
    names = {f["name"] for f in data["files"]}
    err = next(n for n in names if n.endswith(".err"))
    got = client.get("/api/output", params={"study": study, "name": "speak", "file": err})
    assert 200 == got.status_code and "hello-err" == got.json()["text"]
    secret = tmp_path / "secret.out"
    secret.write_text("do not show")
    (out / "speak" / "link.out").symlink_to(secret)  # planted: resolves outside the study
    for bad in ["../../secret.out", str(secret), "../speak/" + err, "link.out", "..", "",
                "speak.sh", "x/../" + err]:
        got = client.get("/api/output", params={"study": study, "name": "speak", "file": bad})
        assert 403 == got.status_code, bad
        assert "do not show" not in got.text
    got = client.get("/api/output", params={"study": study, "name": "speak", "file": "none.out"})
    assert 404 == got.status_code
    client.post("/api/unlock", json={"password": dash.client_password()})
    client.post("/api/cancel", json={"study": study})


def test_controls_refuse_without_the_unlock_and_the_csrf_header(served: Any,
                                                                 tmp_path: Path) -> None:
    engine, dash = served
    client = authed(dash)
    study, _ = submit(engine, tmp_path)
    wait_state(client, study, "hold", "RUNNING")
    locked = client.post("/api/cancel", json={"study": study, "step": "hold"})
    assert 403 == locked.status_code and "locked" in locked.json()["error"]
    assert False is client.get("/api/session").json()["unlocked"]
    wrong = client.post("/api/unlock", json={"password": "not-it"})
    assert 403 == wrong.status_code
    csrf = client.headers.pop("X-Troupe-Token")
    no_header = client.post("/api/unlock", json={"password": dash.client_password()})
    assert 403 == no_header.status_code and "X-Troupe-Token" in no_header.json()["error"]
    client.headers["X-Troupe-Token"] = "0" * 64
    assert 403 == client.post("/api/unlock", json={"password": dash.client_password()}).status_code
    client.headers["X-Troupe-Token"] = csrf
    other = client.post("/api/unlock", json={"password": dash.client_password()},
                        headers={"Origin": "http://evil.example"})
    assert 403 == other.status_code
    assert 405 == client.get("/api/cancel", params={"study": study}).status_code
    assert "RUNNING" == wait_state(client, study, "hold", "RUNNING")["state"]
    # Unlocked, the same request cancels the step, through the engine's API.
    assert 200 == client.post("/api/unlock", json={"password": dash.client_password()}).status_code
    assert True is client.get("/api/session").json()["unlocked"]
    done = client.post("/api/cancel", json={"study": study, "step": "hold"})
    assert 200 == done.status_code, done.text
    wait_state(client, study, "hold", "CANCELLED")
    assert "CANCELLED" == engine.status(study)["steps"][1]["state"]
    # Another browser session with the token is still locked.
    assert 403 == authed(dash).post("/api/restart", json={"study": study}).status_code


def test_the_stream_starts_with_a_snapshot_of_the_steps(served: Any, tmp_path: Path) -> None:
    engine, dash = served
    client = authed(dash)
    study, _ = submit(engine, tmp_path)
    with client.stream("GET", "/api/stream", params={"study": study}) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        assert "event: snapshot" == next(lines)
        snap = json.loads(next(lines).removeprefix("data: "))
    assert ["speak", "hold"] == [n["name"] for n in snap["nodes"]]
    assert study == snap["study"]["study_id"]
    assert 404 == client.get("/api/stream", params={"study": "no-such"}).status_code
    client.post("/api/unlock", json={"password": dash.client_password()})
    client.post("/api/cancel", json={"study": study})


def test_the_page_scripts_never_write_html() -> None:
    """Data reaches the page as text only: no innerHTML, outerHTML, insertAdjacentHTML,
    document.write or eval in the page's scripts."""
    for path in STATIC.glob("*.js"):
        found = re.findall(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(",
                           path.read_text())
        assert [] == found, path.name


def test_a_busy_port_is_one_error_line(engine: Any) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        done = engine.ctl("dashboard", "--port", port, timeout=60)
        assert 1 == done.returncode
        assert re.fullmatch(r"error: the dashboard's port \d+ on 127\.0\.0\.1 is in use; "
                            r"choose another with --port\n", done.stderr)
        other = enginectl("serve", "--state-dir", str(engine.state.parent / "other"),
                          "--dashboard", port, timeout=60)
        assert 1 == other.returncode and other.stderr.startswith("error: the dashboard's port")
        assert "Traceback" not in other.stderr


def test_without_an_engine_the_dashboard_says_so(tmp_path: Path) -> None:
    done = enginectl("dashboard", "--state-dir", str(tmp_path / "none"), "--port", "0",
                     timeout=60)
    assert 1 == done.returncode
    assert done.stderr.startswith("error: no engine found") and 1 == len(done.stderr.splitlines())


def test_the_wheel_carries_the_page(tmp_path: Path) -> None:
    """The page's files are package data: a wheel built from the tree holds them (built
    from a copy, as docker/build.sh does, so that no build/ is left in the clone)."""
    import shutil
    import subprocess
    import zipfile

    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "*.egg-info", "__pycache__", "studies", "tests", "bench"))
    built = subprocess.run([*ENGINECTL[:1], "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                            str(tmp_path / "wheels"), str(src)], capture_output=True, text=True,
                           timeout=600, check=False)
    assert 0 == built.returncode, built.stderr[-2000:]
    wheel = next((tmp_path / "wheels").glob("troupe-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for page in STATIC.iterdir():
        assert f"engine/dashboard/static/{page.name}" in names


WORKERS_SPEC = """\
description: {name: onworkers, description: steps on two workers}
troupe: {executor: workers}
study:
""" + "".join(f"  - name: s{i}\n    description: one task\n    run: {{cmd: 'sleep 0.3'}}\n"
              for i in range(6))


def test_the_timeline_gives_each_worker_rows_of_its_own(served: Any, tmp_path: Path) -> None:
    from tests.workerpool import Workers

    engine, dash = served
    pool = Workers("", tmp_path / "workers")
    try:
        for name in ("alpha", "beta"):
            pool.start(name, "default", where=("--state-dir", str(engine.state)))
        spec = tmp_path / "w.yaml"
        spec.write_text(WORKERS_SPEC)
        done = engine.ctl("submit", str(spec), "-o", str(tmp_path / "w"), "--wait")
        assert 0 == done.returncode, done.stderr
    finally:
        pool.stop()
    client = authed(dash)
    study = next(s["study_id"] for s in client.get("/api/studies").json()["studies"]
                 if s["name"] == "onworkers")
    data = client.get("/api/timeline", params={"study": study}).json()
    assert ["alpha", "beta"] == data["labels"], data["labels"]  # concurrency 1: one row each
    ran = {}
    for bar in data["bars"]:
        ran.setdefault(data["labels"][bar["row"]], []).append(bar["step"])
    assert 6 == sum(map(len, ran.values())) and set(ran) == {"alpha", "beta"}, ran
    # Each bar's row is the worker its claim names.
    for label, steps in ran.items():
        for step in steps:
            claim = (tmp_path / "w" / step / ".troupe.1.pid").read_text().split()
            assert ["worker", label] == claim[:2], (step, claim)
