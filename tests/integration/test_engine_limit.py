"""``serve --max-running N``: at most N jobs of all the engine's studies run at once,
and ``enginectl throttle --engine N`` changes it live. Real processes, a ledger."""

from __future__ import annotations

from pathlib import Path

from tests.engine_proc import Engine
from tests.ledger import ledger_cmd, max_overlap, read_ledger


def _spec(path: Path, name: str, ledger: Path) -> Path:
    body = ledger_cmd(ledger, "sleep 0.2").replace("\n", "\n        ")
    steps = "".join(
        f"  - name: s{i}\n    description: d\n    run:\n      cmd: |\n        {body}\n"
        for i in range(3))
    path.write_text(f"description: {{name: {name}, description: d}}\nstudy:\n{steps}")
    return path


def test_the_engine_wide_limit_holds_across_studies_and_changes_live(tmp_path: Path) -> None:
    engine = Engine(tmp_path / "state", "--max-running", "1").start()
    try:
        ledger = tmp_path / "ledger"
        ids = []
        for name in ("a", "b"):
            spec = _spec(tmp_path / f"{name}.yaml", name, ledger)
            result = engine.ctl("submit", str(spec), "-o", str(tmp_path / name), "-t", "0")
            assert 0 == result.returncode, result.stderr
            ids.append(result.stdout.strip())
        for study_id in ids:
            assert 0 == engine.ctl("watch", study_id).returncode
        assert 1 == max_overlap(read_ledger(ledger))  # six steps, one at a time
        changed = engine.ctl("throttle", "--engine", "0")
        assert 0 == changed.returncode, changed.stderr
        assert "throttle engine = 0" in changed.stdout
        ledger2 = tmp_path / "ledger2"
        spec = _spec(tmp_path / "c.yaml", "c", ledger2)
        result = engine.ctl("submit", str(spec), "-o", str(tmp_path / "c"), "-t", "0", "--wait")
        assert 0 == result.returncode, result.stderr
        assert max_overlap(read_ledger(ledger2)) > 1  # no engine limit any more
        bad = engine.ctl("throttle", "--engine", "x")
        assert 1 == bad.returncode and "LIMIT 'x'" in bad.stderr
    finally:
        engine.stop()
