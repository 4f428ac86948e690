"""A transport keypair (whitepaper section 5.4.6): the two keys a handshake
derived, the send counter, padding, the replay window, age and limits, and
the only code that seals and opens transport data messages.

As boringtun's ``noise/session.rs``: :meth:`Keypair.seal` and
:meth:`Keypair.open` (and their batch forms, for a run of packets on one
keypair) are the only callers of the transport AEAD, and opening does the
replay check, after the tag verified, so a forged message never moves the
window. Written for the per-packet path: one ChaCha20-Poly1305 object per
direction for the life of the keypair, the header packed with one struct
call, and in :meth:`Keypair.open_batch` a wake-up's run of consecutive
counters opened and recorded as a whole, and otherwise the replay window's
common case (the next counter, within the window's current 64-bit word)
inline.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from itertools import islice, repeat
from operator import itemgetter

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .constants import (
    COUNTER_WINDOW_SIZE,
    MESSAGE_PADDING_MULTIPLE,
    MESSAGE_TRANSPORT_DATA,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    TRANSPORT_MIN_LEN,
)
from .crypto import aead_nonce
from .errors import DecryptionError, LocalProtocolError, ReplayError
from .handshake import HandshakeResult
from .replay import BYTE_MASK, ReplayWindow

_header = struct.Struct("<IIQ")
_pack_header = _header.pack
_unpack_counter = struct.Struct("<Q").unpack_from
_unpack_header = _header.unpack_from
_ZEROS = bytes(MESSAGE_PADDING_MULTIPLE)
_message_of, _source_of = itemgetter(0), itemgetter(1)
_header_of, _body_of = itemgetter(slice(0, 16)), itemgetter(slice(16, None))
_NONE = repeat(None)  # no associated data, for every message
# Keypair.open_reads' readers, by (datagrams, datagram size): the header
# reader, and the slices of the bodies of all but the last datagram. A GRO
# read's size is the sender's, so few are in use; bounded, whatever a peer
# sends.
_SegmentReader = tuple[Callable[[bytes | bytearray], tuple[int, ...]], tuple[slice, ...]]
_segment_readers: dict[tuple[int, int], _SegmentReader] = {}
_SEGMENT_READERS_KEPT = 256


def _segment_reader(count: int, size: int) -> _SegmentReader:
    reader = _segment_readers.get((count, size))
    if reader is None:
        if len(_segment_readers) >= _SEGMENT_READERS_KEPT:
            _segment_readers.clear()
        headers = struct.Struct("<" + f"QQ{size - 16}x" * (count - 1) + "QQ").unpack_from
        starts, ends = range(16, (count - 1) * size, size), range(size, count * size, size)
        bodies = tuple(map(slice, starts, ends))
        reader = _segment_readers[count, size] = headers, bodies
    return reader


def padding_length(n: int, mtu: int | None) -> int:
    """Zero bytes to add to an *n*-byte packet: up to a multiple of 16, but
    never beyond the MTU, so padding cannot make a packet that fits the
    tunnel too big for it; a packet longer than the MTU is padded by what is
    left of it modulo the MTU (kernel send.c calculate_skb_padding,
    wireguard-go calculatePaddingSize). No MTU (None or 0): to 16."""
    if mtu and n > mtu:
        n %= mtu
    pad = -n & 15
    if pad and mtu and n + pad > mtu:
        pad = mtu - n
    return pad


class KeypairExhausted(LocalProtocolError):
    """The keypair may not send any more (too old or too many messages)."""


class Keypair:
    """One direction pair of transport keys, with its indices and birthdate.

    ``local_index`` is the receiver index the peer puts on what it sends us;
    ``remote_index`` the one we put on what we send."""

    __slots__ = (
        "created",
        "is_initiator",
        "local_index",
        "receiving",
        "receiving_valid",
        "remote_index",
        "replay",
        "send_counter",
        "sending",
        "sending_valid",
    )

    def __init__(self, result: HandshakeResult, now: float) -> None:
        self.sending = ChaCha20Poly1305(result.sending_key)
        self.receiving = ChaCha20Poly1305(result.receiving_key)
        self.local_index = result.local_index
        self.remote_index = result.remote_index
        self.is_initiator = result.is_initiator
        self.created = now
        self.send_counter = 0
        self.replay = ReplayWindow()
        self.sending_valid = True
        self.receiving_valid = True

    # --- sending ---------------------------------------------------------

    def can_send(self, now: float) -> bool:
        """REJECT_AFTER_TIME and REJECT_AFTER_MESSAGES (whitepaper 6.2): a
        keypair past either never sends again."""
        if self.sending_valid and (
            now - self.created >= REJECT_AFTER_TIME or self.send_counter >= REJECT_AFTER_MESSAGES
        ):
            self.sending_valid = False
        return self.sending_valid

    def seal(self, packet: bytes, mtu: int | None = None) -> bytes:
        """A complete transport data message carrying *packet* (empty for a
        keepalive), zero-padded as the kernel pads. The caller checks
        :meth:`can_send` first; past REJECT_AFTER_MESSAGES this raises
        :class:`KeypairExhausted`."""
        counter = self.send_counter
        if counter >= REJECT_AFTER_MESSAGES or not self.sending_valid:
            self.sending_valid = False
            raise KeypairExhausted("keypair may not send any more")
        # Counter first: a nonce is never used twice, whatever happens next.
        self.send_counter = counter + 1
        pad = padding_length(len(packet), mtu)
        if pad:
            packet += _ZEROS[:pad]
        return _pack_header(
            MESSAGE_TRANSPORT_DATA, self.remote_index, counter
        ) + self.sending.encrypt(aead_nonce(counter), packet, None)

    def seal_batch(self, packets: list[bytes], mtu: int | None, out: list[bytes]) -> None:
        """:meth:`seal` for each of *packets* in turn, appending the messages
        to *out*; stops early if the keypair reaches REJECT_AFTER_MESSAGES
        (the number of packets sealed is what *out* grew by)."""
        if not self.sending_valid:
            return
        counter = self.send_counter
        room = REJECT_AFTER_MESSAGES - counter
        if room < len(packets):
            packets = packets[: max(room, 0)]
            self.sending_valid = False  # the limit is reached within this run
        # Every counter of the run is taken before anything is sealed: a nonce
        # is never used twice, whatever happens next.
        self.send_counter = counter + len(packets)
        append = out.append
        encrypt, nonce, header = self.sending.encrypt, aead_nonce, _pack_header
        kind, remote, zeros = MESSAGE_TRANSPORT_DATA, self.remote_index, _ZEROS
        last_n = -1
        padding = b""
        for packet in packets:
            n = len(packet)
            if n != last_n:  # the padding, worked out once per packet size
                last_n = n
                padding = zeros[: padding_length(n, mtu)]
            if padding:
                packet += padding
            append(header(kind, remote, counter) + encrypt(nonce(counter), packet, None))
            counter += 1

    # --- receiving -------------------------------------------------------

    def can_receive(self, now: float) -> bool:
        """REJECT_AFTER_TIME: a keypair this old accepts nothing more. (The
        message limit needs no check here: the replay window never accepts a
        counter at or above REJECT_AFTER_MESSAGES.)"""
        # Pure: a refused datagram must leave the keypair as it was.
        return self.receiving_valid and now - self.created < REJECT_AFTER_TIME

    def open(self, message: bytes) -> bytes:
        """The padded packet inside transport data *message* (header
        included, its receiver index already matched to this keypair).
        Raises :class:`DecryptionError` if the tag does not verify and
        :class:`ReplayError` if the counter was seen or is too old; either
        way the keypair is unchanged. As in the kernel, the counter is
        checked against the window only after the tag verified: the window
        only ever moves for authenticated messages."""
        counter = _unpack_counter(message, 8)[0]
        try:
            plain = self.receiving.decrypt(aead_nonce(counter), message[16:], None)
        except InvalidTag:
            raise DecryptionError("transport tag did not verify") from None
        if not self.replay.update(counter):
            raise ReplayError(f"counter {counter} was already received or is too old")
        return plain

    def open_batch(
        self,
        datagrams: Sequence[tuple[bytes, object]],
        start: int,
        source: object,
        out: list[bytes],
    ) -> tuple[int, int, int, int]:
        """:meth:`open` for the run of transport messages in *datagrams*
        (``(message, source)`` pairs, as a socket gives them) that begins at
        *start*: it goes on while the messages carry this keypair's receiver
        index and come from *source*, and ends at the first that does not.
        What opened is appended to *out* (b"" for a keepalive). Returns (the
        index where the run ended, bytes of the messages accepted, how many
        failed the tag, how many were replays)."""
        index = start
        rx = failed = 0
        if len(datagrams) - start > 1:
            index, rx, failed = self._open_whole(datagrams, start, source, out)
            if index == len(datagrams):
                return index, rx, failed, 0
        append = out.append
        decrypt, nonce, unpack = self.receiving.decrypt, aead_nonce, _unpack_header
        window = self.replay
        update = window.update
        kind, local, min_len = MESSAGE_TRANSPORT_DATA, self.local_index, TRANSPORT_MIN_LEN
        limit, byte_mask = REJECT_AFTER_MESSAGES, BYTE_MASK
        top, bitmap = window.counter, window.bitmap
        replayed = 0
        try:
            for message, sender in islice(datagrams, index, None):
                if sender != source or len(message) < min_len:
                    break
                word, receiver, counter = unpack(message)
                if word != kind or receiver != local:
                    break
                index += 1
                try:
                    plain = decrypt(nonce(counter), message[16:], None)
                except InvalidTag:
                    failed += 1
                    continue
                # The replay window, after the tag verified. Its common case
                # (the next counter, in the window's current 64-bit word, so
                # no word to clear and the bit necessarily clear) inline, the
                # window's counter written back once at the end; anything
                # else through ReplayWindow.update.
                shifted = counter + 1
                if top < shifted < limit and shifted >> 6 == top >> 6 and bitmap is not None:
                    top = shifted
                    bitmap[(shifted >> 3) & byte_mask] |= 1 << (shifted & 7)
                else:
                    window.counter = top
                    if not update(counter):
                        replayed += 1
                        continue
                    top, bitmap = window.counter, window.bitmap
                rx += len(message)
                append(plain)
        finally:
            window.counter = top
        return index, rx, failed, replayed

    def _open_whole(
        self,
        datagrams: Sequence[tuple[bytes, object]],
        start: int,
        source: object,
        out: list[bytes],
    ) -> tuple[int, int, int]:
        """:meth:`open_batch`'s common case, the rest of *datagrams* from
        *start* checked and opened as a whole: every message from *source*, a
        transport message to this keypair, and their counters consecutive and
        all ahead of the replay window, as a bulk transfer's wake-up brings
        them. The checks run as C loops over the whole list (``map``,
        ``list.count``, one ``struct`` unpack of the headers laid end to end),
        so no Python runs per message. Returns (where the per-message loop is
        to go on, bytes of the messages accepted, how many failed the tag):
        *start* and nothing done if any check fails; if a tag fails, what
        opened before it is accepted, the failed one is counted, and the loop
        goes on after it (so no message is decrypted twice)."""
        rest = datagrams[start:] if start else datagrams
        count = len(rest)
        if count > COUNTER_WINDOW_SIZE or list(map(_source_of, rest)).count(source) != count:
            return start, 0, 0
        messages = list(map(_message_of, rest))
        lengths = list(map(len, messages))
        if min(lengths) < TRANSPORT_MIN_LEN:
            return start, 0, 0
        fields = struct.unpack(f"<{2 * count}Q", b"".join(map(_header_of, messages)))
        opened, failed = self._open_consecutive(fields, map(_body_of, messages), out)
        if opened == count:
            return start + count, sum(lengths), 0
        return start + opened + failed, sum(lengths[:opened]), failed

    def open_reads(
        self, reads: Sequence[tuple[bytes | bytearray, int, int]], out: list[bytes]
    ) -> tuple[int, int, int]:
        """:meth:`open_batch`'s whole-run case for the datagrams of UDP GRO
        reads, opened where they lie: each read is (buffer, length, size),
        its first *length* bytes a datagram every *size* bytes (the last may
        be shorter), all of them from one source. Each datagram is decrypted
        from a view of its buffer (no copy); each read's headers are taken
        with one ``struct`` call. Returns (how many datagrams, counted across
        the reads in order, were opened and accepted, their bytes, 1 if the
        datagram after those failed its tag, else 0): none, if they are not
        one run of transport messages to this keypair with consecutive
        counters ahead of the replay window; fewer than all, if a tag failed.
        What was neither opened nor failed is for :meth:`open_batch`."""
        fields: list[int] = []
        counts: list[int] = []
        slices: list[tuple[slice, ...]] = []
        for buffer, length, size in reads:
            count = -(-length // size)
            if size < TRANSPORT_MIN_LEN or length - (count - 1) * size < TRANSPORT_MIN_LEN:
                return 0, 0, 0
            headers, bodies = _segment_reader(count, size)
            fields += headers(buffer)
            counts.append(count)
            slices.append(bodies)
        total = len(fields) >> 1
        if total > COUNTER_WINDOW_SIZE:
            return 0, 0, 0
        views = [memoryview(buffer) for buffer, _, _ in reads]
        try:
            # Each read's bodies: the cached slices, then the last datagram's.
            cut: list[memoryview] = []
            for view, read, count, bodies in zip(views, reads, counts, slices, strict=True):
                cut += map(view.__getitem__, bodies)
                cut.append(view[(count - 1) * read[2] + 16 : read[1]])
            opened, failed = self._open_consecutive(tuple(fields), iter(cut), out)
            del cut
        finally:
            for view in views:
                view.release()
        rx = 0
        left = opened
        for (_, length, size), count in zip(reads, counts, strict=False):
            if left >= count:
                rx += length
                left -= count
            else:
                rx += left * size  # all but a read's last are full-size
                break
        return opened, rx, failed

    def _open_consecutive(
        self, fields: tuple[int, ...], bodies: Iterator[bytes | memoryview], out: list[bytes]
    ) -> tuple[int, int]:
        """The whole-run open of :meth:`_open_whole` and
        :meth:`open_reads`, given each message's header as two little-endian
        64-bit fields (type and receiver index, counter) and their bodies:
        the kind, the receiver index and the counters checked over the whole
        run, the decrypts in one ``map``, the replay window recorded once.
        Returns (how many were opened and accepted, appended to *out*; 1 if
        the message after them failed its tag, else 0); (0, 0) if a check
        failed."""
        count = len(fields) >> 1
        if fields[::2].count(MESSAGE_TRANSPORT_DATA | self.local_index << 32) != count:
            return 0, 0  # another kind of message, or another receiver index
        counters = fields[1::2]
        first = counters[0]
        window = self.replay
        if (
            first < window.counter
            or first + count > REJECT_AFTER_MESSAGES
            or counters != tuple(range(first, first + count))
        ):
            return 0, 0
        plains: list[bytes] = []
        # extend keeps what it appended before an exception: the messages
        # before a failed tag are accepted, the failed one is counted and
        # skipped by the callers, and those after it are opened one by one.
        with suppress(InvalidTag):
            plains.extend(map(self.receiving.decrypt, map(aead_nonce, counters), bodies, _NONE))
        opened = len(plains)
        if opened:
            accepted = window.update_run(first, opened)
            assert accepted  # the run was checked to be ahead of the window above
            out.extend(plains)
        return opened, int(opened < count)
