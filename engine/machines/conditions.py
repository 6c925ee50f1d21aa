"""Step conditions (``when:``): judge a parsed condition against its dependencies' states (pure).

The condition language (grammar, parser, syntax tree) is the spec's: ``engine.spec.conditions``.
``evaluate`` judges a parsed condition against the instance states the caller reports
(``None`` while not terminal): TRUE (run the step), FALSE (skip it), CANCELLED (cancel it)
or UNDECIDED (wait).

Semantics (three-valued plus PARK's cancellation; a decided verdict never changes):
  * An atom is UNDECIDED while its instance runs, TRUE if it ended in the named state, FALSE
    if in another, but CANCELLED if it ended CANCELLED (``.cancelled`` and ``.terminal`` are
    TRUE then). ``completed`` also matches CACHED and DRYRUN; ``failed`` also HWFAILURE and
    UNKNOWN. An atom over several instances is their ``and``; over none it is TRUE.
  * ``x and y``: CANCELLED if either side is (PARK), else UNDECIDED if either is, else FALSE
    if either is, else TRUE. **CANCELLED wins over FALSE**, so FALSE and UNDECIDED waits
    (UNDECIDED): the pending side may still be cancelled, and deciding FALSE early would let
    the verdict change later. CANCELLED and UNDECIDED is CANCELLED at once.
  * ``x or y``: TRUE if either side is (at once), else UNDECIDED if either is, else FALSE if
    either is, else CANCELLED (both are).
  * ``not x`` swaps TRUE and FALSE and keeps UNDECIDED and CANCELLED.
  * Quantifiers count and never give CANCELLED: a cancelled member of a sweep is just one that
    did not end in the named state, so it does not cancel the aggregator. Each is decided once
    no pending instance, matching or not when it ends, could change the answer: ``all`` is
    FALSE once one ended otherwise, ``any`` TRUE once one matches, ``count(...) >= k`` TRUE at
    k matches and FALSE once matches plus pending < k (``any(p.terminal)`` thus waits for an
    instance to end). On an empty funnel ``all`` is TRUE, ``any`` FALSE, ``count`` is 0 and
    ``fraction`` is **0.0**. ``fraction`` compares exactly: 9 of 10 meets ``>= 0.9``.
"""

from __future__ import annotations

import enum
import operator
from fractions import Fraction
from typing import TYPE_CHECKING

from engine.spec.conditions import (
    AllOf,
    And,
    AnyOf,
    Atom,
    CountOf,
    Expr,
    FractionOf,
    Not,
    Or,
    Quantifier,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["ConditionVerdict", "evaluate"]

# The states each attribute matches. Invariant: its keys are engine.spec.conditions.ATTRIBUTES.
_MATCHES: dict[str, frozenset[str]] = {
    "completed": frozenset({"FINISHED", "CACHED", "DRYRUN"}),
    "failed": frozenset({"FAILED", "HWFAILURE", "UNKNOWN"}),
    "timedout": frozenset({"TIMEDOUT"}),
    "cancelled": frozenset({"CANCELLED"}),
    "skipped": frozenset({"SKIPPED"}),
}
_MATCHES["terminal"] = frozenset().union(*_MATCHES.values())

_COMPARE: dict[str, Callable[[Fraction, Fraction], bool]] = {
    ">=": operator.ge, ">": operator.gt, "<=": operator.le,
    "<": operator.lt, "==": operator.eq, "!=": operator.ne,
}


class ConditionVerdict(enum.StrEnum):
    """What a condition says now: run (TRUE), skip (FALSE), cancel, or wait (UNDECIDED)."""

    TRUE = "TRUE"
    FALSE = "FALSE"
    UNDECIDED = "UNDECIDED"
    CANCELLED = "CANCELLED"


# The first verdict of each list present among the operands wins. Invariant: UNDECIDED
# precedes every verdict that another operand could still overturn, which is what makes
# evaluation monotonic (a decided verdict never changes as more instances end).
_AND_PRIORITY = (
    ConditionVerdict.CANCELLED, ConditionVerdict.UNDECIDED, ConditionVerdict.FALSE,
    ConditionVerdict.TRUE,
)
_OR_PRIORITY = (
    ConditionVerdict.TRUE, ConditionVerdict.UNDECIDED, ConditionVerdict.FALSE,
    ConditionVerdict.CANCELLED,
)
_NOT = {
    ConditionVerdict.TRUE: ConditionVerdict.FALSE,
    ConditionVerdict.FALSE: ConditionVerdict.TRUE,
    ConditionVerdict.UNDECIDED: ConditionVerdict.UNDECIDED,
    ConditionVerdict.CANCELLED: ConditionVerdict.CANCELLED,
}


def _combine(
    priority: tuple[ConditionVerdict, ...], verdicts: Sequence[ConditionVerdict]
) -> ConditionVerdict:
    return next(verdict for verdict in priority if verdict in verdicts)


def _check_state(state: str | None) -> None:
    if state is not None and state not in _MATCHES["terminal"]:
        raise ValueError(f"unknown step state {state!r}")


def _atom(attr: str, state: str | None) -> ConditionVerdict:
    _check_state(state)
    if state is None:
        return ConditionVerdict.UNDECIDED
    if state in _MATCHES[attr]:
        return ConditionVerdict.TRUE
    return ConditionVerdict.CANCELLED if state == "CANCELLED" else ConditionVerdict.FALSE


def _exact(value: float) -> Fraction:
    # repr() is the shortest decimal that reads back as value: 0.9 becomes exactly 9/10.
    return Fraction(repr(value))


def _holds(expr: Quantifier, matched: int, total: int) -> bool:
    match expr:
        case AllOf():
            return matched == total
        case AnyOf():
            return matched > 0
        case CountOf(op=op, threshold=threshold):
            return _COMPARE[op](Fraction(matched), Fraction(threshold))
        case FractionOf(op=op, threshold=threshold):
            share = Fraction(matched, total) if total else Fraction(0)
            return _COMPARE[op](share, _exact(threshold))


def _quantify(expr: Quantifier, states: Sequence[str | None]) -> ConditionVerdict:
    for state in states:
        _check_state(state)
    total = len(states)
    low = sum(state in _MATCHES[expr.attr] for state in states)
    high = low + sum(state is None for state in states)
    # The funnel will end with between low and high matches. Each test is monotonic in the
    # number of matches except == and !=, which flip only at the count equal to the
    # threshold, so judging both ends and that count tells whether every outcome agrees.
    counts = {low, high}
    if isinstance(expr, CountOf | FractionOf) and expr.op in ("==", "!="):
        if isinstance(expr, CountOf):
            target = Fraction(expr.threshold)
        else:
            target = _exact(expr.threshold) * total
        if target.denominator == 1 and low <= target <= high:
            counts.add(int(target))
    answers = {_holds(expr, matched, total) for matched in counts}
    if len(answers) > 1:
        return ConditionVerdict.UNDECIDED
    return ConditionVerdict.TRUE if answers.pop() else ConditionVerdict.FALSE


def evaluate(expr: Expr, states: Callable[[str], Sequence[str | None]]) -> ConditionVerdict:
    """Judge a condition against the current states of the steps it mentions.

    Args:
        expr: A parsed condition.
        states: Maps a step name or funnel pattern (as ``references`` returns it) to the
            states of its instances: ``None`` while not terminal, else a terminal state
            name (``FINISHED``, ``FAILED``, ``TIMEDOUT``, ``CANCELLED``, ``SKIPPED``, and
            also ``CACHED``, ``DRYRUN``, ``HWFAILURE``, ``UNKNOWN``).

    Returns:
        TRUE (run the step), FALSE (skip it), CANCELLED (cancel it) or UNDECIDED (wait);
        see the module docstring. Once TRUE, FALSE or CANCELLED, the verdict stays so as
        more instances end.

    Raises:
        ValueError: ``states`` returned a state name not listed above.
        TypeError: ``expr`` is not a condition node.
    """
    match expr:
        case Atom(step=step, attr=attr):
            return _combine(_AND_PRIORITY, [_atom(attr, state) for state in states(step)]
                            or [ConditionVerdict.TRUE])
        case Not(operand=operand):
            return _NOT[evaluate(operand, states)]
        case And(left=left, right=right):
            return _combine(_AND_PRIORITY, [evaluate(left, states), evaluate(right, states)])
        case Or(left=left, right=right):
            return _combine(_OR_PRIORITY, [evaluate(left, states), evaluate(right, states)])
        case AllOf() | AnyOf() | CountOf() | FractionOf():
            return _quantify(expr, states(expr.pattern))
    raise TypeError(f"not a condition: {expr!r}")
