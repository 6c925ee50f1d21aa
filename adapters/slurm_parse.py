"""Reading Slurm's command output: job ids, states, exit codes, keys and sbatch errors.

Pure functions over text, tested on output captured from Slurm 22.05.8
(tests/adapters/fixtures/). The state map is the one place Slurm's job states become
:class:`~adapters.base.JobOutcome`; ``None`` means the job is still queued or running.
The attempt's idempotency key travels in ``--comment`` as ``troupe-key=<percent-encoded
key>`` followed by Maestro's description, and comes back through ``squeue -o %k`` and
``sacct -o Comment`` (the latter needs ``AccountingStoreFlags=job_comment``).
"""

from __future__ import annotations

import enum
import re
from urllib.parse import quote, unquote

import msgspec

from adapters.base import JobOutcome

__all__ = [
    "ACTIVE_STATES",
    "SACCT_FIELDS",
    "SLURM_STATES",
    "SQUEUE_FORMAT",
    "SbatchFailure",
    "SlurmJob",
    "SlurmParseError",
    "classify_sbatch_error",
    "comment_with_key",
    "key_from_comment",
    "parse_exit_code",
    "parse_sacct",
    "parse_sbatch",
    "parse_squeue",
    "parse_state",
]

#: ``squeue -o`` format: id, long state name, comment (last: it may contain ``|``).
SQUEUE_FORMAT = "%i|%T|%k"
#: ``sacct -o`` fields, parsed with ``-P`` (``|``-separated); the comment comes last.
SACCT_FIELDS = "JobID,State,ExitCode,Comment"

#: Slurm's terminal states and the outcome each maps to.
SLURM_STATES: dict[str, JobOutcome] = {
    "COMPLETED": JobOutcome.COMPLETED,
    "FAILED": JobOutcome.FAILED,
    "TIMEOUT": JobOutcome.TIMEOUT,
    "CANCELLED": JobOutcome.CANCELLED,
    "NODE_FAIL": JobOutcome.NODE_FAIL,
    "PREEMPTED": JobOutcome.PREEMPTED,
    "OUT_OF_MEMORY": JobOutcome.OUT_OF_MEMORY,
    "BOOT_FAIL": JobOutcome.NODE_FAIL,  # the node failed to launch the job
    "DEADLINE": JobOutcome.TIMEOUT,  # ended at its --deadline
    "SPECIAL_EXIT": JobOutcome.FAILED,  # requeued-and-held after a special exit code
    "REVOKED": JobOutcome.CANCELLED,  # federation: a sibling cluster ran it
}

#: States in which the job is still queued, running or about to run again.
ACTIVE_STATES = frozenset({
    "PENDING", "RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "STOPPED",
    "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT",
    "RESV_DEL_HOLD", "POWER_UP_NODE", "UPDATE_DB",
})  # fmt: skip

# squeue's and sacct's short codes (default output) for the same states.
_SHORT = {
    "PD": "PENDING", "R": "RUNNING", "CG": "COMPLETING", "CF": "CONFIGURING",
    "S": "SUSPENDED", "ST": "STOPPED", "RQ": "REQUEUED", "RH": "REQUEUE_HOLD",
    "RF": "REQUEUE_FED", "RS": "RESIZING", "SI": "SIGNALING", "SO": "STAGE_OUT",
    "RD": "RESV_DEL_HOLD", "CD": "COMPLETED", "F": "FAILED", "TO": "TIMEOUT",
    "CA": "CANCELLED", "NF": "NODE_FAIL", "PR": "PREEMPTED", "OOM": "OUT_OF_MEMORY",
    "BF": "BOOT_FAIL", "DL": "DEADLINE", "SE": "SPECIAL_EXIT", "RV": "REVOKED",
}  # fmt: skip

_KEY_PREFIX = "troupe-key="
_JOB_ID = re.compile(r"^[0-9]+(_[0-9]+|_\[[0-9,\-%]+\])?(\+[0-9]+)?$")


class SlurmParseError(ValueError):
    """Raised when Slurm's output does not have the expected shape.

    Attributes:
        text: The text that could not be parsed.
    """

    def __init__(self, message: str, text: str) -> None:
        self.text = text
        super().__init__(f"{message}: {text!r}")


class SlurmJob(msgspec.Struct, frozen=True, kw_only=True):
    """One job as ``squeue`` or ``sacct`` reports it.

    Attributes:
        job_id: The id as printed (``"14"``, ``"14_2"`` for an array task).
        state: The long state name (``"CANCELLED"``; the ``by <uid>`` suffix dropped).
        outcome: The mapped outcome, or None while the job is active.
        exit_code: From sacct's ``ExitCode`` (``3:0`` → 3, ``0:9`` → -9); None if unknown.
        key: The Troupe key found in the comment, if any.
        detail: The state as Slurm printed it, with the exit code when known.
    """

    job_id: str
    state: str
    outcome: JobOutcome | None
    exit_code: int | None = None
    key: str | None = None
    detail: str = ""


def parse_sbatch(stdout: str) -> str:
    """Read the job id from ``sbatch --parsable`` (``8``, or ``8;cluster``).

    Raises:
        SlurmParseError: the output is not a job id.
    """
    lines = [ln.strip() for ln in stdout.splitlines() if ln.strip()]
    if len(lines) != 1:
        raise SlurmParseError("sbatch --parsable printed no single job id", stdout)
    job_id = lines[0].split(";", 1)[0]
    if not job_id.isdigit():
        raise SlurmParseError("sbatch --parsable printed no job id", stdout)
    return job_id


def parse_state(text: str) -> tuple[str, JobOutcome | None]:
    """Map a Slurm state (long name, short code, or sacct's ``CANCELLED by 0``).

    Returns:
        The long state name and its outcome (None while active).

    Raises:
        SlurmParseError: the state is not one Slurm defines.
    """
    words = text.split()
    if not words:
        raise SlurmParseError("empty Slurm state", text)
    name = _SHORT.get(words[0], words[0]).rstrip("+")
    if name in SLURM_STATES:
        return name, SLURM_STATES[name]
    if name in ACTIVE_STATES:
        return name, None
    raise SlurmParseError("unknown Slurm state", text)


def parse_exit_code(text: str) -> int | None:
    """Read sacct's ``ExitCode`` (``exit:signal``): ``3:0`` → 3, ``0:9`` → -9, ``""`` → None.

    Raises:
        SlurmParseError: the text is not ``N:M``.
    """
    text = text.strip()
    if not text:
        return None
    code, sep, sig = text.partition(":")
    if not (sep and code.isdigit() and sig.isdigit()):
        raise SlurmParseError("ExitCode is not exit:signal", text)
    return -int(sig) if int(sig) else int(code)


def parse_squeue(stdout: str) -> dict[str, SlurmJob]:
    """Read ``squeue -h -t all -o '%i|%T|%k'`` output into jobs by id.

    Raises:
        SlurmParseError: a line has the wrong shape or an unknown state.
    """
    jobs: dict[str, SlurmJob] = {}
    for line in stdout.splitlines():
        if not line.strip():
            continue
        parts = line.split("|", 2)
        if len(parts) != 3 or not _JOB_ID.match(parts[0].strip()):
            raise SlurmParseError("squeue line is not id|state|comment", line)
        job_id, raw_state, comment = parts[0].strip(), parts[1].strip(), parts[2]
        state, outcome = parse_state(raw_state)
        jobs[job_id] = SlurmJob(job_id=job_id, state=state, outcome=outcome,
                                exit_code=0 if outcome is JobOutcome.COMPLETED else None,
                                key=key_from_comment(comment), detail=raw_state)  # fmt: skip
    return jobs


def parse_sacct(stdout: str) -> dict[str, SlurmJob]:
    """Read ``sacct -X -P -n -o JobID,State,ExitCode,Comment`` output into jobs by id.

    A requeued job has several rows; the last one wins. Step rows (``9.batch``), which
    appear without ``-X``, are skipped.

    Raises:
        SlurmParseError: a line has the wrong shape, an unknown state or a bad exit code.
    """
    jobs: dict[str, SlurmJob] = {}
    for line in stdout.splitlines():
        if not line.strip():
            continue
        parts = line.split("|", 3)
        if len(parts) < 3:
            raise SlurmParseError("sacct line is not JobID|State|ExitCode|Comment", line)
        job_id = parts[0].strip()
        if "." in job_id:
            continue
        if not _JOB_ID.match(job_id):
            raise SlurmParseError("sacct line has no job id", line)
        state, outcome = parse_state(parts[1])
        code = parse_exit_code(parts[2])
        comment = parts[3] if len(parts) > 3 else ""
        detail = f"{parts[1].strip()} {parts[2].strip()}".strip()
        jobs[job_id] = SlurmJob(job_id=job_id, state=state, outcome=outcome, exit_code=code,
                                key=key_from_comment(comment), detail=detail)  # fmt: skip
    return jobs


def comment_with_key(key: str, description: str) -> str:
    """The ``--comment`` value: the key token, then Maestro's comment (newlines → spaces)."""
    token = _KEY_PREFIX + quote(key, safe="/:@-_.~")
    desc = description.replace("\n", " ").strip()
    return f"{token} {desc}" if desc else token


def key_from_comment(comment: str) -> str | None:
    """The key recorded by :func:`comment_with_key`, or None if the comment has none."""
    first = comment.strip().split(" ", 1)[0]
    if not first.startswith(_KEY_PREFIX):
        return None
    return unquote(first[len(_KEY_PREFIX):])


class SbatchFailure(enum.StrEnum):
    """How a failed ``sbatch`` is handled."""

    TRANSIENT = "TRANSIENT"  # controller unreachable or busy: retry after backoff
    BACKPRESSURE = "BACKPRESSURE"  # a site submit limit: wait for jobs to end, retry
    PERMANENT = "PERMANENT"  # Slurm rejected the job: fail the step with its message
    UNKNOWN = "UNKNOWN"  # unrecognised: reconcile by key, then treat as permanent


_TRANSIENT = re.compile(
    r"Socket timed out|Unable to contact slurm controller|temporarily unable to accept"
    r"|Resource temporarily unavailable|Zero Bytes were transmitted or received"
    r"|Connection refused|Connection reset|Communication connection failure"
    r"|Transport endpoint is not connected|controller (is )?busy|Slurmctld is busy"
    r"|in standby mode|Slurm backup controller|Insane message length",
    re.IGNORECASE,
)
_BACKPRESSURE = re.compile(
    r"AssocMaxSubmitJobLimit|QOSMaxSubmitJobPerUserLimit|QOSMaxSubmitJobLimit"
    r"|AssocGrpSubmitJobsLimit|QOSGrpSubmitJobsLimit|MaxSubmitJobs"
)
_PERMANENT = re.compile(
    r"Invalid partition|Invalid account|Invalid --time|Invalid qos|Invalid job id"
    r"|Invalid generic resource|Invalid feature|Invalid node name|Invalid reservation"
    r"|Invalid (user|group) id|Invalid wckey|Requested node configuration is not available"
    r"|Node count specification invalid|More processors requested than permitted"
    r"|Requested time limit is invalid|Job violates accounting/QOS policy"
    r"|unrecognized option|invalid option|Unable to open file|not a valid|does not exist"
    r"|No partition specified|Batch script is empty|This does not look like a batch script",
    re.IGNORECASE,
)


def classify_sbatch_error(stderr: str) -> SbatchFailure:
    """Classify a failed ``sbatch`` by its message.

    Backpressure wins over the generic "violates accounting/QOS policy" line that Slurm
    prints after a submit-limit reason; a transient cause wins over a permanent-looking
    word in the same text.
    """
    if _BACKPRESSURE.search(stderr):
        return SbatchFailure.BACKPRESSURE
    if _TRANSIENT.search(stderr):
        return SbatchFailure.TRANSIENT
    if _PERMANENT.search(stderr):
        return SbatchFailure.PERMANENT
    return SbatchFailure.UNKNOWN
