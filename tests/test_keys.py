"""Keys and the genkey / pubkey / genpsk commands, checked against `wg`."""

from __future__ import annotations

import base64
import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import need_tool
from wireguard.errors import KeyFormatError
from wireguard.keys import PresharedKey, PrivateKey, PublicKey

RFC7748_ALICE = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
RFC7748_ALICE_PUB = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"


def run_cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wireguard", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_public_from_private_rfc7748():
    key = PrivateKey(bytes.fromhex(RFC7748_ALICE))
    assert key.public_key.raw.hex() == RFC7748_ALICE_PUB


@given(st.binary(min_size=32, max_size=32))
def test_base64_round_trip(raw):
    for cls in (PrivateKey, PublicKey, PresharedKey):
        key = cls(raw)
        text = key.to_base64()
        assert len(text) == 44 and text.endswith("=")
        assert text == base64.b64encode(raw).decode()
        assert cls.from_base64(text) == key
        assert cls.from_hex(key.to_hex()) == key


@pytest.mark.parametrize(
    "text",
    [
        "",
        "abc",
        "A" * 43,
        "A" * 44,  # no '='
        "A" * 42 + "B=",  # non-zero padding bits
        "A" * 40 + "AA==",
        "*" * 43 + "=",
        "é" * 43 + "=",
    ],
)
def test_bad_base64_rejected(text):
    with pytest.raises(KeyFormatError):
        PublicKey.from_base64(text)


@pytest.mark.parametrize("raw", [b"", b"x" * 31, b"x" * 33])
def test_bad_length_rejected(raw):
    with pytest.raises(KeyFormatError):
        PrivateKey(raw)


def test_generate_is_clamped_and_secrets_hidden():
    key = PrivateKey.generate()
    assert key.raw[0] & 7 == 0 and key.raw[31] >> 6 == 1
    assert key.clamped() == key
    assert key.to_base64() not in repr(key)
    assert PresharedKey.generate().to_base64() not in repr(PresharedKey.zero())


def test_unclamped_private_key_same_public_key():
    raw = b"\xff" * 32
    assert PrivateKey(raw).public_key == PrivateKey(raw).clamped().public_key


def test_equality_is_typed():
    raw = bytes(range(32))
    assert PublicKey(raw) == PublicKey(raw)
    assert PublicKey(raw) != PresharedKey(raw)
    assert len({PublicKey(raw), PublicKey(raw)}) == 1


def test_cli_genkey_pubkey_genpsk():
    private = run_cli("genkey")
    assert private.returncode == 0
    key = PrivateKey.from_base64(private.stdout)
    assert key.clamped() == key
    public = run_cli("pubkey", stdin=private.stdout)
    assert public.returncode == 0
    assert public.stdout.strip() == key.public_key.to_base64()
    psk = run_cli("genpsk")
    assert psk.returncode == 0 and len(psk.stdout.strip()) == 44


@pytest.mark.parametrize("stdin", ["", "not a key\n", "A" * 44 + "\n"])
def test_cli_pubkey_bad_input(stdin):
    result = run_cli("pubkey", stdin=stdin)
    assert result.returncode == 1
    assert result.stdout == ""
    assert "Key is not the correct length or format" in result.stderr


@pytest.mark.parametrize(
    "layout",
    [
        *("{k}", "{k}\n", "{k} \t\r\n\n", "{k}\0\n"),  # whitespace and NULs after: taken
        *(" {k}\n", "\t{k}", "\n{k}", "{k}x\n", "{k}\n{k}\n", "{k}\u00a0"),  # refused
    ],
)
def test_pubkey_takes_what_wg_pubkey_takes(layout: str) -> None:
    # pubkey.c: exactly 44 characters of key first, then only whitespace.
    wg = need_tool("wg")
    text = layout.format(k=PrivateKey.generate().to_base64())
    theirs = subprocess.run([wg, "pubkey"], input=text, capture_output=True, text=True)
    ours = run_cli("pubkey", stdin=text)
    assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout)
    assert ours.stderr.split(": ", 1)[-1] == theirs.stderr.split(": ", 1)[-1]


def test_pubkey_agrees_with_wg():
    wg = need_tool("wg")
    for _ in range(20):
        private = base64.b64encode(os.urandom(32)).decode() + "\n"
        theirs = subprocess.run([wg, "pubkey"], input=private, capture_output=True, text=True)
        ours = run_cli("pubkey", stdin=private)
        assert theirs.returncode == 0
        assert ours.stdout == theirs.stdout
    # and wg accepts what our genkey prints
    ours = run_cli("genkey").stdout
    theirs = subprocess.run([wg, "pubkey"], input=ours, capture_output=True, text=True)
    assert theirs.stdout.strip() == PrivateKey.from_base64(ours).public_key.to_base64()


# Not whitespace to wg: char_is_space() (wireguard-tools src/ctype.h) is ASCII
# " \t\n\v\f\r" only, and key_from_base64 (src/encoding.c) takes exactly 44
# characters, so a key followed by any other space is refused.
NOT_WG_SPACE = ["\u00a0", "\u2003", "\u3000", "\x1c", "\x85", "\u2028"]


@pytest.mark.parametrize("space", NOT_WG_SPACE)
def test_unicode_space_around_a_key_is_refused_as_wg_refuses_it(space: str) -> None:
    key = PrivateKey.generate().to_base64()
    for text in (key + space, space + key, f" {key}{space}\n"):
        with pytest.raises(KeyFormatError):
            PrivateKey.from_base64(text)
    # What wg does allow around a key still works.
    assert PrivateKey.from_base64(f" \t{key}\r\n\v\f").to_base64() == key


@pytest.mark.parametrize("space", NOT_WG_SPACE)
def test_unicode_space_after_a_key_is_refused_by_wg_pubkey_too(space: str) -> None:
    wg = need_tool("wg")
    key = PrivateKey.generate().to_base64()
    theirs = subprocess.run([wg, "pubkey"], input=(key + space).encode(), capture_output=True)
    assert theirs.returncode == 1
    assert run_cli("pubkey", stdin=key + space).returncode == 1


def test_config_refuses_a_key_with_unicode_space_as_wg_setconf_does() -> None:
    from wireguard.config import ConfigError, parse_setconf

    key = PrivateKey.generate().to_base64()
    with pytest.raises(ConfigError) as exc:
        parse_setconf(f"[Interface]\nPrivateKey = {key}\u00a0\n", "wg0.conf")
    assert (exc.value.filename, exc.value.lineno, exc.value.key) == ("wg0.conf", 2, "PrivateKey")


@pytest.mark.parametrize("command", ["genkey", "genpsk"])
@pytest.mark.parametrize("mode", [0o600, 0o640, 0o604, 0o602, 0o601])
def test_genkey_warns_of_a_world_accessible_file_as_wg_does(
    command: str, mode: int, tmp_path
) -> None:
    # genkey.c: stdout a regular file with any "other" permission bit set.
    wg = need_tool("wg")
    said = {}
    for who, argv in (("wg", [wg]), ("ours", [sys.executable, "-m", "wireguard"])):
        out = tmp_path / f"{who}.key"
        out.touch()
        out.chmod(mode)
        with out.open("w") as f:
            result = subprocess.run([*argv, command], stdout=f, stderr=subprocess.PIPE,
                                    text=True, timeout=60)  # fmt: skip
        assert result.returncode == 0
        assert len(out.read_text().strip()) == 44
        said[who] = result.stderr
    assert said["ours"] == said["wg"]
    # A pipe is not a file: nothing said.
    assert run_cli(command).stderr == ""
