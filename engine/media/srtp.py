"""SRTP protection in place, for a frame's packets written back to back in one buffer.

pylibsrtp's ``Session.protect`` copies each packet into the session's buffer,
allocates a length cell and returns a new ``bytes``; the fast path then joined
a frame's packets again for its one UDP GSO call. Per viewer and packet that
wrapper cost more than the encryption itself. ``PacketBuffer`` instead lets
the fast path write each packet (header, extensions, payload) straight into
one C buffer after the previous one and has libsrtp protect it there, so a
frame leaves as one slice of that buffer, without an intermediate object.

It calls libsrtp through pylibsrtp's own cffi binding (``pylibsrtp._binding``,
the library aiortc already uses for the same sessions, so keys and rollover
counters stay shared); ``check_binding`` refuses a binding whose
``srtp_protect`` does not have libsrtp 2's in-place signature, and
tests/media/test_fastpath_units.py checks the output against ``unprotect``.
"""

from __future__ import annotations

from typing import Any

from pylibsrtp import Session, _binding

_ffi = _binding.ffi
_lib = _binding.lib

#: Bytes libsrtp may append to a packet (authentication tag plus MKI), as pylibsrtp reserves.
MAX_TRAILER = 16 + 128

#: libsrtp's ``srtp_protect(context, packet, length cell)``: the packet is protected where it lies.
srtp_protect = _lib.srtp_protect

_PROTECT_SIGNATURE = "srtp_err_status_t(*)(struct srtp_ctx_t_ *, void *, int *)"


def check_binding() -> None:
    """Refuse a pylibsrtp whose ``srtp_protect`` is not libsrtp 2's in-place call."""
    found = _ffi.typeof(_lib.srtp_protect).cname
    if found != _PROTECT_SIGNATURE:
        raise RuntimeError(f"engine.media.srtp expects srtp_protect as {_PROTECT_SIGNATURE}, found {found}")


check_binding()


def context(session: Session) -> Any:
    """The libsrtp context of a pylibsrtp ``Session`` (valid while the session lives)."""
    return session._srtp[0]


class PacketBuffer:
    """A reusable C buffer: packets are written back to back and protected where they lie.

    One per process is enough (the event loop writes one frame at a time and
    sends it before writing the next); it grows to the largest frame seen.
    A packet of ``n`` bytes written at ``offset`` is protected by
    ``srtp_protect(context(session), cdata + offset, cell)`` with ``cell[0] = n``,
    which leaves the protected length in ``cell[0]``; the writer leaves
    ``MAX_TRAILER`` bytes free after each packet.
    """

    def __init__(self, size: int = 256 * 1024) -> None:
        self._allocate(size)
        #: The length cell handed to ``srtp_protect`` (in: the packet's length, out: protected).
        self.cell = _ffi.new("int *")

    def _allocate(self, size: int) -> None:
        self.size = size
        #: The C buffer (``cdata + offset`` points at a packet) and the same bytes as a memoryview.
        self.cdata = _ffi.new("char[]", size)
        self.view = memoryview(_ffi.buffer(self.cdata))

    def reserve(self, size: int) -> memoryview:
        """At least ``size`` bytes; the (possibly new) view to write into."""
        if size > self.size:
            self._allocate(max(size, 2 * self.size))
        return self.view
