"""Fixtures of the interop tests: the implementation under test (``impl``:
wireguard-sansio, then wireguard-go in its place) and each of the two by
name (see :mod:`tests.interop.daemon`)."""

from tests.interop.daemon import go, impl, sansio

__all__ = ["go", "impl", "sansio"]
