"""The channel's frame splitter: what a client sends, cut into reads anywhere, is read exactly as
websockets' own sans-I/O parser reads it, with every frame but plain whole messages left to it."""

from __future__ import annotations

from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from signaling.websocket import split_frames

MAX = 1024

payloads = st.binary(max_size=300) | st.binary(min_size=1000, max_size=1100)
whole = st.tuples(st.sampled_from([Opcode.TEXT, Opcode.BINARY]), payloads, st.just(True))
data_frames = whole | whole | st.tuples(st.sampled_from([Opcode.TEXT, Opcode.BINARY, Opcode.CONT]), payloads,
                                        st.booleans())
pings = st.tuples(st.just(Opcode.PING), st.binary(max_size=125), st.just(True))
spec = st.lists(data_frames | data_frames | pings, min_size=1, max_size=6)


def wire(frames: list[tuple[Opcode, bytes, bool]], masked: bool = True) -> bytes:
    return b"".join(Frame(opcode, payload, fin).serialize(mask=masked, extensions=[])
                    for opcode, payload, fin in frames)


def events_of(protocol: ServerProtocol) -> list[Any]:
    return [(e.opcode, e.data, e.fin) for e in protocol.events_received()]


def by_protocol(data: bytes) -> tuple[list[Any], State]:
    protocol = ServerProtocol(state=State.OPEN, max_size=MAX)
    protocol.receive_data(data)
    return events_of(protocol), protocol.state


def by_splitter(chunks: list[bytes]) -> tuple[list[Any], State, int]:
    """As WebSocket.data_received does it: plain messages read here, the rest fed to the protocol."""
    protocol = ServerProtocol(state=State.OPEN, max_size=MAX)
    seen: list[Any] = []
    rest = b""
    read_here = 0
    for chunk in chunks:
        items, rest = split_frames(rest + chunk, MAX, protocol.current_size is not None)
        for item in items:
            if type(item) is tuple:
                if protocol.state is State.OPEN:
                    seen.append((Opcode.BINARY if item[1] else Opcode.TEXT, item[0], True))
                    read_here += 1
            else:
                protocol.receive_data(item)
                seen += events_of(protocol)
    return seen, protocol.state, read_here


@settings(max_examples=300)
@given(spec, st.lists(st.integers(min_value=1, max_value=2000), max_size=4), st.sampled_from([True] * 5 + [False]))
def test_any_reads_give_what_the_protocol_gives(frames: list[tuple[Opcode, bytes, bool]], cuts: list[int],
                                                  masked: bool) -> None:
    data = wire(frames, masked)
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    expected, state = by_protocol(data)
    got, got_state, read_here = by_splitter(chunks)
    event("some read by the splitter" if read_here else "all by the protocol")
    event("the protocol closed the connection" if state is not State.OPEN else "stays open")
    event("cut into several reads" if len(chunks) > 1 else "one read")
    assert got_state == state
    assert got == expected


def test_a_frame_longer_than_the_limit_goes_to_the_protocol_at_once() -> None:
    header_only = wire([(Opcode.BINARY, b"x" * 70000, True)])[:14]  # 64-bit length, no payload yet
    items, rest = split_frames(header_only, MAX, False)
    assert items == [header_only] and rest == b""
