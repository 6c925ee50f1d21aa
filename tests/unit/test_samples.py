"""Merlin's samples, the pure parts: the block, the file formats, the layout, the tokens,
and the book of a sampled step (engine.spec.samples, engine.machines.samples)."""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
import pytest

from engine.errors import SpecError
from engine.machines.samples import (
    CancelSample,
    OpenSample,
    SampleEnded,
    SamplesBegin,
    SamplesFinished,
    SamplesStop,
    decide,
    new_book,
    sample_name,
    split_sample,
)
from engine.messages import JobOutcome, StepState
from engine.spec.expand import load_study
from engine.spec.graph import StepInstance
from engine.spec.samples import SampleLayout, for_sample, read_samples, uses_samples
NOW = datetime.datetime(2026, 12, 7, 1, 2, 3)

SPEC = """
description: {name: s, description: d}
global.parameters:
  GREET: {values: [hello, hola], label: GREET.%%}
study:
  - name: per_sample
    description: d
    run: {cmd: 'echo "$(GREET), $(WORLD)! $(MERLIN_SAMPLE_ID) $(MERLIN_SAMPLE_PATH)"'}
  - name: once
    description: d
    run: {cmd: 'ls $(per_sample.workspace)/$(MERLIN_GLOB_PATH) # $(MERLIN_INFO)', depends: [per_sample_*]}
merlin:
  samples:
    generate: {cmd: 'python3 make.py $(MERLIN_INFO)/samples.csv'}
    file: $(MERLIN_INFO)/samples.csv
    column_labels: [WORLD]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


# ---------------------------------------------------------------- the spec


def test_a_step_that_names_a_label_or_a_sample_keyword_runs_per_sample(tmp_path: Path) -> None:
    graph = load_study(write(tmp_path, SPEC), out_dir=str(tmp_path / "out"), now=NOW)
    sampled = {s.name: s.sampled for s in graph.steps}
    assert {"per_sample_GREET.hello": True, "per_sample_GREET.hola": True,
            "once": False} == sampled
    assert graph.samples is not None
    info = str(tmp_path / "out" / "merlin_info")
    assert f"{info}/samples.csv" == graph.samples.file
    assert f"python3 make.py {info}/samples.csv" == graph.samples.generate
    assert ("WORLD",) == graph.samples.labels
    once = graph.by_name["once"]
    assert f"# {info}" in once.cmd  # MERLIN_INFO at expansion; the glob at submission
    assert "$(MERLIN_GLOB_PATH)" in once.cmd
    assert [] == [w for w in graph.warnings if "WORLD" in w or "MERLIN" in w]


@pytest.mark.parametrize(("cmd", "restart", "expected"), [
    ("echo $(WORLD)", "", True),
    ("echo hi", "echo $(WORLD)", True),  # the restart alone is enough (Merlin)
    ("cd $(MERLIN_SAMPLE_PATH)", "", True),
    ("echo $(MERLIN_SAMPLE_ID)", "", True),
    ("echo $WORLD $(WORLDS) $(MERLIN_GLOB_PATH)", "", False),
])
def test_uses_samples_is_merlins_rule(cmd: str, restart: str, expected: bool) -> None:
    assert expected is uses_samples(cmd, restart, ["WORLD"])


@pytest.mark.parametrize(("samples", "field"), [
    ("{file: x.csv}", "merlin.samples.column_labels"),
    ("{column_labels: [X]}", "merlin.samples.file"),
    ("{file: x.csv, column_labels: [X, X]}", "merlin.samples.column_labels[1]"),
    ("{file: x.csv, column_labels: ['a b']}", "merlin.samples.column_labels[0]"),
    ("{file: x.csv, column_labels: [MERLIN_INFO]}", "merlin.samples.column_labels[0]"),
    ("{file: x.csv, column_labels: [GREET]}", "merlin.samples.column_labels[0]"),
    ("{file: x.csv, column_labels: [X], level_max_dirs: 0}", "merlin.samples.level_max_dirs"),
    ("{file: x.csv, column_labels: [X], bogus: 1}", "merlin.samples.bogus"),
    ("{file: x.csv, column_labels: [X], generate: {cmd: a, b: c}}", "merlin.samples.generate.b"),
])
def test_a_bad_samples_block_names_its_field(tmp_path: Path, samples: str, field: str) -> None:
    text = SPEC.split("merlin:")[0] + f"merlin:\n  samples: {samples}\n"
    with pytest.raises(SpecError) as err:
        load_study(write(tmp_path, text), out_dir=str(tmp_path / "o"), now=NOW)
    assert err.value.field == field


# ---------------------------------------------------------------- files and layout


def test_csv_tab_and_npy_read_as_merlin_reads_them(tmp_path: Path) -> None:
    (tmp_path / "s.csv").write_text("Ann,1.5\nBob,2\n")
    (tmp_path / "s.tab").write_text("Ann 1.5\nBob\t2\n")
    np.save(tmp_path / "s.npy", np.array([[0.1, 2.0], [3.0, 4.5]]))
    for name in ("s.csv", "s.tab"):
        table = read_samples(str(tmp_path / name), ["X", "Y"])
        assert (2, ("Ann", "1.5"), ("Bob", "2")) == (table.n, table.row(0), table.row(1))
    table = read_samples(str(tmp_path / "s.npy"), ["X", "Y"])
    assert [("0.1", "2.0"), ("3.0", "4.5")] == [table.row(0), table.row(1)]


def test_a_samples_file_that_would_unpickle_or_that_merlin_cannot_read_is_refused(
        tmp_path: Path) -> None:
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="cannot read the samples"):
        read_samples(str(tmp_path / "obj.npy"), ["X"])
    np.savez(tmp_path / "s.npz", a=np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"must be one of \.npy, \.csv, \.tab"):
        read_samples(str(tmp_path / "s.npz"), ["X"])
    (tmp_path / "narrow.csv").write_text("1\n2\n")
    with pytest.raises(ValueError, match="1 column"):
        read_samples(str(tmp_path / "narrow.csv"), ["X", "Y"])


@pytest.mark.parametrize(("n", "level", "i", "path", "glob"), [
    (3, 25, 0, "00", "*/"),
    (3, 25, 2, "02", "*/"),
    (100, 25, 0, "00/00", "*/*/"),
    (100, 25, 99, "03/24", "*/*/"),
    (25, 25, 24, "24", "*/"),
    (26, 25, 25, "01/00", "*/*/"),
    (1000, 10, 999, "09/09/09", "*/*/*/"),
    (100_000, 25, 99_999, "06/09/24/24", "*/*/*/*/"),
])
def test_the_sample_hierarchy_is_merlins(n: int, level: int, i: int, path: str,
                                         glob: str) -> None:
    layout = SampleLayout(n, level)
    assert (path, glob) == (layout.path(i), layout.glob)


def test_every_sample_has_its_own_directory() -> None:
    layout = SampleLayout(2000, 25)
    assert 2000 == len({layout.path(i) for i in range(2000)})


def test_a_sample_gets_its_values_id_path_and_directory(tmp_path: Path) -> None:
    (tmp_path / "s.csv").write_text("Ann\nBob\nCid\n")
    table = read_samples(str(tmp_path / "s.csv"), ["WORLD"])
    inst = StepInstance(name="s_GREET.hi", step="s", description="d", workspace="/w/s/GREET.hi",
                        cmd="echo $(WORLD) $(MERLIN_SAMPLE_ID) $(MERLIN_SAMPLE_PATH) "
                            "$(MERLIN_GLOB_PATH) $(WORKSPACE)", restart="echo $(WORLD)",
                        sampled=True)
    one = for_sample(inst, table, SampleLayout(3), 1)
    assert "echo Bob 1 01 */ $(WORKSPACE)" == one.cmd
    assert ("echo Bob", "/w/s/GREET.hi/01", "s_GREET.hi") == (one.restart, one.workspace,
                                                              one.name)


# ---------------------------------------------------------------- the book


def ended(i: int, state: StepState = StepState.FINISHED, soft: bool = False) -> SampleEnded:
    return SampleEnded(index=i, state=state, soft=soft)


def test_sample_names_round_trip() -> None:
    assert ("a_P.1", 7) == split_sample(sample_name("a_P.1", 7))
    assert split_sample("a_P.1") is None


def test_the_book_keeps_a_bounded_window_open_and_ends_when_all_have_ended() -> None:
    book = new_book("s", 5, window=2)
    assert [OpenSample(step="s", index=0), OpenSample(step="s", index=1)] == decide(
        book, SamplesBegin())
    assert [OpenSample(step="s", index=2)] == decide(book, ended(1))
    assert [] == decide(book, ended(1))  # said twice: counted once
    assert [OpenSample(step="s", index=3)] == decide(book, ended(0))
    assert [OpenSample(step="s", index=4)] == decide(book, ended(2, StepState.FAILED))
    decide(book, ended(3))
    cmds = decide(book, ended(4))
    assert [SamplesFinished.match(outcome=JobOutcome.FAILED, exit_code=1)] == cmds
    assert {"FINISHED": 4, "FAILED": 1} == book.counts
    assert [2] == [i for i in range(5) if book.state_of(i) == "FAILED"]


def test_samples_already_finished_are_not_opened_again() -> None:
    book = new_book("s", 4, window=8)
    cmds = decide(book, SamplesBegin(done=(0, 2)))
    assert [OpenSample(step="s", index=1), OpenSample(step="s", index=3)] == cmds
    decide(book, ended(1))
    assert [SamplesFinished.match(outcome=JobOutcome.COMPLETED, exit_code=0)] == decide(
        book, ended(3))


def test_only_soft_fails_make_a_merlin_soft_fail_and_a_hard_one_fails_the_step() -> None:
    soft = new_book("s", 2, window=2, merlin=True)
    decide(soft, SamplesBegin())
    decide(soft, ended(0, StepState.FAILED, soft=True))
    assert [SamplesFinished.match(exit_code=101)] == decide(soft, ended(1))
    hard = new_book("s", 2, window=2, merlin=True)
    decide(hard, SamplesBegin())
    decide(hard, ended(0, StepState.FAILED, soft=True))
    assert [SamplesFinished.match(exit_code=1)] == decide(hard, ended(1, StepState.FAILED))


def test_a_stop_cancels_the_open_samples_and_never_opens_the_rest() -> None:
    book = new_book("s", 100, window=3)
    decide(book, SamplesBegin())
    decide(book, ended(0))
    cmds = decide(book, SamplesStop())
    assert [CancelSample(step="s", index=i) for i in (1, 2, 3)] == cmds
    assert 96 == book.counts["CANCELLED"]
    decide(book, ended(1, StepState.CANCELLED))
    decide(book, ended(2, StepState.CANCELLED))
    assert [SamplesFinished.match(outcome=JobOutcome.CANCELLED)] == decide(
        book, ended(3, StepState.CANCELLED))
    assert {"FINISHED": 1, "CANCELLED": 99} == book.counts


def test_no_samples_end_the_step_at_once() -> None:
    assert [SamplesFinished.match(outcome=JobOutcome.COMPLETED)] == decide(
        new_book("s", 0, window=4), SamplesBegin())
