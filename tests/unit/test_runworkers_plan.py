"""``plan_workers``: the workers a Merlin spec's ``merlin.resources.workers`` asks for, with
its variables resolved as Merlin resolves them, and names that cannot escape the log
directory; ``--executor`` replacing the spec's ``troupe.executor``."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from engine.errors import ConfigError, SpecError
from engine.runworkers import plan_workers
from engine.spec import load_study

SPEC = """
description: {{name: vars, description: worker names from variables}}
env:
  variables: {{WORKER_NAME: sim_worker, QUEUE: sims, N: 4}}
study:
  - name: simulate
    description: d
    run: {{cmd: 'true', task_queue: $(QUEUE)}}
  - name: other
    description: d
    run: {{cmd: 'true'}}
merlin:
  resources:
    workers:
      {name}: {{args: --concurrency $(N), steps: [simulate]}}
"""


def _spec(tmp_path: Path, name: str) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC.format(name=name))
    return str(path)


def test_worker_names_args_and_queues_resolve_the_spec_variables(tmp_path: Path) -> None:
    [plan] = plan_workers(_spec(tmp_path, "$(WORKER_NAME)"))
    assert ("sim_worker", ["sims"], 4) == (plan.name, plan.queues, plan.concurrency)


@pytest.mark.parametrize("name", ["'../escape'", "'a/b'", "'.hidden'", "'-flag'", "'x y'",
                                  "'a\\tb'", "'" + "w" * 65 + "'"])
def test_a_worker_name_that_is_not_a_plain_name_is_refused(tmp_path: Path, name: str) -> None:
    spec = _spec(tmp_path, name)
    with pytest.raises((ConfigError, SpecError), match="merlin.resources.workers"):
        plan_workers(spec)


def test_executor_option_replaces_the_spec_setting_and_is_validated(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "w")
    now = dt.datetime.now()
    assert "workers" == load_study(spec, now=now, executor="workers").troupe["executor"]
    assert "executor" not in load_study(spec, now=now).troupe
    with pytest.raises(SpecError, match="troupe.executor"):
        load_study(spec, now=now, executor="../nope")
