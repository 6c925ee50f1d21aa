"""The pure machine of a sampled step's samples: which to run next, and how the step ends.

A step instance that uses Merlin's samples (``StepInstance.sampled``) runs once per
sample. Its own record goes through the step machine like any other: its "job" is the
whole set of samples, which starts when the step is submitted and exits when every
sample has ended. Each sample is a step record of its own (named :func:`sample_name`,
decided by ``engine.machines.step``: slots, retries, restarts, walltime and Merlin's exit
codes stay per sample), but only a bounded window of them exists at a time: the book
below keeps one byte per sample and opens the next sample when one ends, so a step over
100,000 samples costs 100,000 bytes and ``window`` records, never 100,000 actors.

The book is changed in place by :func:`decide` (copying a 100,000-byte table per event
would cost more than the event); nothing else changes it.
"""

from __future__ import annotations

from msgspec import Struct
from msgspec.structs import replace

from engine.machines.policy import StepPolicy
from engine.spec.policy import RetryPolicy
from engine.messages import (
    FAILURE_STATES,
    Command,
    Event,
    JobOutcome,
    StepState,
)

__all__ = [
    "CODES", "CancelSample", "OpenSample", "SampleBook", "SampleEnded", "SamplesBegin",
    "SamplesFinished", "SamplesStop", "decide", "new_book", "sample_name",
    "set_policy", "split_sample", "state_name",
]

SEP = "\x1f"  # refused in every spec name (engine.spec.safety), so it never collides
WAITING, OPEN = 0, 1
CODES: dict[StepState, int] = {s: i + 2 for i, s in enumerate([
    StepState.FINISHED, StepState.FAILED, StepState.CANCELLED, StepState.TIMEDOUT,
    StepState.HWFAILURE, StepState.SKIPPED, StepState.DRYRUN, StepState.CACHED])}
"""The byte a sample's terminal state is kept as (0: not yet opened, 1: open)."""
STATES = {code: state for state, code in CODES.items()}
SOFT = 0x80  # added to FAILED's code: a Merlin soft fail


def sample_name(step: str, index: int) -> str:
    """The record name of ``step``'s sample ``index``."""
    return f"{step}{SEP}{index}"


def split_sample(name: str) -> tuple[str, int] | None:
    """``(step, index)`` for a sample's record name, None for any other name."""
    step, sep, index = name.rpartition(SEP)
    return (step, int(index)) if sep else None


def set_policy(policy: StepPolicy) -> StepPolicy:
    """The policy of a sampled step's own record, whose job is its set of samples: no
    throttle slot (each sample takes its own), no walltime, no second attempt (each
    sample is retried or restarted alone); Merlin's soft fail (exit 101) is kept."""
    return replace(policy, scopes=(), walltime=None, restart_limit=1,
                   retry=RetryPolicy(), hw_limit=0, max_retries=0)


class SamplesBegin(Event, frozen=True, tag="samples_begin"):
    """The step was submitted: open the first samples. ``done`` already FINISHED
    (their ``MERLIN_FINISHED`` marker exists: Merlin's rule for a study run again)."""

    done: tuple[int, ...] = ()


class SampleEnded(Event, frozen=True, tag="sample_ended"):
    """Sample ``index`` reached its final state."""

    index: int
    state: StepState
    soft: bool = False


class SamplesStop(Event, frozen=True, tag="samples_stop"):
    """The step is cancelled: open no more samples, cancel the open ones."""


class OpenSample(Command, frozen=True, tag="open_sample"):
    """Create sample ``index``'s record and let it run."""

    step: str
    index: int


class CancelSample(Command, frozen=True, tag="cancel_sample"):
    """Cancel open sample ``index``."""

    step: str
    index: int


class SamplesFinished(Command, frozen=True, tag="samples_finished"):
    """Every sample has ended: the step's "job" exits with ``outcome``/``exit_code``."""

    step: str
    outcome: JobOutcome
    exit_code: int
    detail: str


class SampleBook(Struct, kw_only=True):
    """One sampled step's samples.

    Attributes:
        step: The step instance.
        n: How many samples.
        window: How many samples may be open (have a record) at once.
        merlin: Merlin's protocol: only soft fails among the failures → a soft fail.
        codes: One byte per sample (``CODES``; 0 not opened, 1 open).
        next: The lowest sample never opened.
        open: How many are open.
        counts: Samples per final state.
        stopping: Cancelled: nothing more is opened.
    """

    step: str
    n: int
    window: int
    merlin: bool = False
    codes: bytearray
    next: int = 0
    open: int = 0
    counts: dict[str, int]
    soft: int = 0
    stopping: bool = False

    @property
    def ended(self) -> int:
        return sum(self.counts.values())

    def state_of(self, index: int) -> str:
        """Sample ``index``'s state now (``state_name`` of its byte)."""
        return state_name(self.codes[index])


def state_name(code: int) -> str:
    """The state a sample's byte stands for: INITIALIZED (never opened), RUNNING (open),
    else its final state."""
    if code == WAITING:
        return "INITIALIZED"
    if code == OPEN:
        return "RUNNING"
    return STATES[code & ~SOFT].value


def new_book(step: str, n: int, *, window: int, merlin: bool = False) -> SampleBook:
    """The book of a step over ``n`` samples, none opened yet."""
    return SampleBook(step=step, n=n, window=max(1, window), merlin=merlin,
                      codes=bytearray(n), counts={})


def _open_more(book: SampleBook) -> list[Command]:
    cmds: list[Command] = []
    while not book.stopping and book.open < book.window and book.next < book.n:
        i = book.next
        book.next += 1
        if book.codes[i] != WAITING:  # already done (a marker)
            continue
        book.codes[i] = OPEN
        book.open += 1
        cmds.append(OpenSample(step=book.step, index=i))
    return cmds


def _finish(book: SampleBook) -> SamplesFinished:
    c = book.counts
    failed = sum(c.get(s.value, 0) for s in FAILURE_STATES)
    cancelled = c.get(StepState.CANCELLED.value, 0)
    parts = [f"{v} {k}" for k, v in sorted(c.items())]
    detail = f"{book.n} samples: {', '.join(parts) or 'none'}"
    if book.stopping and cancelled:
        return SamplesFinished(step=book.step, outcome=JobOutcome.CANCELLED, exit_code=-15,
                               detail=detail)
    if failed and not (book.merlin and failed == book.soft):
        return SamplesFinished(step=book.step, outcome=JobOutcome.FAILED, exit_code=1,
                               detail=detail)
    if failed:  # Merlin: only soft fails, the workflow goes on (exit code 101)
        return SamplesFinished(step=book.step, outcome=JobOutcome.FAILED, exit_code=101,
                               detail=detail)
    return SamplesFinished(step=book.step, outcome=JobOutcome.COMPLETED, exit_code=0,
                           detail=detail)


def _settle(book: SampleBook, index: int, state: StepState, soft: bool = False) -> None:
    book.codes[index] = CODES[state] | (SOFT if soft else 0)
    book.counts[state.value] = book.counts.get(state.value, 0) + 1
    book.soft += soft


def decide(book: SampleBook, event: Event) -> list[Command]:
    """Apply ``event`` to ``book`` (in place); return the commands to carry out."""
    cmds: list[Command] = []
    match event:
        case SamplesBegin(done=done):
            for i in done:
                _settle(book, i, StepState.FINISHED)
            cmds = _open_more(book)
        case SampleEnded(index=i, state=state, soft=soft) if book.codes[i] == OPEN:
            book.open -= 1
            _settle(book, i, state, soft)
            cmds = _open_more(book)
        case SampleEnded():
            return []  # a sample that is not open: already counted
        case SamplesStop() if not book.stopping:
            book.stopping = True
            never = [i for i in range(book.next, book.n) if book.codes[i] == WAITING]
            for i in never:
                _settle(book, i, StepState.CANCELLED)
            book.next = book.n
            cmds = [CancelSample(step=book.step, index=i)
                    for i, code in enumerate(book.codes) if code == OPEN]
        case SamplesStop():
            return []
        case _:
            raise AssertionError(f"unexpected event for a sample book: {event!r}")
    if book.open == 0 and book.next >= book.n:
        cmds.append(_finish(book))
    return cmds
