"""The receive replay window of a transport keypair (whitepaper section 5.4.6).

Transport data messages travel over UDP, so they may arrive late, twice or out
of order. Each carries a 64-bit counter; the receiver accepts a counter at most
once, and only if it is not too far behind the greatest counter accepted so far.
This is the kernel's ``counter_validate`` (``drivers/net/wireguard/receive.c``),
an RFC 6479 bitmap: ``COUNTER_BITS_TOTAL`` bits kept as a ring of 64-bit words,
of which one word is redundant so that sliding forwards only ever clears whole
words. The usable window is therefore ``COUNTER_WINDOW_SIZE`` = 8128 counters.

Accept/reject results are identical to the kernel's, step for step (the kernel
self-test cases are in ``vectors/kernel_replay_counter.json``); equivalently, a
counter is accepted iff it is below ``REJECT_AFTER_MESSAGES``, was never
accepted before, and ``counter + COUNTER_WINDOW_SIZE >= greatest accepted``.

Checking and recording are separate on purpose: :meth:`check` answers without
changing anything (for a reader of captures, or a test), and
``Keypair.open`` calls :meth:`update` only after the Poly1305 tag verified, as
the kernel does (a message whose tag fails is a decryption failure whatever its
counter). Recording an unauthenticated counter would let anyone
who can send datagrams slide the window forward and make us drop real traffic.
"""

from __future__ import annotations

from .constants import COUNTER_BITS_TOTAL, COUNTER_WINDOW_SIZE, REJECT_AFTER_MESSAGES

__all__ = ["ReplayWindow"]

# The kernel's ring is COUNTER_BITS_TOTAL / BITS_PER_LONG = 128 words of 64 bits.
# We keep the same ring as a bytearray (8 bytes per word, little-endian bit
# order), so reading and writing one bit only ever handles small cached ints,
# and clearing words is a slice assignment. 1 KiB per window, allocated on the
# first accepted packet (a keypair that never receives costs nothing).
_WORD_BITS = 64
_WORD_SHIFT = 6
_WORDS = COUNTER_BITS_TOTAL // _WORD_BITS
_WORD_MASK = _WORDS - 1
_RING_BYTES = COUNTER_BITS_TOTAL // 8
#: The mask that turns a (shifted) counter into its byte of the ring.
BYTE_MASK = _RING_BYTES - 1
_ZEROS = bytes(_RING_BYTES)
_ONES = b"\xff" * _RING_BYTES

assert _WORDS & _WORD_MASK == 0, "the ring length must be a power of two"
assert COUNTER_WINDOW_SIZE == COUNTER_BITS_TOTAL - _WORD_BITS


class ReplayWindow:
    """Sliding window of accepted transport counters for one receiving keypair.

    Internally the state is the kernel's: ``counter`` is one more than the
    greatest counter accepted (0 when none was), and every counter is stored
    shifted by one, exactly as ``counter_validate`` does with ``++their_counter``,
    so bit positions and word clearing match the kernel's bitmap.

    The state is read-only to everyone but this class and
    ``Keypair.open_batch`` (session.py), which records a wake-up's run of
    consecutive counters with :meth:`update_run`, handles the common case of
    one message (the next counter, within the current 64-bit word) inline
    for speed, and calls :meth:`update` for everything else.
    """

    __slots__ = ("bitmap", "counter")

    def __init__(self) -> None:
        #: One more than the greatest counter accepted so far, 0 if none: the
        #: kernel's ``receiving_counter.counter``, which it prints as "max"
        #: when it drops a packet with an invalid nonce.
        self.counter = 0
        #: The ring of words (None until the first counter is accepted).
        self.bitmap: bytearray | None = None

    def reset(self) -> None:
        """Forget every counter, as for a freshly derived keypair."""
        self.counter = 0
        self.bitmap = None

    def check(self, counter: int) -> bool:
        """Would :meth:`update` accept ``counter`` now? Never changes state.

        Call it before decrypting: a replayed or too-old counter is dropped
        without spending ChaCha20-Poly1305 work on it.
        """
        # The kernel's other guard, counter->counter >= REJECT_AFTER_MESSAGES + 1,
        # can never hold here: only counters below the limit are ever recorded.
        if not 0 <= counter < REJECT_AFTER_MESSAGES:
            return False
        shifted = counter + 1
        current = self.counter
        if shifted > current:
            # Ahead of everything seen: update() would slide and accept.
            return True
        if shifted + COUNTER_WINDOW_SIZE < current:
            return False
        bitmap = self.bitmap
        assert bitmap is not None  # current > 0, so a packet was recorded
        return not (bitmap[(shifted >> 3) & BYTE_MASK] >> (shifted & 7)) & 1

    def update(self, counter: int) -> bool:
        """Accept and record ``counter``; False (and no change) if it is rejected.

        Call it only after the packet's AEAD tag verified (see the module
        docstring). It re-validates, because between :meth:`check` and here
        another packet with the same counter may have been accepted.
        """
        if not 0 <= counter < REJECT_AFTER_MESSAGES:
            return False
        shifted = counter + 1
        current = self.counter
        if shifted > current:
            bitmap = self.bitmap
            if bitmap is None:
                bitmap = self.bitmap = bytearray(_RING_BYTES)
            _slide(bitmap, current >> _WORD_SHIFT, shifted >> _WORD_SHIFT)
            self.counter = shifted
            # The bit is necessarily clear: its word was either just cleared or
            # is the current word, which holds only counters <= the old maximum.
            # This is the kernel's test_and_set_bit, which here always succeeds.
            bitmap[(shifted >> 3) & BYTE_MASK] |= 1 << (shifted & 7)
            return True
        if shifted + COUNTER_WINDOW_SIZE < current:
            return False
        bitmap = self.bitmap
        assert bitmap is not None  # current > 0, so a packet was recorded
        byte = (shifted >> 3) & BYTE_MASK
        bit = 1 << (shifted & 7)
        old = bitmap[byte]
        if old & bit:
            return False
        bitmap[byte] = old | bit
        return True

    def update_run(self, first: int, count: int) -> bool:
        """Accept and record the *count* consecutive counters from *first*,
        leaving the ring exactly as :meth:`update` of each in turn would; only
        for a run wholly ahead of every counter accepted so far, below
        ``REJECT_AFTER_MESSAGES`` and at most ``COUNTER_WINDOW_SIZE`` long
        (so no bit it sets is cleared by its own slide). False, and no
        change, for any other run: take it one counter at a time.

        What a bulk transfer's wake-up brings is such a run (the sender's
        counters in order), so ``Keypair.open_batch`` records it with one
        call after every tag in it verified.
        """
        if not (0 < count <= COUNTER_WINDOW_SIZE and first >= self.counter):
            return False
        shifted = first + count  # the last counter, shifted by one
        if shifted > REJECT_AFTER_MESSAGES:
            return False
        bitmap = self.bitmap
        if bitmap is None:
            bitmap = self.bitmap = bytearray(_RING_BYTES)
        _slide(bitmap, self.counter >> _WORD_SHIFT, shifted >> _WORD_SHIFT)
        self.counter = shifted
        low, high = (first + 1) & _BIT_MASK, shifted & _BIT_MASK
        if low <= high:
            _set_bits(bitmap, low, high)
        else:  # the run wraps around the ring's end
            _set_bits(bitmap, low, _BIT_MASK)
            _set_bits(bitmap, 0, high)
        return True

    def __repr__(self) -> str:
        greatest = self.counter - 1 if self.counter else None
        return f"<ReplayWindow greatest={greatest}>"


_BIT_MASK = COUNTER_BITS_TOTAL - 1


def _slide(bitmap: bytearray, index_current: int, index: int) -> None:
    """Sliding forwards from word *index_current* to word *index* (absolute
    word numbers): clear the words index_current+1 .. index of the ring, all
    of them if that is a whole ring or more. They held only counters now
    outside the window."""
    if index == index_current:
        return
    top = index - index_current
    if top >= _WORDS:
        bitmap[:] = _ZEROS
        return
    start = ((index_current + 1) & _WORD_MASK) << 3
    stop = start + (top << 3)
    if stop <= _RING_BYTES:
        bitmap[start:stop] = _ZEROS[: stop - start]
    else:
        bitmap[start:] = _ZEROS[: _RING_BYTES - start]
        bitmap[: stop - _RING_BYTES] = _ZEROS[: stop - _RING_BYTES]


def _set_bits(bitmap: bytearray, low: int, high: int) -> None:
    """Set the ring's bits *low* .. *high* (inclusive, low <= high)."""
    first, last = low >> 3, high >> 3
    if first == last:
        bitmap[first] |= ((2 << (high - low)) - 1) << (low & 7)
        return
    bitmap[first] |= (0xFF << (low & 7)) & 0xFF
    bitmap[first + 1 : last] = _ONES[: last - first - 1]
    bitmap[last] |= (2 << (high & 7)) - 1
