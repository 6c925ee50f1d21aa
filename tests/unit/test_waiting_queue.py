"""``Waiting``, the supervisor's queue: a value (no state made earlier ever changes), with
O(1) push and pop along one line of states."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from engine.machines.waiting import Waiting


def test_earlier_states_never_see_later_pushes_or_pops() -> None:
    a = Waiting([(0, "a")])
    b = a.push((1, "b"))
    c = b.push((2, "c"))
    (_, first), d = c.pop()
    assert ([(0, "a")], [(0, "a"), (1, "b")]) == (list(a), list(b))
    assert ("a", [(1, "b"), (2, "c")]) == (first, list(d))
    # A push onto an older state (not where the shared list ends) copies: c is unchanged.
    e = b.push((9, "x"))
    assert [(0, "a"), (1, "b"), (9, "x")] == list(e)
    assert [(0, "a"), (1, "b"), (2, "c")] == list(c)


def test_insert_and_without_copy() -> None:
    q = Waiting([(0, "a"), (1, "b")])
    assert [(0, "a"), (-5, "r"), (1, "b")] == list(q.insert(1, (-5, "r")))
    assert [(1, "b")] == list(q.without("a"))
    assert [(0, "a"), (1, "b")] == list(q)


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 3)), max_size=3000))
def test_it_behaves_as_a_list_through_pushes_pops_and_compaction(ops: list[tuple[bool, int]]) -> None:
    """Against a plain list, along one line of states (what the supervisor does), with
    an earlier state checked after every step."""
    q, model, n = Waiting(), [], 0
    old, old_model = q, list(model)
    for push, _ in ops:
        if push or not model:
            q, model = q.push((n, f"s{n}")), [*model, (n, f"s{n}")]
            n += 1
        else:
            entry, q = q.pop()
            assert model[0] == entry
            model = model[1:]
        assert model == list(q) and len(model) == len(q) and bool(model) == bool(q)
        assert old_model == list(old)
        if n % 97 == 0:
            old, old_model = q, list(model)


def test_a_long_queue_is_compacted_and_keeps_its_order() -> None:
    q = Waiting((i, f"s{i}") for i in range(5000))
    for i in range(4000):
        entry, q = q.pop()
        assert i == entry[0]
    assert [(i, f"s{i}") for i in range(4000, 5000)] == list(q)
    assert len(q._items) < 5000  # noqa: SLF001 - compacted
