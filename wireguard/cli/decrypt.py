"""``python -m wireguard decrypt CAPTURE --keylog FILE`` (or ``--private-key``)
reads a pcap or pcapng of WireGuard's UDP datagrams and prints one line per
message; ``-w OUT.pcap`` writes the decrypted inner IP packets to a new
capture, ``--trace`` prints each handshake step as the ``walkthrough`` command
does. ``-w`` writes classic pcap, whose seconds are unsigned 32 bits: a packet
to be written at a time before 1970 or after 2106 (which a pcapng can hold) is
refused with one line naming its frame, as newer Wireshark's pcap writer
refuses it (Debian 12's editcap 4.0 wraps the seconds round), and OUT is then
left as it was.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import stat
import sys
from collections.abc import Iterator
from typing import IO, Any

from ..capture import (
    SECRETS_TYPE_WIREGUARD,
    PcapngWriter,
    PcapReader,
    PcapWriter,
    canonical_keylog,
    extract_udp,
    parse_keylog,
    unread_udp,
)
from ..config import ConfigError, check_access, read_key_file
from ..decrypt import CaptureDecryptor, KeyRing
from ..errors import CaptureCutShortError, CaptureFormatError, WireGuardError
from ..keys import PresharedKey
from . import PROG as _PROG
from . import CommandError

PROG = f"{_PROG} decrypt"

def _key_argument(text: str, what: str) -> bytes:
    """A key given as base64 or as the path of a file holding it, as ``wg``
    takes private keys from files: a key on a command line is visible to
    every user through ``ps``."""
    if os.path.isfile(text):
        # Read as every key file is: a file others can reach gets wg-quick's
        # warning, and an error never shows what is in it.
        try:
            return read_key_file(text, PresharedKey).raw
        except OSError as exc:
            raise CommandError(f"{what} {text}: {exc.strerror}") from None
        except ConfigError as exc:
            raise CommandError(f"{what} {exc}") from None
    try:
        return PresharedKey.from_base64(text).raw
    except WireGuardError as exc:  # its message never shows the text
        raise CommandError(f"{what}: {exc}, or the path of a file that holds one") from None


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("capture", metavar="CAPTURE", help="pcap or pcapng file of UDP traffic")
    parser.add_argument(
        "--keylog",
        metavar="FILE",
        action="append",
        default=[],
        help="key log (Wireshark's wg.keylog_file format); may be repeated",
    )
    parser.add_argument(
        "--private-key",
        metavar="KEY",
        action="append",
        default=[],
        help="a static private key, base64 or a file holding it; may be repeated",
    )
    parser.add_argument(
        "--psk",
        metavar="KEY",
        action="append",
        default=[],
        help="a preshared key to try, base64 or a file holding it; may be repeated",
    )
    parser.add_argument(
        "-w",
        "--write",
        metavar="OUT",
        help="write the decrypted inner IP packets to this capture (pcapng if OUT ends in "
        ".pcapng, else classic pcap)",
    )
    parser.add_argument(
        "--embed-keys",
        metavar="OUT.pcapng",
        help="write the capture itself as pcapng with the keys given (--keylog, --private-key) "
        "inside, as Decryption Secrets Blocks: one file that Wireshark opens decrypted "
        "(it holds private keys: created mode 0600)",
    )
    parser.add_argument(
        "--trace", action="store_true", help="print every handshake step, as walkthrough does"
    )
    parser.add_argument(
        "--port",
        type=int,
        action="append",
        default=[],
        help="only UDP datagrams from or to this port (default: any WireGuard-shaped datagram)",
    )


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``decrypt`` on the ``python -m wireguard`` sub-command set
    (the result of ``parser.add_subparsers()``); it sets ``func`` to a
    function of the parsed arguments that returns the exit status."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "decrypt",
        help="follow the handshakes in a capture and decrypt its transport data",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    _add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def _load_keys(args: argparse.Namespace) -> tuple[KeyRing, str]:
    """The keys to try, and the same as key log text (for --embed-keys)."""
    keys = KeyRing()
    texts: list[str] = []
    for path in args.keylog:
        check_access(path)  # a key log holds keys: wg-quick's warning if others can read it
        try:
            with open(path, encoding="ascii", errors="replace") as f:
                text = f.read()
        except OSError as exc:
            raise CommandError(f"--keylog {path}: {exc.strerror}") from None
        log = parse_keylog(text, name=path)
        if not len(log):
            raise CommandError(f"--keylog {path}: no WireGuard keys in it")
        keys.add_keylog(log)
        # Embedded as Wireshark reads it (it skips a line with a trailing space).
        texts.append(canonical_keylog(text, name=path))
    for text in args.private_key:
        raw = _key_argument(text, "--private-key")
        keys.add_static_private(raw)
        texts.append(f"LOCAL_STATIC_PRIVATE_KEY = {PresharedKey(raw).to_base64()}\n")
    for text in args.psk:
        # Not embedded: Wireshark ties a PRESHARED_KEY line to an ephemeral key.
        keys.add_psk(_key_argument(text, "--psk"))
    return keys, "".join(texts)


@contextlib.contextmanager
def _replacing(path: str, mode: int = 0o666) -> Iterator[IO[bytes]]:
    """A file to write *path*'s new contents to, which become *path* only if
    the block ends without an exception: a capture refused halfway (a time
    classic pcap cannot hold) leaves *path* as it was. (A capture cut short
    is not refused: what came before it is written.)

    The new contents are written next to *path* (the file a symbolic link
    names, if it is one) and renamed over it at the end, keeping an existing
    file's mode. What is not a regular file (``/dev/stdout``, a FIFO), and a
    directory where no file can be created, are written straight through."""
    target = os.path.realpath(path)
    try:
        st: os.stat_result | None = os.stat(target)
    except FileNotFoundError:
        st = None
    fd = -1
    if st is None or stat.S_ISREG(st.st_mode):
        directory, name = os.path.split(target)
        temporary = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.tmp")
        with contextlib.suppress(OSError):
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    if fd < 0:
        with open(path, "wb") as f:
            yield f
        return
    try:
        with os.fdopen(fd, "wb") as f:
            if st is not None:
                os.fchmod(f.fileno(), stat.S_IMODE(st.st_mode) & mode)
            yield f
        try:
            os.replace(temporary, target)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, path) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _decrypt(args: argparse.Namespace, out: IO[str]) -> int:
    keys, key_text = _load_keys(args)
    decryptor = CaptureDecryptor(keys, trace=args.trace)
    ports = set(args.port)
    writer: PcapWriter | PcapngWriter | None = None
    embedded: PcapngWriter | None = None
    secrets_seen = 0
    unread = {"cut short": 0, "fragment": 0}  # UDP packets extract_udp cannot read
    start: float | None = None
    cut: list[CaptureCutShortError] = []  # a capture cut short: what was read is kept
    try:
        reader = PcapReader(args.capture)
    except OSError as exc:
        raise CommandError(f"{args.capture}: {exc.strerror}") from None
    with reader:
        try:
            with contextlib.ExitStack() as stack:
                if args.write:
                    make = PcapngWriter if args.write.endswith(".pcapng") else PcapWriter
                    writer = make(stack.enter_context(_replacing(args.write)))
                if args.embed_keys:
                    embedded = PcapngWriter(stack.enter_context(_replacing(args.embed_keys, 0o600)))
                    if key_text:
                        embedded.write_secrets(key_text)
                for timestamp, packet in _until_cut_short(reader, cut):
                    # Key logs embedded in the pcapng (editcap --inject-secrets wg,...)
                    # come before the packets they open.
                    while secrets_seen < len(reader.secrets):
                        kind, data = reader.secrets[secrets_seen]
                        secrets_seen += 1
                        if kind == SECRETS_TYPE_WIREGUARD:
                            text = data.decode("ascii", "replace")
                            keys.add_keylog(parse_keylog(text, name=f"{args.capture} secrets"))
                            if embedded is not None:
                                embedded.write_secrets(canonical_keylog(text))
                    if embedded is not None:
                        try:
                            embedded.write_ip(timestamp, packet)
                        except CaptureFormatError as exc:
                            raise CommandError(
                                f"frame {reader.frames}: {exc}; {args.embed_keys} is not written"
                            ) from None
                    udp = extract_udp(packet)
                    if udp is None:
                        reason = unread_udp(packet)
                        if reason is not None:
                            unread[reason] += 1
                        continue
                    src, dst, payload = udp
                    if ports and src[1] not in ports and dst[1] not in ports:
                        continue
                    for record in decryptor.feed_all(reader.frames, timestamp, src, dst, payload):
                        if start is None:
                            start = timestamp
                        print(record.describe(start), file=out)
                        for title, trace in record.traces:
                            print(f"     == {title} ==", file=out)
                            print(_indent(trace.format(), "     "), file=out)
                        if writer is not None and record.inner:
                            try:
                                writer.write_ip(timestamp, record.inner)
                            except CaptureFormatError as exc:
                                raise CommandError(
                                    f"frame {reader.frames}: {exc}; {args.write} is not written"
                                ) from None
        except BrokenPipeError:
            raise  # our output's reader left (see cli._run)
        except OSError as exc:
            where = exc.filename or args.write or "standard output"
            raise CommandError(f"{where}: {exc.strerror}") from None
    s = decryptor.stats
    notes = [
        f"{_plural(s[key], noun)} forgotten"
        for key, noun in (
            ("forgotten initiations", "unanswered initiation"),
            ("forgotten sessions", "transport key"),
            ("forgotten mac1s", "cookie-reply mac1"),
        )
        if s[key]
    ]
    if unread["cut short"]:
        notes.append(
            f"{_plural(unread['cut short'], 'UDP packet')} cut short by the capture's "
            "snap length, not read"
        )
    if unread["fragment"]:
        notes.append(f"{_plural(unread['fragment'], 'UDP fragment')} not read (no reassembly)")
    if s["gso datagrams"]:
        notes.append(
            f"{_plural(s['gso datagrams'], 'UDP GSO datagram')} captured before segmentation,"
            " split into its messages"
        )
    print(
        f"{_plural(s['messages'], 'WireGuard message')}, "
        f"{_plural(s['handshakes'], 'handshake')} followed, "
        f"{s['decrypted']} of {_plural(s['transport'], 'transport data message')} decrypted"
        + "".join(f"; {text}" for text in notes),
        file=out,
    )
    if cut:
        # As tshark does with a file cut short: what came before is decrypted
        # (and written), then the error, and a failing exit status.
        kept = f"; {args.write} holds what came before" if args.write else ""
        raise CommandError(f"{cut[0]}{kept}")
    return 0


def _until_cut_short(
    reader: PcapReader, cut: list[CaptureCutShortError]
) -> Iterator[tuple[float, bytes]]:
    """The reader's packets up to where the file is cut short, if it is
    (the error is put in *cut*); any other format error passes."""
    packets = iter(reader)
    while True:
        try:
            item = next(packets)
        except StopIteration:
            return
        except CaptureCutShortError as exc:
            cut.append(exc)
            return
        yield item


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def run(args: argparse.Namespace, *, out: IO[str] | None = None) -> int:
    """Run ``decrypt`` on parsed arguments (output on *out*, default
    stdout); bad input raises :class:`CommandError`."""
    return _decrypt(args, out if out is not None else sys.stdout)
