"""The cascade's choice of upstream, without a network: origin first, edges shallowest first, no loops;
and an origin hands each frame to its edges before its own viewers.

Nodes are what the registry lists (engine/nodes/base.py ``NodeInfo`` with its ``relays``);
the full behaviour runs between real nodes in tests/media/test_cascade.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiortc.jitterbuffer import JitterFrame

from engine.media.cascade import Cascade, answered_codecs
from engine.media.config import MediaConfig
from engine.media.room import MediaRoom
from engine.nodes.base import Load, NodeInfo, Relay


def node(node_id: str, *relays: Relay) -> NodeInfo:
    return NodeInfo(node_id, f"http://{node_id}.example", f"ws://{node_id}.example/ws", Load(), (), relays)


def cascade(me: str = "me", max_depth: int = 3) -> Cascade:
    async def no_origin(room: str) -> Any:
        raise AssertionError("not looked up here")

    return Cascade(object(), me, no_origin, lambda room: "credential",  # type: ignore[arg-type]
                   poll=1.0, linger=1.0, request_timeout=5.0, max_depth=max_depth)


def test_candidates_are_the_origin_then_edges_by_depth_within_the_bound() -> None:
    origin = node("a")
    nodes = [origin, node("b", Relay("show", "a", 1)), node("c", Relay("show", "b", 2)),
             node("d", Relay("show", "c", 3)), node("e", Relay("other", "a", 1)), node("me")]
    chosen = cascade().candidates("show", origin, nodes)
    assert [(n.id, depth) for n, depth in chosen] == [("a", 1), ("b", 2), ("c", 3)]  # d would make depth 4
    assert [n.id for n, _ in cascade(max_depth=1).candidates("show", origin, nodes)] == ["a"]


def test_no_upstream_whose_chain_runs_through_this_node_or_breaks() -> None:
    origin = node("a")
    nodes = [origin, node("x", Relay("show", "me", 2)), node("y", Relay("show", "x", 3)),
             node("z", Relay("show", "gone", 1)), node("me", Relay("show", "a", 1))]
    edges = cascade()
    assert [n.id for n, _ in edges.candidates("show", origin, nodes)] == ["a"]
    assert edges.depth("show", "y", origin, nodes) is None  # y -> x -> me: a loop
    assert edges.depth("show", "z", origin, nodes) is None  # z's upstream is not listed (dead)
    assert edges.depth("show", "a", origin, nodes) == 1


def test_relays_travel_through_the_registry_format() -> None:
    announced = node("b", Relay("show", "a", 1), Relay("other", "c", 2))
    assert NodeInfo.from_dict(announced.to_dict()) == announced
    older = {key: value for key, value in announced.to_dict().items() if key != "relays"}
    assert NodeInfo.from_dict(older).relays == ()  # a node that announces no relays relays nothing
    assert announced.relay("other") == Relay("other", "c", 2) and announced.relay("none") is None


def test_the_codecs_an_origin_answers_are_read_from_its_sdp() -> None:
    answer = "\r\n".join([
        "v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0 1",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111", "c=IN IP4 127.0.0.1", "a=mid:0", "a=sendonly",
        "a=rtpmap:111 opus/48000/2",
        "m=video 9 UDP/TLS/RTP/SAVPF 102 103", "c=IN IP4 127.0.0.1", "a=mid:1", "a=sendonly",
        "a=rtpmap:102 H264/90000", "a=rtpmap:103 rtx/90000", "a=fmtp:103 apt=102", "",
    ])
    assert answered_codecs(answer) == {"audio": "opus", "video": "H264"}
    with pytest.raises(ValueError):
        answered_codecs(answer.replace("a=sendonly", "a=inactive"))


class RecordingOutput:
    """A viewer's output that notes the order frames were handed to it in."""

    def __init__(self, name: str, handed: list[str]) -> None:
        self.name, self.handed = name, handed

    def start(self, frames: list[Any]) -> None:
        """No cached frames in this room yet: nothing to start from."""

    def push(self, frame: Any) -> None:
        self.handed.append(self.name)


@pytest.mark.parametrize("forwarding", ["fast", "stock"])
async def test_an_edge_gets_each_frame_before_the_viewers_that_joined_before_it(forwarding: str) -> None:
    room = MediaRoom("show", MediaConfig(forwarding=forwarding))
    handed: list[str] = []
    for name in ("early", "earlier"):
        room.add_viewer(name, RecordingOutput(name, handed), {"video": "H264"})  # type: ignore[arg-type]
    room.add_viewer("edge", RecordingOutput("edge", handed), {"video": "H264"}, edge=True)  # type: ignore[arg-type]
    room.add_viewer("late", RecordingOutput("late", handed), {"video": "H264"})  # type: ignore[arg-type]
    room.on_frame("video", "H264", JitterFrame(b"\x00\x00\x00\x01\x65" + bytes(3000), 90_000))
    assert handed == ["edge", "early", "earlier", "late"]
    assert room.edges == {"edge"} and room.audience == 3
    room.remove_viewer("edge")
    assert room.edges == set() and room.audience == 3
    room.close()
