"""Parsers of Slurm's output, on text captured from Slurm 22.05.8 (fixtures/README.md)."""

from __future__ import annotations

import pytest

from adapters.base import JobOutcome
from adapters.slurm_parse import (
    ACTIVE_STATES, SLURM_STATES, SbatchFailure, SlurmParseError, classify_sbatch_error,
    comment_with_key, key_from_comment, parse_exit_code, parse_sacct, parse_sbatch,
    parse_squeue, parse_state,
)  # fmt: skip

from tests.adapters.support import FIXTURES


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_sbatch_parsable_output_is_the_job_id() -> None:
    assert "8" == parse_sbatch(fixture("sbatch_parsable.txt"))


def test_sbatch_parsable_output_with_a_cluster_suffix_gives_the_job_id() -> None:
    assert "8" == parse_sbatch("8;cluster\n")


@pytest.mark.parametrize("text", ["", "Submitted batch job 7\n", "8\n9\n"])
def test_sbatch_output_without_a_single_job_id_is_a_parse_error(text: str) -> None:
    with pytest.raises(SlurmParseError, match=r"^sbatch --parsable printed no (single )?job id: '.*'$"):
        parse_sbatch(text)


def test_squeue_rows_of_ended_jobs_map_to_outcomes() -> None:
    jobs = parse_squeue(fixture("squeue_all_states.txt"))
    assert {
        "3": JobOutcome.TIMEOUT, "4": JobOutcome.COMPLETED, "5": JobOutcome.FAILED,
        "6": JobOutcome.CANCELLED, "7": JobOutcome.FAILED, "8_2": JobOutcome.FAILED,
        "8_0": JobOutcome.COMPLETED, "9": JobOutcome.CANCELLED,
    }.items() <= {k: v.outcome for k, v in jobs.items()}.items()  # fmt: skip


def test_squeue_rows_of_pending_and_running_jobs_are_still_active() -> None:
    jobs = parse_squeue(fixture("squeue_active.txt"))
    assert (None, "PENDING") == (jobs["9"].outcome, jobs["9"].state)
    assert (None, "RUNNING") == (jobs["3"].outcome, jobs["3"].state)


def test_squeue_comment_gives_back_the_key_even_with_spaces_and_pipes() -> None:
    jobs = parse_squeue(fixture("squeue_all_states.txt"))
    assert "s1/timeout step/1" == jobs["3"].key
    assert "s1/fail3/2" == jobs["5"].key
    assert jobs["6"].key is None  # "(null)": no comment


def test_sacct_rows_give_exit_codes_and_signals() -> None:
    jobs = parse_sacct(fixture("sacct_X_P.txt"))
    assert (JobOutcome.FAILED, 3) == (jobs["5"].outcome, jobs["5"].exit_code)
    assert (JobOutcome.FAILED, -9) == (jobs["7"].outcome, jobs["7"].exit_code)
    assert (JobOutcome.FAILED, 5) == (jobs["8_2"].outcome, jobs["8_2"].exit_code)
    assert (JobOutcome.TIMEOUT, 0) == (jobs["3"].outcome, jobs["3"].exit_code)


def test_sacct_cancelled_by_uid_is_cancelled() -> None:
    jobs = parse_sacct(fixture("sacct_X_P.txt"))
    assert ("CANCELLED", JobOutcome.CANCELLED) == (jobs["6"].state, jobs["6"].outcome)
    assert "CANCELLED by 0 0:0" == jobs["6"].detail


def test_sacct_step_rows_are_skipped() -> None:
    assert ["5"] == list(parse_sacct(fixture("sacct_P_steps.txt")))


def test_sacct_rows_of_active_jobs_are_still_active() -> None:
    jobs = parse_sacct(fixture("sacct_X_P_active.txt"))
    assert [None, None] == [jobs["3"].outcome, jobs["9"].outcome]


@pytest.mark.parametrize(("text", "code"), [("3:0", 3), ("0:9", -9), ("0:0", 0), ("0:15", -15),
                                            ("", None)])
def test_exit_code_is_exit_status_or_negative_signal(text: str, code: int | None) -> None:
    assert code == parse_exit_code(text)


def test_malformed_exit_code_is_a_parse_error() -> None:
    with pytest.raises(SlurmParseError, match=r"^ExitCode is not exit:signal: '3'$"):
        parse_exit_code("3")


@pytest.mark.parametrize(("state", "outcome"), [
    ("PENDING", None), ("RUNNING", None), ("COMPLETING", None), ("PD", None), ("CG", None),
    ("COMPLETED", JobOutcome.COMPLETED), ("CD", JobOutcome.COMPLETED),
    ("FAILED", JobOutcome.FAILED), ("TIMEOUT", JobOutcome.TIMEOUT), ("TO", JobOutcome.TIMEOUT),
    ("CANCELLED", JobOutcome.CANCELLED), ("CANCELLED by 1000", JobOutcome.CANCELLED),
    ("NODE_FAIL", JobOutcome.NODE_FAIL), ("NF", JobOutcome.NODE_FAIL),
    ("PREEMPTED", JobOutcome.PREEMPTED), ("OUT_OF_MEMORY", JobOutcome.OUT_OF_MEMORY),
    ("OOM", JobOutcome.OUT_OF_MEMORY),
])  # fmt: skip
def test_state_map(state: str, outcome: JobOutcome | None) -> None:
    assert outcome == parse_state(state)[1]


def test_unknown_state_is_a_parse_error() -> None:
    with pytest.raises(SlurmParseError, match=r"^unknown Slurm state: 'EXPLODED'$"):
        parse_state("EXPLODED")


def test_no_state_is_both_active_and_terminal() -> None:
    assert not ACTIVE_STATES & set(SLURM_STATES)


@pytest.mark.parametrize(("name", "failure"), [
    ("sbatch_invalid_partition.txt", SbatchFailure.PERMANENT),
    ("sbatch_invalid_time.txt", SbatchFailure.PERMANENT),
    ("sbatch_assoc_limit.txt", SbatchFailure.BACKPRESSURE),
    ("sbatch_qos_limit.txt", SbatchFailure.BACKPRESSURE),
    ("sbatch_socket_timeout.txt", SbatchFailure.TRANSIENT),
    ("sbatch_no_controller.txt", SbatchFailure.TRANSIENT),
])  # fmt: skip
def test_sbatch_errors_are_classified(name: str, failure: SbatchFailure) -> None:
    assert failure == classify_sbatch_error(fixture(name))


def test_invalid_account_is_permanent_and_an_unknown_message_is_unknown() -> None:
    assert SbatchFailure.PERMANENT == classify_sbatch_error(
        "sbatch: error: Batch job submission failed: Invalid account or account/partition "
        "combination specified")
    assert SbatchFailure.UNKNOWN == classify_sbatch_error("sbatch: error: something new")


def test_key_survives_the_comment_round_trip() -> None:
    key = "study-20260101-000000-ab12/hello world_P.a|b \"q\"/3"
    comment = comment_with_key(key, "Say hello\nto someone!")
    assert " " not in comment.split(" ", 1)[0]
    assert comment.endswith(" Say hello to someone!")
    assert key == key_from_comment(comment)


def test_comment_without_a_key_gives_none() -> None:
    assert key_from_comment("Say hello to someone!") is None
