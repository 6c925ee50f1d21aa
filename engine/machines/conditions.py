"""Step conditions (``when:``): parse an expression over dependency states and judge it (pure).

Atoms ``<step>.<attr>`` (``attr``: completed, failed, timedout, cancelled, skipped, terminal)
combine with ``not``, ``and``, ``or`` (binding in that order) and parentheses; quantifiers
``all(p.attr)``, ``any(p.attr)``, ``count(p.attr) OP k`` (an integer) and
``fraction(p.attr) OP x`` (in [0, 1]), ``OP`` one of ``>= > <= < == !=``, range over a funnel
pattern (a ``*`` is allowed only there). ``parse`` builds an AST of frozen tagged Structs,
``references`` lists the names it mentions (each must be a dependency), and ``evaluate``
judges it against the instance states the caller reports (``None`` while not terminal):
TRUE (run the step), FALSE (skip it), CANCELLED (cancel it) or UNDECIDED (wait).

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
import re
from fractions import Fraction
from typing import TYPE_CHECKING, Literal, TypeAlias

from msgspec import Struct

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = [
    "ATTRIBUTES", "AllOf", "And", "AnyOf", "Atom", "ConditionError", "CountOf", "Expr",
    "FractionOf", "Not", "Or", "Verdict", "evaluate", "parse", "references",
]

Attr: TypeAlias = Literal["completed", "failed", "timedout", "cancelled", "skipped", "terminal"]
CmpOp: TypeAlias = Literal[">=", ">", "<=", "<", "==", "!="]

_MATCHES: dict[str, frozenset[str]] = {
    "completed": frozenset({"FINISHED", "CACHED", "DRYRUN"}),
    "failed": frozenset({"FAILED", "HWFAILURE", "UNKNOWN"}),
    "timedout": frozenset({"TIMEDOUT"}),
    "cancelled": frozenset({"CANCELLED"}),
    "skipped": frozenset({"SKIPPED"}),
}
_MATCHES["terminal"] = frozenset().union(*_MATCHES.values())

ATTRIBUTES: tuple[str, ...] = tuple(_MATCHES)
"""The attributes an atom may name, in the order error messages list them."""

_COMPARE: dict[str, Callable[[Fraction, Fraction], bool]] = {
    ">=": operator.ge, ">": operator.gt, "<=": operator.le,
    "<": operator.lt, "==": operator.eq, "!=": operator.ne,
}


class Verdict(enum.StrEnum):
    """What a condition says now: run (TRUE), skip (FALSE), cancel, or wait (UNDECIDED)."""

    TRUE = "TRUE"
    FALSE = "FALSE"
    UNDECIDED = "UNDECIDED"
    CANCELLED = "CANCELLED"


class ConditionError(ValueError):
    """Raised by ``parse`` when a ``when:`` expression is malformed.

    Attributes:
        text: The expression as written.
        position: 0-based offset of the offending character (``len(text)`` at the end);
            the message names it as a 1-based column.
        reason: The message without its position, e.g. ``"unexpected ')'"``.
    """

    def __init__(self, text: str, position: int, reason: str) -> None:
        super().__init__(f"{reason} at column {position + 1}")
        self.text = text
        self.position = position
        self.reason = reason


class _Node(Struct, frozen=True, kw_only=True, tag_field="node"):
    """Base of the AST nodes; tagged so a decoded condition comes back as the right node."""


class Atom(_Node, frozen=True, kw_only=True, tag="atom"):
    """``step.attr``: one dependency (all its instances) ended in the named way."""

    step: str
    attr: Attr


class Not(_Node, frozen=True, kw_only=True, tag="not"):
    """``not operand``."""

    operand: Expr


class And(_Node, frozen=True, kw_only=True, tag="and"):
    """``left and right``."""

    left: Expr
    right: Expr


class Or(_Node, frozen=True, kw_only=True, tag="or"):
    """``left or right``."""

    left: Expr
    right: Expr


class AllOf(_Node, frozen=True, kw_only=True, tag="all"):
    """``all(pattern.attr)``: every matching instance ended in the named way."""

    pattern: str
    attr: Attr


class AnyOf(_Node, frozen=True, kw_only=True, tag="any"):
    """``any(pattern.attr)``: at least one matching instance ended in the named way."""

    pattern: str
    attr: Attr


class CountOf(_Node, frozen=True, kw_only=True, tag="count"):
    """``count(pattern.attr) op threshold``, with an integer threshold."""

    pattern: str
    attr: Attr
    op: CmpOp
    threshold: int


class FractionOf(_Node, frozen=True, kw_only=True, tag="fraction"):
    """``fraction(pattern.attr) op threshold``, with a threshold in [0, 1]."""

    pattern: str
    attr: Attr
    op: CmpOp
    threshold: float


Expr: TypeAlias = Atom | Not | And | Or | AllOf | AnyOf | CountOf | FractionOf
_Quantifier: TypeAlias = AllOf | AnyOf | CountOf | FractionOf

# ---------------------------------------------------------------- parsing

_TOKEN = re.compile(
    r"(?P<space>\s+)|(?P<name>[A-Za-z0-9_*-]+)|(?P<cmp>>=|<=|==|!=|>|<)|(?P<punct>[().])"
)
_NUMBER = re.compile(r"\d+(?:\.\d+)?(?![A-Za-z0-9_*.-])")
_KEYWORDS = frozenset({"and", "or", "not"})
_QUANTIFIERS = frozenset({"all", "any", "count", "fraction"})
_END = "end"


class _Token(Struct, frozen=True):
    kind: str  # "name", "cmp", "number", "(", ")", ".", or _END
    text: str
    pos: int


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(text):
        # A number is only read right after a comparison: elsewhere "8" is a step name.
        if tokens and tokens[-1].kind == "cmp" and (num := _NUMBER.match(text, pos)):
            tokens.append(_Token("number", num.group(), pos))
            pos = num.end()
            continue
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ConditionError(text, pos, f"unexpected {text[pos]!r}")
        kind = match.lastgroup
        if kind == "punct":
            tokens.append(_Token(match.group(), match.group(), pos))
        elif kind != "space":
            tokens.append(_Token(str(kind), match.group(), pos))
        pos = match.end()
    tokens.append(_Token(_END, "", len(text)))
    return tokens


class _Parser:
    """Recursive descent: or := and ('or' and)*; and := not ('and' not)*;
    not := 'not' not | '(' or ')' | quantifier | atom."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0

    @property
    def tok(self) -> _Token:
        return self.tokens[self.i]

    def error(self, reason: str, tok: _Token | None = None) -> ConditionError:
        return ConditionError(self.text, (self.tok if tok is None else tok).pos, reason)

    def unexpected(self, wanted: str) -> ConditionError:
        found = "end of condition" if self.tok.kind == _END else repr(self.tok.text)
        return self.error(f"expected {wanted}, found {found}")

    def expect(self, kind: str, wanted: str) -> _Token:
        if self.tok.kind != kind:
            raise self.unexpected(wanted)
        self.i += 1
        return self.tokens[self.i - 1]

    def is_word(self, word: str) -> bool:
        return self.tok.kind == "name" and self.tok.text == word

    def parse(self) -> Expr:
        expr = self.or_()
        if self.tok.kind != _END:
            raise self.error(f"unexpected {self.tok.text!r}")
        return expr

    def or_(self) -> Expr:
        expr = self.and_()
        while self.is_word("or"):
            self.i += 1
            expr = Or(left=expr, right=self.and_())
        return expr

    def and_(self) -> Expr:
        expr = self.not_()
        while self.is_word("and"):
            self.i += 1
            expr = And(left=expr, right=self.not_())
        return expr

    def not_(self) -> Expr:
        if self.is_word("not"):
            self.i += 1
            return Not(operand=self.not_())
        if self.tok.kind == "(":
            self.i += 1
            expr = self.or_()
            self.expect(")", "')'")
            return expr
        if self.tok.kind == "name" and self.tok.text in _QUANTIFIERS:
            if self.tokens[self.i + 1].kind == "(":
                return self.quantifier()
        step, attr = self.step_attr(quantified=False)
        return Atom(step=step, attr=attr)

    def step_attr(self, *, quantified: bool) -> tuple[str, Attr]:
        if self.tok.kind != "name" or self.tok.text in _KEYWORDS:
            raise self.unexpected("a funnel pattern" if quantified else "a step name")
        name = self.tok
        if "*" in name.text and not quantified:
            raise self.error(f"pattern {name.text!r} outside all/any/count/fraction")
        self.i += 1
        self.expect(".", f"'.' and an attribute after {name.text!r}")
        attr = self.expect("name", "an attribute")
        if attr.text not in _MATCHES:
            known = ", ".join(ATTRIBUTES)
            raise self.error(f"unknown attribute {attr.text!r} (expected one of {known})", attr)
        return name.text, attr.text  # type: ignore[return-value]  # checked just above

    def quantifier(self) -> _Quantifier:
        kind = self.tok.text
        self.i += 2  # the keyword and its '('
        pattern, attr = self.step_attr(quantified=True)
        self.expect(")", "')'")
        if kind in ("all", "any"):
            if self.tok.kind == "cmp":
                raise self.error(f"{kind}(...) takes no comparison")
            return (AllOf if kind == "all" else AnyOf)(pattern=pattern, attr=attr)
        op: CmpOp = self.expect("cmp", f"a comparison after {kind}(...)").text  # type: ignore[assignment]
        num = self.tok
        if num.kind != "number":
            raise self.unexpected(f"a number after {op!r}")
        self.i += 1
        if kind == "count":
            if "." in num.text:
                raise self.error(f"count needs an integer, found {num.text!r}", num)
            return CountOf(pattern=pattern, attr=attr, op=op, threshold=int(num.text))
        value = float(num.text)
        if not 0.0 <= value <= 1.0:
            raise self.error(f"fraction needs a number in [0, 1], found {num.text!r}", num)
        return FractionOf(pattern=pattern, attr=attr, op=op, threshold=value)


def parse(text: str) -> Expr:
    """Parse a ``when:`` expression.

    Args:
        text: The expression, e.g. ``"a.completed and count(sim_*.completed) >= 8"``.

    Returns:
        The expression's AST, built of frozen tagged Structs.

    Raises:
        ConditionError: The text is not a condition (an unknown character or attribute,
            unbalanced parentheses, a ``*`` outside a quantifier, a quantifier without a
            pattern, a comparison without a number, ...).
    """
    return _Parser(text).parse()


def references(expr: Expr) -> set[str]:
    """The step names and funnel patterns an expression mentions.

    Args:
        expr: A parsed condition.

    Returns:
        Every atom's step and every quantifier's pattern (``"sim_*"`` as written), for the
        caller to check that each is one of the step's dependencies.

    Raises:
        TypeError: ``expr`` is not a condition node.
    """
    match expr:
        case Atom(step=step):
            return {step}
        case Not(operand=operand):
            return references(operand)
        case And(left=left, right=right) | Or(left=left, right=right):
            return references(left) | references(right)
        case AllOf() | AnyOf() | CountOf() | FractionOf():
            return {expr.pattern}
    raise TypeError(f"not a condition: {expr!r}")


# ---------------------------------------------------------------- evaluation

_T, _F, _U, _C = Verdict.TRUE, Verdict.FALSE, Verdict.UNDECIDED, Verdict.CANCELLED
# The first verdict of each list present among the operands wins. Invariant: UNDECIDED
# precedes every verdict that another operand could still overturn, which is what makes
# evaluation monotonic (a decided verdict never changes as more instances end).
_AND_PRIORITY = (_C, _U, _F, _T)
_OR_PRIORITY = (_T, _U, _F, _C)
_NOT = {_T: _F, _F: _T, _U: _U, _C: _C}


def _combine(priority: tuple[Verdict, ...], verdicts: Sequence[Verdict]) -> Verdict:
    return next(v for v in priority if v in verdicts)


def _check_state(state: str | None) -> None:
    if state is not None and state not in _MATCHES["terminal"]:
        raise ValueError(f"unknown step state {state!r}")


def _atom(attr: str, state: str | None) -> Verdict:
    _check_state(state)
    if state is None:
        return _U
    if state in _MATCHES[attr]:
        return _T
    return _C if state == "CANCELLED" else _F


def _exact(x: float) -> Fraction:
    # repr() is the shortest decimal that reads back as x: 0.9 becomes exactly 9/10.
    return Fraction(repr(x))


def _holds(expr: _Quantifier, matched: int, total: int) -> bool:
    match expr:
        case AllOf():
            return matched == total
        case AnyOf():
            return matched > 0
        case CountOf(op=op, threshold=k):
            return _COMPARE[op](Fraction(matched), Fraction(k))
        case FractionOf(op=op, threshold=x):
            return _COMPARE[op](Fraction(matched, total) if total else Fraction(0), _exact(x))


def _quantify(expr: _Quantifier, states: Sequence[str | None]) -> Verdict:
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
    answers = {_holds(expr, m, total) for m in counts}
    if len(answers) > 1:
        return _U
    return _T if answers.pop() else _F


def evaluate(expr: Expr, states: Callable[[str], Sequence[str | None]]) -> Verdict:
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
            return _combine(_AND_PRIORITY, [_atom(attr, s) for s in states(step)] or [_T])
        case Not(operand=operand):
            return _NOT[evaluate(operand, states)]
        case And(left=left, right=right):
            return _combine(_AND_PRIORITY, [evaluate(left, states), evaluate(right, states)])
        case Or(left=left, right=right):
            return _combine(_OR_PRIORITY, [evaluate(left, states), evaluate(right, states)])
        case AllOf() | AnyOf() | CountOf() | FractionOf():
            return _quantify(expr, states(expr.pattern))
    raise TypeError(f"not a condition: {expr!r}")
