"""The ``when:`` condition language of a step: its grammar, parser and syntax tree.

Atoms ``<step>.<attr>`` (``attr``: completed, failed, timedout, cancelled, skipped, terminal)
combine with ``not``, ``and``, ``or`` (binding in that order) and parentheses; quantifiers
``all(p.attr)``, ``any(p.attr)``, ``count(p.attr) OP k`` (an integer) and
``fraction(p.attr) OP x`` (in [0, 1]), ``OP`` one of ``>= > <= < == !=``, range over a funnel
pattern (a ``*`` is allowed only there). ``parse`` builds an AST of frozen tagged Structs
and ``references`` lists the names it mentions (each must be a dependency, which the spec
loader checks). Nothing here judges a condition: the step machine does, against the
dependencies' states, with ``engine.machines.conditions.evaluate``.
"""

from __future__ import annotations

import re
from typing import Literal, TypeAlias, get_args

from msgspec import Struct

__all__ = [
    "ATTRIBUTES", "AllOf", "And", "AnyOf", "Atom", "Attr", "CmpOp", "ConditionError", "CountOf",
    "Expr", "FractionOf", "Not", "Or", "Quantifier", "parse", "references",
]

Attr: TypeAlias = Literal["completed", "failed", "timedout", "cancelled", "skipped", "terminal"]
CmpOp: TypeAlias = Literal[">=", ">", "<=", "<", "==", "!="]

ATTRIBUTES: tuple[str, ...] = get_args(Attr)
"""The attributes an atom may name, in the order error messages list them."""


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
"""A parsed condition: any node of the syntax tree."""
Quantifier: TypeAlias = AllOf | AnyOf | CountOf | FractionOf
"""The nodes that range over a funnel pattern."""

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
        self.index = 0

    @property
    def tok(self) -> _Token:
        return self.tokens[self.index]

    def error(self, reason: str, tok: _Token | None = None) -> ConditionError:
        return ConditionError(self.text, (self.tok if tok is None else tok).pos, reason)

    def unexpected(self, wanted: str) -> ConditionError:
        found = "end of condition" if self.tok.kind == _END else repr(self.tok.text)
        return self.error(f"expected {wanted}, found {found}")

    def expect(self, kind: str, wanted: str) -> _Token:
        if self.tok.kind != kind:
            raise self.unexpected(wanted)
        self.index += 1
        return self.tokens[self.index - 1]

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
            self.index += 1
            expr = Or(left=expr, right=self.and_())
        return expr

    def and_(self) -> Expr:
        expr = self.not_()
        while self.is_word("and"):
            self.index += 1
            expr = And(left=expr, right=self.not_())
        return expr

    def not_(self) -> Expr:
        if self.is_word("not"):
            self.index += 1
            return Not(operand=self.not_())
        if self.tok.kind == "(":
            self.index += 1
            expr = self.or_()
            self.expect(")", "')'")
            return expr
        if self.tok.kind == "name" and self.tok.text in _QUANTIFIERS:
            if self.tokens[self.index + 1].kind == "(":
                return self.quantifier()
        step, attr = self.step_attr(quantified=False)
        return Atom(step=step, attr=attr)

    def step_attr(self, *, quantified: bool) -> tuple[str, Attr]:
        if self.tok.kind != "name" or self.tok.text in _KEYWORDS:
            raise self.unexpected("a funnel pattern" if quantified else "a step name")
        name = self.tok
        if "*" in name.text and not quantified:
            raise self.error(f"pattern {name.text!r} outside all/any/count/fraction")
        self.index += 1
        self.expect(".", f"'.' and an attribute after {name.text!r}")
        attr = self.expect("name", "an attribute")
        if attr.text not in ATTRIBUTES:
            known = ", ".join(ATTRIBUTES)
            raise self.error(f"unknown attribute {attr.text!r} (expected one of {known})", attr)
        return name.text, attr.text  # type: ignore[return-value]  # checked just above

    def quantifier(self) -> Quantifier:
        kind = self.tok.text
        self.index += 2  # the keyword and its '('
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
        self.index += 1
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
