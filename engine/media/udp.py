"""Sending a viewer's datagrams straight on its ICE socket, a frame per system call where possible.

The kernel call is the largest per-packet cost left once packetization is
shared, so a frame's packets (equal size, the last shorter, see
engine/media/rtp.py) go out in one ``sendmsg`` with ``UDP_SEGMENT`` (UDP GSO,
Linux 4.18+): the kernel splits the buffer into datagrams. Where GSO is
refused (another OS, an old kernel, a device without it) the sender falls back
to one ``sendto`` per datagram for good, after the first refusal.

The socket is a duplicate of aioice's descriptor (same port, same kernel
socket), so aioice keeps receiving on it and the relay's writes never touch
asyncio's transport buffer: a full send buffer drops the datagrams and tells
the caller, which treats the viewer as behind.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Sequence

#: ``UDP_SEGMENT`` from linux/udp.h (Python's socket module does not name it).
UDP_SEGMENT = 103
#: Segments per GSO call (the kernel's UDP_MAX_SEGMENTS is 64 on older kernels) and bytes per call.
GSO_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65000

_SEGMENT_SIZES = {}
_FULL = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS)
_GSO_REFUSED = (errno.EINVAL, errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP)


def _segment_option(size: int) -> list[tuple[int, int, bytes]]:
    option = _SEGMENT_SIZES.get(size)
    if option is None:
        option = _SEGMENT_SIZES[size] = [(socket.SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))]
    return option


class DatagramSender:
    """One viewer's path out: a duplicated UDP socket and the remote address ICE selected."""

    #: Process-wide: cleared the first time the kernel refuses a GSO send.
    gso_available = hasattr(socket.socket, "sendmsg") and hasattr(socket, "SOL_UDP")

    def __init__(self, fileno: int, address: tuple[str, int], gso: bool = True) -> None:
        self._sock = socket.socket(fileno=socket.dup(fileno))
        self._sock.setblocking(False)
        self.address = address
        self.gso = gso
        self.calls = 0

    def send(self, datagrams: Sequence[bytes]) -> bool:
        """Send ``datagrams`` in order; False if the socket dropped any (send buffer full)."""
        if len(datagrams) == 1:
            return self._send_each(memoryview(datagrams[0]), [len(datagrams[0])])
        return self.send_packed(memoryview(b"".join(datagrams)), [len(d) for d in datagrams])

    def send_packed(self, buffer: memoryview, lengths: Sequence[int]) -> bool:
        """Send the datagrams lying back to back in ``buffer`` (their ``lengths``, in order).

        Runs of equal length (the last of a run may be shorter) go out in one
        GSO call each; False if the socket dropped any (send buffer full).
        """
        count = len(lengths)
        if count == 1 or not (self.gso and DatagramSender.gso_available):
            return self._send_each(buffer, lengths)
        start = offset = 0
        while start < count:
            size = lengths[start]
            end = start + 1
            limit = min(count, start + GSO_MAX_SEGMENTS, start + GSO_MAX_BYTES // size)
            while end < limit and lengths[end] == size:
                end += 1
            if end < limit and lengths[end] < size:
                end += 1  # the shorter last segment
            stop = offset + sum(lengths[start:end])
            if end - start == 1:
                ok = self._send_each(buffer[offset:stop], lengths[start:end])
            else:
                ok = self._send_gso(buffer[offset:stop], lengths[start:end], size)
            if not ok:
                return False
            start, offset = end, stop
        return True

    def _send_gso(self, run: memoryview, lengths: Sequence[int], size: int) -> bool:
        self.calls += 1
        try:
            self._sock.sendmsg([run], _segment_option(size), 0, self.address)
        except OSError as exc:
            if exc.errno in _FULL:
                return False
            if exc.errno in _GSO_REFUSED:
                DatagramSender.gso_available = False
                return self._send_each(run, lengths)
            raise
        return True

    def _send_each(self, buffer: memoryview, lengths: Sequence[int]) -> bool:
        sendto = self._sock.sendto
        address = self.address
        offset = 0
        try:
            for length in lengths:
                self.calls += 1
                sendto(buffer[offset : offset + length], address)
                offset += length
        except OSError as exc:
            if exc.errno in _FULL:
                return False
            raise
        return True

    def close(self) -> None:
        self._sock.close()
