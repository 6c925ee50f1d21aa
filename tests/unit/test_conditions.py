"""Step conditions (``when:``): parsing with positioned errors, PARK's three-valued
and/or/not with cancellation, funnel quantifiers at their boundaries, and the promise that a
decided verdict never changes as more instances end."""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Sequence

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.machines.conditions import ConditionVerdict, evaluate
from engine.spec.conditions import (
    ATTRIBUTES,
    AllOf,
    And,
    AnyOf,
    Atom,
    ConditionError,
    CountOf,
    Expr,
    FractionOf,
    Not,
    Or,
    parse,
    references,
)

T, F, U, C = (ConditionVerdict.TRUE, ConditionVerdict.FALSE, ConditionVerdict.UNDECIDED,
              ConditionVerdict.CANCELLED)
TERMINAL = ("FINISHED", "FAILED", "TIMEDOUT", "CANCELLED", "SKIPPED")
# One instance state that makes ``x.completed`` give each verdict.
STATE_FOR = {T: "FINISHED", F: "FAILED", U: None, C: "CANCELLED"}
VERDICTS = (T, F, U, C)


def judge(text: str, **states: Sequence[str | None] | str | None) -> ConditionVerdict:
    """Evaluate ``text`` with each keyword a step (``s_`` stands for the pattern ``s_*``)."""
    table = {
        (name + "*" if name.endswith("_") else name): (
            list(value) if isinstance(value, list | tuple) else [value]
        )
        for name, value in states.items()
    }
    return evaluate(parse(text), lambda name: table[name])


def funnel(done: int = 0, failed: int = 0, pending: int = 0, cancelled: int = 0) -> list:
    return ["FINISHED"] * done + ["FAILED"] * failed + [None] * pending + ["CANCELLED"] * cancelled


# ---------------------------------------------------------------- atoms


@pytest.mark.parametrize(
    ("text", "state", "expected"),
    [
        ("a.completed", None, U),
        ("a.completed", "FINISHED", T),
        ("a.completed", "FAILED", F),
        ("a.completed", "SKIPPED", F),
        ("a.completed", "CANCELLED", C),
        ("a.completed", "CACHED", T),
        ("a.completed", "DRYRUN", T),
        ("a.failed", "FAILED", T),
        ("a.failed", "HWFAILURE", T),
        ("a.failed", "TIMEDOUT", F),
        ("a.failed", "CANCELLED", C),
        ("a.timedout", "TIMEDOUT", T),
        ("a.skipped", "SKIPPED", T),
        ("a.skipped", "CANCELLED", C),
        ("a.cancelled", "CANCELLED", T),
        ("a.cancelled", "FINISHED", F),
        ("a.cancelled", None, U),
        ("a.terminal", "CANCELLED", T),
        ("a.terminal", "SKIPPED", T),
        ("a.terminal", None, U),
    ],
)
def test_atom_judges_one_instance(text: str, state: str | None, expected: ConditionVerdict) -> None:
    assert expected == judge(text, a=state)


def test_atom_over_several_instances_is_their_conjunction() -> None:
    assert U == judge("a.completed", a=["FINISHED", None])
    assert T == judge("a.completed", a=["FINISHED", "FINISHED"])
    assert C == judge("a.completed", a=["FAILED", "CANCELLED"])
    assert T == judge("a.completed", a=[])


def test_unknown_state_is_a_caller_bug() -> None:
    with pytest.raises(ValueError, match=r"^unknown step state 'DONE'$"):
        judge("a.completed", a="DONE")
    with pytest.raises(ValueError, match=r"^unknown step state 'DONE'$"):
        judge("all(s_*.completed)", s_=["DONE"])


# ---------------------------------------------------------------- and / or / not

AND_TABLE = {  # rows: left; columns: right, in VERDICTS order T, F, U, C
    T: (T, F, U, C),
    F: (F, F, U, C),  # FALSE waits for an undecided side: it may still be cancelled
    U: (U, U, U, C),
    C: (C, C, C, C),  # cancelled if either side is (PARK), even beside FALSE
}
OR_TABLE = {
    T: (T, T, T, T),
    F: (T, F, U, F),
    U: (T, U, U, U),
    C: (T, F, U, C),  # cancelled only if both sides are (PARK)
}


@pytest.mark.parametrize(("left", "right"), list(itertools.product(VERDICTS, VERDICTS)))
def test_and_follows_parks_truth_table(left: ConditionVerdict, right: ConditionVerdict) -> None:
    expected = AND_TABLE[left][VERDICTS.index(right)]
    assert expected == judge("x.completed and y.completed", x=STATE_FOR[left], y=STATE_FOR[right])


@pytest.mark.parametrize(("left", "right"), list(itertools.product(VERDICTS, VERDICTS)))
def test_or_follows_parks_truth_table(left: ConditionVerdict, right: ConditionVerdict) -> None:
    expected = OR_TABLE[left][VERDICTS.index(right)]
    assert expected == judge("x.completed or y.completed", x=STATE_FOR[left], y=STATE_FOR[right])


@pytest.mark.parametrize(("operand", "expected"), [(T, F), (F, T), (U, U), (C, C)])
def test_not_swaps_true_and_false_and_keeps_the_rest(
    operand: ConditionVerdict, expected: ConditionVerdict
) -> None:
    assert expected == judge("not x.completed", x=STATE_FOR[operand])


def test_or_fires_as_soon_as_one_side_completes() -> None:
    assert T == judge("a.completed or b.completed", a="FINISHED", b=None)


def test_and_is_cancelled_early_but_waits_before_saying_false() -> None:
    """FALSE beside a pending side waits: that side could still be cancelled, and CANCELLED
    wins over FALSE."""
    assert C == judge("a.completed and b.completed", a="CANCELLED", b=None)
    assert U == judge("a.completed and b.completed", a="FAILED", b=None)
    assert F == judge("a.completed and b.completed", a="FAILED", b="FINISHED")
    assert C == judge("a.completed and b.completed", a="FAILED", b="CANCELLED")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a.completed or b.completed and c.completed", Or(left=Atom(step="a", attr="completed"), right=And(left=Atom(step="b", attr="completed"), right=Atom(step="c", attr="completed")))),
        ("not a.completed and b.completed", And(left=Not(operand=Atom(step="a", attr="completed")), right=Atom(step="b", attr="completed"))),
        ("not a.completed or b.failed", Or(left=Not(operand=Atom(step="a", attr="completed")), right=Atom(step="b", attr="failed"))),
        ("(a.completed or b.completed) and c.completed", And(left=Or(left=Atom(step="a", attr="completed"), right=Atom(step="b", attr="completed")), right=Atom(step="c", attr="completed"))),
        ("a.completed and b.completed and c.completed", And(left=And(left=Atom(step="a", attr="completed"), right=Atom(step="b", attr="completed")), right=Atom(step="c", attr="completed"))),
        ("not not a.completed", Not(operand=Not(operand=Atom(step="a", attr="completed")))),
    ],
)  # fmt: skip
def test_not_binds_tighter_than_and_which_binds_tighter_than_or(text: str, expected: Expr) -> None:
    assert expected == parse(text)


def test_precedence_shows_in_the_verdict() -> None:
    """Read as ``a or (b and c)``: TRUE; ``(a or b) and c`` would still wait for ``c``."""
    assert T == judge("a.completed or b.failed and c.completed", a="FINISHED", b="FINISHED", c=None)
    assert U == judge("(a.completed or b.failed) and c.completed", a="FINISHED", b="FINISHED", c=None)


# ---------------------------------------------------------------- quantifiers


@pytest.mark.parametrize(
    ("op", "at_k_minus_1", "at_k", "at_k_plus_1"),
    [
        (">=", F, T, T),
        (">", F, F, T),
        ("<=", T, T, F),
        ("<", T, F, F),
        ("==", F, T, F),
        ("!=", T, F, T),
    ],
)
def test_count_at_its_boundary(
    op: str, at_k_minus_1: ConditionVerdict, at_k: ConditionVerdict,
    at_k_plus_1: ConditionVerdict,
) -> None:
    text = f"count(s_*.completed) {op} 8"
    assert at_k_minus_1 == judge(text, s_=funnel(done=7, failed=3))
    assert at_k == judge(text, s_=funnel(done=8, failed=2))
    assert at_k_plus_1 == judge(text, s_=funnel(done=9, failed=1))


def test_count_decides_early_with_instances_still_pending() -> None:
    at_least = "count(s_*.completed) >= 8"
    assert T == judge(at_least, s_=funnel(done=8, pending=2))
    assert U == judge(at_least, s_=funnel(done=7, pending=1, failed=2))
    assert F == judge(at_least, s_=funnel(done=6, pending=1, failed=3))
    assert U == judge("count(s_*.completed) == 8", s_=funnel(done=8, pending=1, failed=1))
    assert F == judge("count(s_*.completed) == 8", s_=funnel(done=9, pending=1))
    assert U == judge("count(s_*.completed) == 8", s_=funnel(done=5, pending=4, failed=1))
    assert T == judge("count(s_*.failed) < 2", s_=funnel(done=9, pending=1))
    assert F == judge("count(s_*.failed) < 2", s_=funnel(failed=2, pending=8))


def test_fraction_meets_its_threshold_exactly() -> None:
    at_least = "fraction(s_*.completed) >= 0.9"
    assert T == judge(at_least, s_=funnel(done=9, failed=1))
    assert F == judge(at_least, s_=funnel(done=8, failed=2))
    assert F == judge("fraction(s_*.completed) > 0.9", s_=funnel(done=9, failed=1))
    assert T == judge("fraction(s_*.completed) == 0.3", s_=funnel(done=3, failed=7))
    assert T == judge("fraction(s_*.completed) == 1", s_=funnel(done=10))


def test_fraction_decides_early_with_instances_still_pending() -> None:
    at_least = "fraction(s_*.completed) >= 0.9"
    assert T == judge(at_least, s_=funnel(done=9, pending=1))
    assert U == judge(at_least, s_=funnel(done=8, pending=1, failed=1))
    assert F == judge(at_least, s_=funnel(done=7, pending=1, failed=2))
    assert T == judge("fraction(s_*.completed) >= 0.8", s_=funnel(done=9, cancelled=1))


def test_all_and_any_decide_early() -> None:
    assert T == judge("all(s_*.completed)", s_=funnel(done=3))
    assert U == judge("all(s_*.completed)", s_=funnel(done=2, pending=1))
    assert F == judge("all(s_*.completed)", s_=funnel(done=1, failed=1, pending=2))
    assert T == judge("any(s_*.failed)", s_=funnel(failed=1, pending=3))
    assert U == judge("any(s_*.failed)", s_=funnel(done=2, pending=1))
    assert F == judge("any(s_*.failed)", s_=funnel(done=3))


def test_quantifiers_count_a_cancelled_instance_instead_of_cancelling() -> None:
    assert F == judge("all(s_*.completed)", s_=funnel(done=2, cancelled=1))
    assert F == judge("any(s_*.completed)", s_=funnel(cancelled=3))
    assert T == judge("all(s_*.terminal)", s_=funnel(done=1, failed=1, cancelled=1))
    assert T == judge("count(s_*.cancelled) == 2", s_=funnel(done=1, cancelled=2))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("all(s_*.completed)", T),
        ("any(s_*.completed)", F),
        ("count(s_*.completed) >= 0", T),
        ("count(s_*.completed) >= 1", F),
        ("fraction(s_*.completed) == 0", T),  # an empty funnel's fraction is 0.0
        ("fraction(s_*.completed) > 0", F),
        ("fraction(s_*.completed) >= 0.5", F),
    ],
)
def test_empty_funnel(text: str, expected: ConditionVerdict) -> None:
    assert expected == judge(text, s_=[])


def quantifiers(attrs: Sequence[str]) -> st.SearchStrategy[Expr]:
    attr = st.sampled_from(attrs)
    op = st.sampled_from([">=", ">", "<=", "<", "==", "!="])
    return st.one_of(
        st.builds(AllOf, pattern=st.just("s_*"), attr=attr),
        st.builds(AnyOf, pattern=st.just("s_*"), attr=attr),
        st.builds(CountOf, pattern=st.just("s_*"), attr=attr, op=op, threshold=st.integers(0, 6)),
        st.builds(
            FractionOf,
            pattern=st.just("s_*"),
            attr=attr,
            op=op,
            threshold=st.sampled_from([0.0, 0.25, 0.5, 2 / 3, 0.75, 0.8, 1.0]),
        ),
    )


def test_terminal_quantifiers_wait_for_instances_to_end() -> None:
    """A pending instance has not ended yet, so it counts as not (yet) terminal."""
    assert U == judge("all(s_*.terminal)", s_=funnel(done=2, pending=1))
    assert T == judge("all(s_*.terminal)", s_=funnel(done=2, failed=1))
    assert U == judge("any(s_*.terminal)", s_=funnel(pending=3))
    assert T == judge("any(s_*.terminal)", s_=funnel(failed=1, pending=2))
    assert U == judge("count(s_*.terminal) >= 3", s_=funnel(done=2, pending=1))


@settings(max_examples=300)
@given(
    quantifiers([a for a in ATTRIBUTES if a != "terminal"]),
    st.lists(st.sampled_from((None, *TERMINAL)), max_size=5),
)
def test_quantifier_is_undecided_exactly_while_its_outcomes_disagree(expr: Expr, states: list) -> None:
    """A quantifier decides as early as possible: it is TRUE or FALSE as soon as every way
    the pending instances can end gives that verdict, and UNDECIDED only until then.
    (``terminal`` is left out: every ending matches it, yet it must wait for one.)"""
    pending = [i for i, s in enumerate(states) if s is None]
    outcomes = set()
    for ends in itertools.product(TERMINAL, repeat=len(pending)):
        final = list(states)
        for i, end in zip(pending, ends):
            final[i] = end
        outcomes.add(evaluate(expr, lambda _: final))
    assert outcomes <= {T, F}
    expected = outcomes.pop() if len(outcomes) == 1 else U
    assert expected == evaluate(expr, lambda _: states)


# ---------------------------------------------------------------- monotonicity


def unparse(expr: Expr) -> str:
    """Fully parenthesised text for an expression (parsing it gives the expression back)."""
    match expr:
        case Atom(step=step, attr=attr):
            return f"{step}.{attr}"
        case Not(operand=operand):
            return f"not ({unparse(operand)})"
        case And(left=left, right=right):
            return f"({unparse(left)}) and ({unparse(right)})"
        case Or(left=left, right=right):
            return f"({unparse(left)}) or ({unparse(right)})"
        case AllOf(pattern=p, attr=a) | AnyOf(pattern=p, attr=a):
            return f"{'all' if isinstance(expr, AllOf) else 'any'}({p}.{a})"
        case CountOf(pattern=p, attr=a, op=op, threshold=k):
            return f"count({p}.{a}) {op} {k}"
        case FractionOf(pattern=p, attr=a, op=op, threshold=x):
            return f"fraction({p}.{a}) {op} {x!r}"
    raise AssertionError(expr)


EXPRESSIONS = st.recursive(
    st.one_of(
        st.builds(Atom, step=st.sampled_from("abc"), attr=st.sampled_from(ATTRIBUTES)),
        quantifiers(ATTRIBUTES),
    ),
    lambda inner: st.one_of(
        st.builds(Not, operand=inner),
        st.builds(And, left=inner, right=inner),
        st.builds(Or, left=inner, right=inner),
    ),
    max_leaves=8,
)
INSTANCES = ("a", "b", "c", "s_1", "s_2", "s_3")


@settings(max_examples=300)
@given(EXPRESSIONS, st.lists(st.sampled_from(TERMINAL), min_size=6, max_size=6))
def test_a_decided_verdict_never_changes_as_instances_end(expr: Expr, ends: list) -> None:
    """Over every set of ended instances (each ending as ``ends`` says): one more ending
    never changes a TRUE, FALSE or CANCELLED verdict, and once all have ended the verdict
    is decided."""
    expr = parse(unparse(expr))  # every generated expression goes through the parser too
    final = dict(zip(INSTANCES, ends))

    def verdict(ended: frozenset[str]) -> ConditionVerdict:
        now = {i: final[i] if i in ended else None for i in INSTANCES}
        funnel = [now[i] for i in INSTANCES if i.startswith("s_")]
        return evaluate(expr, lambda name: funnel if name == "s_*" else [now[name]])

    subsets = (frozenset(s) for r in range(len(INSTANCES) + 1) for s in itertools.combinations(INSTANCES, r))
    verdicts = {ended: verdict(ended) for ended in subsets}
    for ended, before in verdicts.items():
        if before != U:
            for more in set(INSTANCES) - ended:
                assert before == verdicts[ended | {more}], (sorted(ended), more)
    assert U != verdicts[frozenset(INSTANCES)]


# ---------------------------------------------------------------- parsing


def test_names_may_hold_dashes_underscores_digits_and_quantifier_words() -> None:
    assert Atom(step="pre-process_2", attr="failed") == parse("pre-process_2.failed")
    assert Atom(step="count", attr="completed") == parse("  count.completed ")
    assert CountOf(pattern="sim_*", attr="completed", op=">=", threshold=8) == parse(
        "count( sim_* . completed )>=8"
    )
    assert FractionOf(pattern="sim_*", attr="failed", op="<", threshold=1.0) == parse(
        "fraction(sim_*.failed) < 1"
    )


def test_references_lists_steps_and_patterns() -> None:
    expr = parse("a.completed and (b-1.failed or not count(sim_*.completed) >= 2) or all(x_*.skipped)")
    assert {"a", "b-1", "sim_*", "x_*"} == references(expr)


def test_condition_survives_a_msgspec_round_trip() -> None:
    expr = parse("not a.completed or b.failed and fraction(s_*.completed) >= 0.9")
    assert expr == msgspec.json.decode(msgspec.json.encode(expr), type=Expr)


@pytest.mark.parametrize(
    ("text", "message", "position"),
    [
        ("a.completed)", r"unexpected '\)' at column 12", 11),
        ("(a.completed", r"expected '\)', found end of condition at column 13", 12),
        ("((a.completed) or b.failed", r"expected '\)', found end of condition at column 27", 26),
        ("a.done", r"unknown attribute 'done' \(expected one of completed, failed, timedout, cancelled, skipped, terminal\) at column 3", 2),
        ("all()", r"expected a funnel pattern, found '\)' at column 5", 4),
        ("all(.completed)", r"expected a funnel pattern, found '\.' at column 5", 4),
        ("count(sim_*.completed) >=", r"expected a number after '>=', found end of condition at column 26", 25),
        ("count(sim_*.completed) >= many", r"expected a number after '>=', found 'many' at column 27", 26),
        ("count(sim_*.completed) 8", r"expected a comparison after count\(\.\.\.\), found '8' at column 24", 23),
        ("count(s_*.completed) >= 1.5", r"count needs an integer, found '1\.5' at column 25", 24),
        ("fraction(s_*.completed) >= 1.5", r"fraction needs a number in \[0, 1\], found '1\.5' at column 28", 27),
        ("all(s_*.completed) >= 2", r"all\(\.\.\.\) takes no comparison at column 20", 19),
        ("sim_*.completed", r"pattern 'sim_\*' outside all/any/count/fraction at column 1", 0),
        ("a.completed and", r"expected a step name, found end of condition at column 16", 15),
        ("", r"expected a step name, found end of condition at column 1", 0),
        ("a.completed & b.completed", r"unexpected '&' at column 13", 12),
        ("a.completed b.completed", r"unexpected 'b' at column 13", 12),
        ("a.completed >= 3", r"unexpected '>=' at column 13", 12),
        ("a completed", r"expected '\.' and an attribute after 'a', found 'completed' at column 3", 2),
    ],
)  # fmt: skip
def test_parse_error_names_its_column(text: str, message: str, position: int) -> None:
    with pytest.raises(ConditionError, match=f"^{message}$") as info:
        parse(text)
    assert (text, position) == (info.value.text, info.value.position)
    assert isinstance(info.value, ValueError)


def test_conditions_module_imports_no_io_library() -> None:
    code = (
        "import sys, engine.machines.conditions\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('anyio', 'nats', 'structlog', 'asyncio'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "" == out.stdout.strip()
