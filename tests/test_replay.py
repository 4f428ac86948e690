"""The receive replay window against the kernel self-test and a set-based model."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import load_vector
from wireguard.constants import COUNTER_BITS_TOTAL, COUNTER_WINDOW_SIZE, REJECT_AFTER_MESSAGES
from wireguard.replay import ReplayWindow

VECTORS = load_vector("kernel_replay_counter.json")
TOTAL_STEPS = 48_813


def expand(sequence: list) -> Iterator[tuple[int, bool]]:
    """Steps of one sequence as (counter, accepted), ranges expanded."""
    for step in sequence:
        if isinstance(step, dict):
            start, stop, stride = step["range"]
            for counter in range(start, stop, stride):
                yield counter, step["accepted"]
        else:
            counter, accepted = step
            yield counter, accepted


class ModelWindow:
    """Obviously correct window, from the vector file's description: a counter
    is accepted at most once, only if it is not older than COUNTER_WINDOW_SIZE
    behind the greatest counter accepted so far, and only if it is below
    REJECT_AFTER_MESSAGES."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.greatest: int | None = None

    def check(self, counter: int) -> bool:
        if not 0 <= counter < REJECT_AFTER_MESSAGES or counter in self.seen:
            return False
        return self.greatest is None or counter + COUNTER_WINDOW_SIZE >= self.greatest

    def update(self, counter: int) -> bool:
        if not self.check(counter):
            return False
        self.seen.add(counter)
        self.greatest = counter if self.greatest is None else max(self.greatest, counter)
        return True


def test_vector_constants_match_ours() -> None:
    assert VECTORS["COUNTER_BITS_TOTAL"] == COUNTER_BITS_TOTAL
    assert VECTORS["COUNTER_WINDOW_SIZE"] == COUNTER_WINDOW_SIZE
    assert VECTORS["REJECT_AFTER_MESSAGES"] == REJECT_AFTER_MESSAGES
    assert sum(1 for seq in VECTORS["sequences"] for _ in expand(seq)) == TOTAL_STEPS


@pytest.mark.parametrize("number", range(len(VECTORS["sequences"])))
def test_kernel_selftest_sequence(number: int) -> None:
    window = ReplayWindow()
    for step, (counter, accepted) in enumerate(expand(VECTORS["sequences"][number])):
        assert window.check(counter) == accepted, (number, step, counter)
        assert window.update(counter) == accepted, (number, step, counter)


@pytest.mark.parametrize("number", range(len(VECTORS["sequences"])))
def test_model_agrees_with_kernel_selftest(number: int) -> None:
    # The model is only a good oracle for the property tests if it is right.
    model = ModelWindow()
    for step, (counter, accepted) in enumerate(expand(VECTORS["sequences"][number])):
        assert model.update(counter) == accepted, (number, step, counter)


def test_reset_forgets_everything() -> None:
    window = ReplayWindow()
    for counter in (0, 1, 50_000):
        assert window.update(counter)
    assert window.counter == 50_001
    assert not window.check(1)
    window.reset()
    assert window.counter == 0
    for counter in (1, 0, 50_000):
        assert window.update(counter)


def test_rejects_out_of_range_counters() -> None:
    window = ReplayWindow()
    for counter in (-1, REJECT_AFTER_MESSAGES, 2**64 - 1, 2**64, 2**80):
        assert not window.check(counter)
        assert not window.update(counter)
    assert window.counter == 0
    assert window.update(REJECT_AFTER_MESSAGES - 1)


# Counters drawn relative to the greatest accepted one, so that the window
# edges, word boundaries and ring wrap-around are hit often.
EDGES = [
    -COUNTER_BITS_TOTAL - 1,
    -COUNTER_BITS_TOTAL,
    -COUNTER_WINDOW_SIZE - 1,
    -COUNTER_WINDOW_SIZE,
    -COUNTER_WINDOW_SIZE + 1,
    -65,
    -64,
    -63,
    -1,
    0,
    1,
    63,
    64,
    65,
    COUNTER_WINDOW_SIZE,
    COUNTER_BITS_TOTAL,
    COUNTER_BITS_TOTAL + 64,
    2 * COUNTER_BITS_TOTAL,
]
offsets = st.one_of(
    st.sampled_from(EDGES),
    st.integers(-200, 200),
    st.integers(-2 * COUNTER_BITS_TOTAL, 2 * COUNTER_BITS_TOTAL),
    st.integers(0, 2**40),
)
bases = st.sampled_from([0, 1, 60, 8191, 2**32, REJECT_AFTER_MESSAGES - 3 * COUNTER_BITS_TOTAL])


# A run accepts a dense stretch of counters, so that stale bits are left all
# over the ring and a slide that forgets to clear a word would show.
runs = st.one_of(
    st.just(1),
    st.just(1),
    st.integers(1, 100),
    st.integers(COUNTER_WINDOW_SIZE, COUNTER_BITS_TOTAL + 200),
)


@settings(max_examples=200, deadline=None)
@given(
    base=bases,
    moves=st.lists(st.tuples(offsets, st.booleans(), runs), max_size=60),
)
def test_matches_model(base: int, moves: list[tuple[int, bool, int]]) -> None:
    window, model = ReplayWindow(), ModelWindow()
    for offset, check_first, run in moves:
        anchor = base if model.greatest is None else model.greatest
        for counter in range(anchor + offset, anchor + offset + run):
            expected = model.check(counter)
            if check_first:
                assert window.check(counter) == expected
            assert window.update(counter) == model.update(counter) == expected
        greatest = model.greatest
        assert window.counter == (0 if greatest is None else greatest + 1)


@pytest.mark.parametrize("fill", [COUNTER_BITS_TOTAL, COUNTER_BITS_TOTAL + 3000, 40_000])
@pytest.mark.parametrize(
    "jump", [1, 63, 64, 65, 500, 4000, 8127, 8128, 8129, 8191, 8192, 8193, 20_000]
)
def test_dense_fill_then_jump(fill: int, jump: int) -> None:
    # After a jump the skipped words must read as empty even though the ring
    # slots they reuse were full, including when the cleared span wraps.
    window, model = ReplayWindow(), ModelWindow()
    for counter in range(fill):
        assert window.update(counter) == model.update(counter)
    top = fill - 1 + jump
    assert window.update(top) and model.update(top)
    for counter in range(top - COUNTER_BITS_TOTAL, top + 70):
        assert window.check(counter) == model.check(counter), counter
        assert window.update(counter) == model.update(counter), counter


@settings(max_examples=200, deadline=None)
@given(
    base=bases,
    moves=st.lists(st.tuples(offsets, st.lists(offsets, max_size=4)), max_size=200),
)
def test_check_never_changes_state(base: int, moves: list[tuple[int, list[int]]]) -> None:
    # Two windows see the same updates; one also sees arbitrary check() calls
    # in between (as unauthenticated packets would cause). They must not differ.
    probed, plain = ReplayWindow(), ReplayWindow()
    anchor = base
    for offset, probes in moves:
        for probe in probes:
            before = probed.counter
            probed.check(anchor + probe)
            assert probed.counter == before
        counter = anchor + offset
        assert probed.check(counter) == plain.check(counter)
        assert probed.update(counter) == plain.update(counter)
        assert probed.counter == plain.counter
        if plain.counter:
            anchor = plain.counter - 1
    # Every counter that matters for future decisions gives the same answer.
    top = plain.counter
    for counter in range(max(0, top - COUNTER_BITS_TOTAL), top + 64):
        assert probed.check(counter) == plain.check(counter)


def test_in_order_then_every_replay_rejected() -> None:
    window = ReplayWindow()
    total = 3 * COUNTER_BITS_TOTAL + 17
    assert all(window.update(counter) for counter in range(total))
    assert not any(window.check(counter) for counter in range(total))
    assert not any(window.update(counter) for counter in range(total))


@settings(max_examples=300, deadline=None)
@given(
    base=bases,
    moves=st.lists(
        st.tuples(
            offsets,
            st.one_of(
                st.integers(-2, 70),
                st.sampled_from([COUNTER_WINDOW_SIZE - 1, COUNTER_WINDOW_SIZE]),
                st.sampled_from([COUNTER_WINDOW_SIZE + 1, COUNTER_BITS_TOTAL]),
            ),
            st.booleans(),
        ),
        max_size=40,
    ),
)
def test_update_run_is_update_one_by_one(base: int, moves: list[tuple[int, int, bool]]) -> None:
    # update_run(first, count) takes a run of consecutive counters all ahead
    # of the window at once; it must leave the ring exactly as update() of
    # each in turn would (the per-packet path reads the same bits after it),
    # and refuse, changing nothing, any run update() would not take whole.
    run, single, model = ReplayWindow(), ReplayWindow(), ModelWindow()
    for offset, count, dense in moves:
        anchor = base if model.greatest is None else model.greatest
        first = anchor + offset
        counters = range(first, first + count)
        whole = (
            0 < count <= COUNTER_WINDOW_SIZE
            and first >= run.counter
            and first + count <= REJECT_AFTER_MESSAGES
        )
        before = (run.counter, None if run.bitmap is None else bytes(run.bitmap))
        assert run.update_run(first, count) == whole
        if not whole:
            assert (run.counter, None if run.bitmap is None else bytes(run.bitmap)) == before
            if dense:  # move on one by one, so later runs meet stale bits
                for counter in counters:
                    assert run.update(counter) == single.update(counter) == model.update(counter)
            continue
        for counter in counters:
            assert model.check(counter)
            assert single.update(counter) and model.update(counter)
        assert run.counter == single.counter == model.greatest + 1
        assert run.bitmap == single.bitmap
    top = single.counter
    for counter in range(max(0, top - COUNTER_BITS_TOTAL), top + 64):
        assert run.check(counter) == single.check(counter) == model.check(counter)
