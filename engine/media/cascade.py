"""The media cascade, edge side: pull a room once over WHEP from its cascade, fan it out here.

The node holding a room's publisher is the room's **origin** (the node registry records it).
Any other node with viewers of the room is an **edge**: it opens one WHEP session upstream
(``POST /whep/{room}`` with a node credential, engine/nodes/credential.py) to the origin's
public URL or, when the origin feeds its maximum of edges (``max_edges_per_node``), to an edge
that announces it relays the room (a tree, at most ``max_edge_depth`` deep). The session is an
aiortc peer connection whose receivers hand reassembled frames to the room here exactly as a
local publisher's do (``MediaRoom.on_frame``). So the edge's own viewers get the fast path, its
keyframe cache (late joiners see video at once), its NACK history, and its keyframe requests
rate limited by ``pli_min_interval`` before one PLI goes upstream: the origin sees one viewer
per edge, whatever the edge's audience.

- The first viewers of a room on an edge wait for the origin's answer (not for media), so they
  negotiate the codecs the origin relays; concurrent first viewers share one lookup and one pull.
- The pull becomes the room's source at its first frame (``begin_source``): an upstream change
  (the publisher came back on another node) switches viewers at the new origin's first keyframe
  with no rejoin, as a returning local publisher does.
- Every ``edge_poll`` seconds, each room with viewers here and no local publisher is checked
  against the registry; a pull whose chain of relays (each node's announced upstream) no longer
  reaches the origin, passes through this node or is too deep is replaced.
- When the room's last viewer here leaves, the pull stays for ``edge_linger`` seconds, so a viewer
  zapping back finds it still open.
- The edge announces nothing on the bus: ``media.online``/``media.offline`` come from the origin,
  and reach this node's viewers through the shared bus.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import quote, urljoin

import aiohttp
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.sdp import SessionDescription

from engine.media import aiortc_compat, metrics
from engine.media.offer import RELAYED
from engine.media.room import MediaRoom
from engine.nodes.base import NodeInfo, Relay

log = logging.getLogger(__name__)

#: Where a pull is: asking the origin, connecting (ICE + DTLS), connected, live (the room's source here), closed.
PULL_STATES = ("requesting", "connecting", "connected", "live", "closed")
#: Seconds a pull's ``DELETE`` to its origin may take when the edge lets go of it.
HANG_UP_TIMEOUT = 2.0

#: The live node holding a room's publisher (None: no node does) and the live nodes with the rooms each
#: relays; the registry answers it.
OriginLookup = Callable[[str], Awaitable[tuple[NodeInfo | None, list[NodeInfo]]]]
#: A node credential for this node to pull a room (engine/nodes/credential.py ``NodeCredentials.mint``).
CredentialMinter = Callable[[str], str]


class EdgeHost(Protocol):
    """What the cascade needs from the node's ``MediaService``."""

    def media_room(self, room_id: str) -> MediaRoom:
        """The room's media state, created if the room has none here."""

    def existing_room(self, room_id: str) -> MediaRoom | None: ...

    def has_local_publisher(self, room_id: str) -> bool:
        """Whether a WHIP publisher of the room is attached to this node (then it is the origin)."""

    def local_viewers(self, room_id: str) -> int:
        """The room's viewers on this node, other edges pulling it from here included (they depend on its pull)."""

    def peer_connection(self) -> RTCPeerConnection:
        """A peer connection with the node's ICE servers."""

    def bind_ice(self, pc: RTCPeerConnection) -> None:
        """Gather on the node's announced addresses (``aiortc_compat.bind_ice`` with its settings)."""

    def end_stranded(self, stranded: dict[str, Any], codecs: dict[str, str]) -> None:
        """End viewers that cannot take the new source's codecs (``MediaRoom.begin_source`` returned them)."""

    def forget_if_empty(self, media: MediaRoom) -> None: ...


class PullRefused(Exception):
    """No upstream node answered the WHEP ``POST`` with 201."""


#: Refusals after which the next candidate upstream is tried: the node has its maximum of edges for the
#: room, or does not (or no longer) carry the room.
_TRY_NEXT = frozenset({"edges_full", "not_origin"})


class EdgePull:
    """One WHEP session of this node to a room's upstream node (the origin, or an edge of the room)."""

    def __init__(self, room_id: str, candidates: list[tuple[NodeInfo, int]]) -> None:
        self.id = f"pull-{secrets.token_urlsafe(12)}"
        self.room_id = room_id
        #: Upstream nodes to ask in order, each with the depth this node would have pulling from it.
        self.candidates = candidates
        self.upstream, self.depth = candidates[0]
        self.state = "requesting"
        self.pc: RTCPeerConnection | None = None
        self.video: RTCRtpReceiver | None = None
        self.codecs: dict[str, str] = {}
        self.location: str | None = None
        self.media: MediaRoom | None = None
        self.opened = time.monotonic()
        #: Resolved True once the origin answered (codecs known), False if the pull failed first.
        self.answered: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task[None] | None = None

    def view(self) -> dict[str, Any]:
        return {"upstream": self.upstream.id, "depth": self.depth, "state": self.state,
                "codecs": dict(self.codecs), "age": round(time.monotonic() - self.opened, 3)}


def answered_codecs(sdp: str) -> dict[str, str]:
    """The codec per kind an origin's WHEP answer sends (each section carries one, plus RTX)."""
    codecs: dict[str, str] = {}
    for section in SessionDescription.parse(sdp).media:
        names = {name.lower(): name for name in RELAYED.get(section.kind, ())}
        chosen = next((names[c.name.lower()] for c in section.rtp.codecs if c.name.lower() in names), None)
        if chosen is not None and section.direction in ("sendonly", "sendrecv"):
            codecs[section.kind] = chosen
    if not codecs:
        raise ValueError("the origin's answer sends no relayed codec")
    return codecs


class Cascade:
    """This node's pulls of rooms whose publisher is on another node."""

    def __init__(
        self,
        host: EdgeHost,
        node_id: str,
        origin: OriginLookup,
        credential: CredentialMinter,
        *,
        poll: float,
        linger: float,
        request_timeout: float,
        max_depth: int,
    ) -> None:
        if poll <= 0 or linger < 0 or request_timeout <= 0 or max_depth < 1:
            raise ValueError("edge_poll and the request timeout must be positive, edge_linger >= 0, max depth >= 1")
        self._host = host
        self.node_id = node_id
        self._origin = origin
        self._credential = credential
        self._poll = poll
        self._linger = linger
        self._timeout = request_timeout
        self._max_depth = max_depth
        self._pulls: dict[str, EdgePull] = {}
        self._lookups: dict[str, asyncio.Task[None]] = {}
        self._lingers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Rooms whose last pull failed, with the upstream it failed from (warned once, then logged at info).
        self._failing: dict[str, str] = {}
        self._http: aiohttp.ClientSession | None = None
        self._watcher: asyncio.Task[None] | None = None
        #: Rooms to check every ``poll`` seconds (set by the service: rooms with viewers here, no publisher).
        self.rooms_to_watch: Callable[[], list[str]] = list

    async def start(self) -> None:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout))
        self._watcher = asyncio.get_running_loop().create_task(self._watch(), name="media-edge-watch")

    async def stop(self) -> None:
        """Let go of every pull (each origin is told with a ``DELETE``), then stop."""
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        for handle in self._lingers.values():
            handle.cancel()
        self._lingers.clear()
        for pull in list(self._pulls.values()):
            self._close(pull, forget=False)
        for task in [*self._lookups.values(), *self._tasks]:
            if not task.done() and task.get_name() != "media-edge-hang-up":
                task.cancel()
        await asyncio.gather(*self._lookups.values(), *self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()

    # --- queries ---

    def pull(self, room_id: str) -> EdgePull | None:
        return self._pulls.get(room_id)

    @property
    def pull_count(self) -> int:
        return len(self._pulls)

    def relays(self) -> tuple[Relay, ...]:
        """The rooms this node pulls, for its registry announcement (others may pull them from here)."""
        return tuple(Relay(room_id, pull.upstream.id, pull.depth)
                     for room_id, pull in sorted(self._pulls.items()) if pull.state != "requesting")

    # --- called by the media service ---

    async def prepare(self, room_id: str) -> dict[str, str]:
        """Before a viewer here is answered: make sure the room is pulled if another node is its origin.

        Returns the codecs the pull carries (the viewer must negotiate them), or ``{}`` when the
        room has no origin elsewhere or the origin did not answer in time: the viewer then joins
        the room as it is, and the pull follows when the registry names an origin.
        """
        self._cancel_linger(room_id)
        if room_id not in self._pulls:  # an open pull's upstream is the watcher's to check, not each viewer's
            await self._refresh_shared(room_id)
        pull = self._pulls.get(room_id)
        if pull is None:
            return {}
        try:
            answered = await asyncio.wait_for(asyncio.shield(pull.answered), self._timeout)
        except TimeoutError:
            return {}
        return dict(pull.codecs) if answered else {}

    def viewers_gone(self, room_id: str) -> None:
        """The room's last viewer here left: let go of its pull after the linger, unless one comes back."""
        if room_id not in self._pulls or room_id in self._lingers:
            return
        if self._linger == 0:
            self._linger_over(room_id)
            return
        self._lingers[room_id] = asyncio.get_running_loop().call_later(self._linger, self._linger_over, room_id)

    def drop(self, room_id: str) -> None:
        """A publisher of the room attached here (this node is its origin now): stop pulling it at once."""
        self._cancel_linger(room_id)
        pull = self._pulls.get(room_id)
        if pull is not None:
            self._close(pull, forget=False)

    # --- the registry ---

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._poll)
            for room_id in self.rooms_to_watch():
                if room_id not in self._lookups:
                    self._refresh_soon(room_id)
            for room_id in list(self._pulls):
                if not self._host.local_viewers(room_id):
                    self.viewers_gone(room_id)  # e.g. its first viewer's offer was refused after the pull began

    def _refresh_soon(self, room_id: str) -> asyncio.Task[None]:
        """One registry lookup per room at a time, shared by every viewer and the watcher asking."""
        task = self._lookups.get(room_id)
        if task is None:
            task = self._lookups[room_id] = asyncio.get_running_loop().create_task(self._refresh(room_id))
            task.add_done_callback(lambda _: self._lookups.pop(room_id, None))
        return task

    async def _refresh_shared(self, room_id: str) -> None:
        await asyncio.shield(self._refresh_soon(room_id))

    async def _refresh(self, room_id: str) -> None:
        """Pull the room within the cascade of the origin the registry names, unless already doing so."""
        if self._host.has_local_publisher(room_id):
            return
        try:
            origin, nodes = await self._origin(room_id)
        except Exception as exc:
            log.warning("room %s: the node registry did not answer (%s); its pull is checked again later",
                        room_id, exc)
            return
        if origin is None or origin.id == self.node_id or self._host.has_local_publisher(room_id):
            return
        pull = self._pulls.get(room_id)
        if pull is not None and pull.state == "requesting":
            return
        depth = self.depth(room_id, pull.upstream.id, origin, nodes) if pull is not None else None
        if pull is not None and depth is not None:
            pull.depth = depth  # its upstream may have moved in the tree (the origin changed under it)
            return
        if pull is not None:
            log.info("room %s: node %s no longer leads to its origin %s; leaving it", room_id, pull.upstream.id,
                     origin.id)
            self._close(pull, forget=False)
        self._open(room_id, self.candidates(room_id, origin, nodes))

    def depth(self, room_id: str, node_id: str, origin: NodeInfo, nodes: list[NodeInfo]) -> int | None:
        """This node's depth pulling ``room_id`` from ``node_id``, if that leads to ``origin`` within
        ``max_depth`` hops and not through this node (each relay's announced upstream is followed: no
        loop, no chain too long); None otherwise."""
        by_id = {node.id: node for node in nodes}
        hops = 1
        while node_id != origin.id:
            info = by_id.get(node_id)
            relay = info.relay(room_id) if info is not None else None
            if relay is None or relay.upstream == self.node_id or hops >= self._max_depth:
                return None
            node_id = relay.upstream
            hops += 1
        return hops

    def candidates(self, room_id: str, origin: NodeInfo, nodes: list[NodeInfo]) -> list[tuple[NodeInfo, int]]:
        """Where to pull from, in order: the origin, then the room's edges, shallowest first."""
        edges = [(depth, node.id, node) for node in nodes if node.id not in (self.node_id, origin.id)
                 and node.relay(room_id) is not None
                 and (depth := self.depth(room_id, node.id, origin, nodes)) is not None]
        return [(origin, 1)] + [(node, depth) for depth, _, node in sorted(edges, key=lambda edge: edge[:2])]

    # --- pulls ---

    def _open(self, room_id: str, candidates: list[tuple[NodeInfo, int]]) -> EdgePull:
        pull = EdgePull(room_id, candidates)
        self._pulls[room_id] = pull
        metrics.EDGE_PULLS_OPENED.labels(room_id).inc()
        self._set_state(pull, "requesting")
        pull.task = asyncio.get_running_loop().create_task(self._run(pull))
        self._tasks.add(pull.task)
        pull.task.add_done_callback(self._tasks.discard)
        return pull

    async def _run(self, pull: EdgePull) -> None:
        try:
            await self._connect(pull)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            again = self._failing.get(pull.room_id) == pull.upstream.id
            self._failing[pull.room_id] = pull.upstream.id
            log.log(logging.INFO if again else logging.WARNING, "room %s: pull from node %s (%s) failed: %s%s",
                    pull.room_id, pull.upstream.id, pull.upstream.http_url, exc,
                    " (again)" if again else "; retried every edge_poll while viewers wait")
            self._close(pull, forget=True)
            return
        await asyncio.sleep(self._timeout)
        if pull.state in ("requesting", "connecting"):
            log.info("room %s: pull from node %s did not connect in %.0f s", pull.room_id, pull.upstream.id,
                     self._timeout)
            self._close(pull, forget=True)

    async def _connect(self, pull: EdgePull) -> None:
        assert self._http is not None, "the cascade is not started"
        pc = pull.pc = self._host.peer_connection()
        for kind in ("audio", "video"):
            transceiver = pc.addTransceiver(kind, direction="recvonly")
            aiortc_compat.tap_receiver(transceiver.receiver, self._frame_handler(pull, kind))
            aiortc_compat.frames_without_delay(transceiver.receiver, kind)
            if kind == "video":
                pull.video = transceiver.receiver

        @pc.on("connectionstatechange")
        async def changed() -> None:
            if pc.connectionState == "connected" and pull.state == "connecting":
                self._set_state(pull, "connected")
            elif pc.connectionState in ("failed", "closed") and pull.state != "closed":
                log.info("room %s: pull from node %s ended (%s)", pull.room_id, pull.upstream.id, pc.connectionState)
                self._close(pull, forget=True)

        self._host.bind_ice(pc)
        await pc.setLocalDescription(await pc.createOffer())
        headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {self._credential(pull.room_id)}"}
        refusals = []
        for upstream, depth in pull.candidates:
            self._move(pull, upstream, depth)
            url = f"{upstream.http_url.rstrip('/')}/whep/{quote(pull.room_id, safe='')}"
            async with self._http.post(url, data=pc.localDescription.sdp, headers=headers) as response:
                answer = await response.text()
                location = response.headers.get("Location")
                if response.status == 201:
                    break
                code = _error_code(answer)
                refusals.append(f"{upstream.id}: {response.status} {code or answer[:200]}")
                if code not in _TRY_NEXT:
                    raise PullRefused("; ".join(refusals))
        else:
            raise PullRefused("; ".join(refusals))
        if pull.state == "closed":  # let go of while the origin answered
            if location:
                await self._delete(urljoin(url, location))
            return
        pull.location = urljoin(url, location) if location else None
        pull.codecs = answered_codecs(answer)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        self._set_state(pull, "connecting")
        if not pull.answered.done():
            pull.answered.set_result(True)

    def _frame_handler(
        self, pull: EdgePull, kind: str
    ) -> Callable[[RTCRtpCodecParameters, JitterFrame], None]:
        def on_frame(codec: RTCRtpCodecParameters, frame: JitterFrame) -> None:
            media = pull.media
            if media is None or media.publisher_id != pull.id:
                media = self._take_over(pull)
                if media is None:
                    return
            media.on_frame(kind, codec.name, frame)

        return on_frame

    def _take_over(self, pull: EdgePull) -> MediaRoom | None:
        """The pull's first frame: it becomes the room's source here (viewers restart at its first keyframe)."""
        if pull.state == "closed" or self._pulls.get(pull.room_id) is not pull:
            return None
        if self._host.has_local_publisher(pull.room_id):
            return None
        media = self._host.media_room(pull.room_id)
        stranded = media.begin_source(pull.id, pull.codecs, pull.video)
        media.upstream = pull.upstream.id
        media.live = True  # the origin announces the room live; the edge only relays
        pull.media = media
        self._failing.pop(pull.room_id, None)
        self._set_state(pull, "live")
        self._host.end_stranded(stranded, pull.codecs)
        if not self._host.local_viewers(pull.room_id):
            self.viewers_gone(pull.room_id)  # opened for viewers that left before it carried media
        return media

    def _close(self, pull: EdgePull, forget: bool) -> None:
        """Let go of ``pull`` (idempotent); ``forget`` drops the room's media state here if nothing is left of it."""
        if pull.state == "closed":
            return
        self._set_state(pull, "closed")
        if not pull.answered.done():
            pull.answered.set_result(False)
        if self._pulls.get(pull.room_id) is pull:
            del self._pulls[pull.room_id]
            self._cancel_linger(pull.room_id)
        media = self._host.existing_room(pull.room_id)
        if media is not None and media.publisher_id == pull.id:
            media.end_source(pull.id)
            media.upstream = None
            if forget:
                self._host.forget_if_empty(media)
        if pull.task is not None and pull.task is not asyncio.current_task() and not pull.task.done():
            pull.task.cancel()
        task = asyncio.get_running_loop().create_task(self._hang_up(pull), name="media-edge-hang-up")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _hang_up(self, pull: EdgePull) -> None:
        if pull.location is not None:
            await self._delete(pull.location)
        if pull.pc is not None:
            try:
                await pull.pc.close()
            except Exception:
                log.warning("closing the pull of room %s failed", pull.room_id, exc_info=True)

    async def _delete(self, url: str) -> None:
        """Tell the origin the pull is over, so its session ends now rather than at ICE consent expiry."""
        if self._http is None or self._http.closed:
            return
        try:
            async with self._http.delete(url, timeout=aiohttp.ClientTimeout(total=HANG_UP_TIMEOUT)):
                pass
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("DELETE of pull %s not answered (%s); the origin ends it when ICE consent lapses", url, exc)

    def _linger_over(self, room_id: str) -> None:
        self._lingers.pop(room_id, None)
        pull = self._pulls.get(room_id)
        if pull is not None and not self._host.local_viewers(room_id):
            log.info("room %s: no viewer here for %.1f s; letting go of its pull from node %s",
                     room_id, self._linger, pull.upstream.id)
            self._close(pull, forget=True)

    def _cancel_linger(self, room_id: str) -> None:
        handle = self._lingers.pop(room_id, None)
        if handle is not None:
            handle.cancel()

    @staticmethod
    def _set_state(pull: EdgePull, state: str) -> None:
        metrics.edge_pull_state(pull.room_id, pull.upstream.id, pull.state, state)
        pull.state = state

    @staticmethod
    def _move(pull: EdgePull, upstream: NodeInfo, depth: int) -> None:
        """The pull asks another candidate upstream."""
        if upstream.id != pull.upstream.id:
            metrics.edge_pull_state(pull.room_id, pull.upstream.id, pull.state, "closed")
            pull.upstream = upstream
            metrics.edge_pull_state(pull.room_id, upstream.id, pull.state, pull.state)
        pull.depth = depth


def _error_code(body: str) -> str | None:
    """The ``error.code`` of a JSON error answer, if it is one."""
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return None
    return error.get("code") if isinstance(error, dict) else None
