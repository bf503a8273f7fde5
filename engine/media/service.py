"""MediaService: publisher and viewer sessions of every room on this node.

Signaling (WHIP/WHEP over HTTP, offer/answer over the websocket) calls
``publish``, ``view``, ``patch`` and ``end``; this module turns them into
aiortc peer connections wired to a ``MediaRoom``, tells the bus when a room
goes live or offline, and enforces the node's limits.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.sdp import candidate_from_sdp

from engine.errors import shown
from engine.media import aiortc_compat, metrics, offer
from engine.media.admissions import Admissions
from engine.media.budgets import RetransmitBudget
from engine.media.cascade import Cascade, CredentialMinter, OriginLookup
from engine.media.config import MediaConfig
from engine.media.ended import RecentlyEnded
from engine.media.errors import MediaError
from engine.media.fastpath import FastOutput
from engine.media.forwarding import StockOutput
from engine.media.room import MediaRoom
from engine.media.sdpguard import CandidateFilter, SdpLimits, check_lines, screen_candidates, screen_offer
from engine.media.taps import FrameTap
from engine.nodes.base import Relay
from engine.tokenbucket import TokenBucket

log = logging.getLogger(__name__)


class RoomLookup(Protocol):
    """What the relay needs from ``engine.rooms.Rooms``."""

    def get(self, room_id: str) -> Any: ...


class EventBus(Protocol):
    """What the relay needs from ``engine.bus.base.Bus``."""

    async def publish(self, room: str, type: str, data: dict) -> Any: ...

    def set_state(self, room: str, key: str, type: str, data: dict) -> None: ...


class ViewerTally(Protocol):
    """Who counts a room's audience (signaling.audience): told of every media viewer, with its user id if known."""

    def joined(self, room: str, path: str, sub: str | None) -> None: ...

    def left(self, room: str, path: str, sub: str | None) -> None: ...


#: Called with a viewer's session id and the room's new codecs when the viewer's session was ended
#: because it negotiated another codec than the new publisher's (it must offer again).
StrandedHook = Callable[[str, dict[str, str]], None]


@dataclass(frozen=True)
class SessionAnswer:
    """A created session: its id (the resource name), the SDP answer and its ETag."""

    session_id: str
    sdp: str
    etag: str


@dataclass
class _Session:
    id: str
    role: str  # "publisher" or "viewer"
    room: MediaRoom
    pc: RTCPeerConnection
    remote_ufrag: str
    etag: str
    started: float = field(default_factory=time.monotonic)
    output: StockOutput | FastOutput | None = None
    closing: bool = False
    restart: aiortc_compat.IceRestart | None = None  # an ICE restart whose new path is not connected yet
    connected: bool = False  # ICE and DTLS up once; until then a viewer is half-open
    remote_candidates: int = 0  # candidates the peer sent (offer and trickle), against max_remote_candidates
    patches: TokenBucket | None = None  # trickle PATCH budget
    sub: str | None = None  # the viewer's user id, when its request carried a verified token
    edge: str | None = None  # the pulling node's id, when the viewer is an edge node (node credential)
    # A WHIP/WHEP resource, reachable over HTTP by its secret id; a websocket viewer's session
    # (named after its connection, which anyone could guess) is its websocket's alone.
    http_resource: bool = True


@dataclass(frozen=True)
class PatchAnswer:
    """A ``PATCH`` done: the session's ETag, and for an ICE restart the server's new ICE fragment."""

    etag: str
    sdpfrag: str | None = None


#: What aiortc raises for an offer it cannot take (asserts and lookups): the peer's fault, a 400.
_PEER_FAULTS = (ValueError, AssertionError, AttributeError, KeyError, IndexError, TypeError)

_CANDIDATE = re.compile(r"^a=(candidate:.+)$", re.M)
_UFRAG = re.compile(r"^a=ice-ufrag:(\S+)", re.M)
_PWD = re.compile(r"^a=ice-pwd:(\S+)", re.M)
_END_OF_CANDIDATES = re.compile(r"^a=end-of-candidates\s*$", re.M)
_MID = re.compile(r"^a=mid:(\S+)", re.M)


class MediaService:
    """The media relay of one node."""

    def __init__(
        self, config: MediaConfig, rooms: RoomLookup, bus: EventBus, audience: ViewerTally | None = None
    ) -> None:
        self.config = config
        self._rooms = rooms
        self._bus = bus
        self._audience = audience
        #: Told of each viewer ended for a codec change (the websocket channel tells its page to offer again).
        self.on_stranded: StrandedHook | None = None
        #: Told ``(room, True)`` when a room's publisher attaches here and ``(room, False)`` when it
        #: leaves (the node registry records which node holds each room's publisher).
        self.on_publisher: Callable[[str, bool], None] | None = None
        #: Listeners on every room's sources and frames (the recorder), shared by all rooms.
        self.taps: list[FrameTap] = []
        self._media: dict[str, MediaRoom] = {}
        self._sessions: dict[str, _Session] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = False
        self._limits = SdpLimits(
            config.max_sdp_bytes,
            config.max_remote_candidates,
            config.max_media_sections,
            CandidateFilter.parse(config.ice_candidate_filter),
        )
        self._ended = RecentlyEnded(config.ended_session_ttl, config.ended_sessions_max)
        self._admissions = Admissions()
        #: Pulls of rooms whose publisher is on another node (None: this node serves its own publishers only).
        self.cascade: Cascade | None = None
        #: Rooms wanted on this node without a peer viewer (live HLS): the cascade pulls them as for a viewer.
        self.wanted_rooms: Callable[[], Collection[str]] = frozenset
        self._preparing: set[str] = set()  # wanted rooms whose pull is being prepared (bounded by rooms)

    def enable_cascade(self, node_id: str, origin: OriginLookup, credential: CredentialMinter) -> Cascade:
        """Serve viewers of rooms published on other nodes by pulling them (engine/media/cascade.py)."""
        self.cascade = Cascade(self, node_id, origin, credential, poll=self.config.edge_poll,
                               linger=self.config.edge_linger, request_timeout=self.config.connect_timeout,
                               max_depth=self.config.max_edge_depth)
        self.cascade.rooms_to_watch = self._rooms_to_pull
        return self.cascade

    async def start(self) -> None:
        self._started = True
        if self.cascade is not None:
            await self.cascade.start()

    async def stop(self) -> None:
        """Let go of pulls, then close every peer connection (viewers first, then publishers)."""
        self._started = False
        if self.cascade is not None:
            await self.cascade.stop()
        sessions = sorted(self._sessions.values(), key=lambda s: s.role != "viewer")
        for session in sessions:
            await self._close(session)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- queries ---

    def ice_servers(self) -> tuple[str, ...]:
        return self.config.ice_servers

    @property
    def peer_count(self) -> int:
        """Open media sessions (publishers, viewers, pulls from other nodes): a node serving media is not idle."""
        return len(self._sessions) + (self.cascade.pull_count if self.cascade is not None else 0)

    @property
    def viewer_capacity(self) -> int:
        """Media sessions this node still takes for viewers (``max_peers`` less the publishers' reserve)."""
        used = len(self._sessions) + self._admissions.total
        return max(0, self.config.max_peers - self.config.publisher_reserve - used)

    def room(self, room_id: str) -> MediaRoom | None:
        return self._media.get(room_id)

    def rooms_view(self) -> dict[str, dict[str, Any]]:
        """Per room with media here: this node's role in its cascade, the upstream and its pull, viewers, edges."""
        view = {}
        for room_id, media in sorted(self._media.items()):
            pull = self.cascade.pull(room_id) if self.cascade is not None else None
            role = "origin" if self.has_local_publisher(room_id) else "edge" if pull is not None else "waiting"
            view[room_id] = {"role": role, "live": media.live, "upstream": pull.upstream.id if pull else None,
                             "depth": pull.depth if pull else 0,
                             "pull": pull.view() if pull else None, "viewers": media.audience,
                             "edges": len(media.edges)}
        return view

    # --- the cascade's host (engine/media/cascade.py, EdgeHost) ---

    def media_room(self, room_id: str) -> MediaRoom:
        return self._media_room(room_id)

    def existing_room(self, room_id: str) -> MediaRoom | None:
        return self._media.get(room_id)

    def has_local_publisher(self, room_id: str) -> bool:
        media = self._media.get(room_id)
        return media is not None and media.publisher_id is not None and media.upstream is None

    def local_viewers(self, room_id: str) -> int:
        media = self._media.get(room_id)
        return (len(media.viewers) if media is not None else 0) + (room_id in self.wanted_rooms())

    def relays(self) -> tuple[Relay, ...]:
        """The rooms this node pulls from another node (its registry announcement lists them)."""
        return self.cascade.relays() if self.cascade is not None else ()

    def peer_connection(self) -> RTCPeerConnection:
        return self._peer_connection()

    def bind_ice(self, pc: RTCPeerConnection) -> None:
        aiortc_compat.bind_ice(
            pc, self.config.announced_addresses, self.config.listen_address, self.config.socket_receive_buffer
        )

    def end_stranded(self, stranded: dict[str, Any], codecs: dict[str, str]) -> None:
        self._end_stranded(stranded, codecs)

    def forget_if_empty(self, media: MediaRoom) -> None:
        self._forget_if_empty(media)

    def _rooms_to_pull(self) -> list[str]:
        """Rooms with viewers (or edges) here and no publisher here: the cascade checks where their origin is."""
        wanted = self.wanted_rooms()
        rooms = [room_id for room_id, media in self._media.items()
                 if media.viewers and not self.has_local_publisher(room_id)]
        return rooms + [room_id for room_id in wanted if room_id not in rooms and not self.has_local_publisher(room_id)]

    def want(self, room_id: str) -> None:
        """Something here wants the room's media without a peer viewer (a live HLS request): on a node
        that is not its origin, have the cascade pull it (once; ``wanted_rooms`` keeps it pulled)."""
        if (self.cascade is not None and room_id not in self._preparing and not self.has_local_publisher(room_id)
                and self.cascade.pull(room_id) is None):
            self._preparing.add(room_id)  # one at a time per room, however many requests ask
            self._spawn(self._prepare_wanted(room_id))

    async def _prepare_wanted(self, room_id: str) -> None:
        assert self.cascade is not None  # want() starts this only with a cascade
        try:
            await self.cascade.prepare(room_id)
        finally:
            self._preparing.discard(room_id)

    def codecs(self, room_id: str) -> dict[str, str]:
        """The codecs of the room's source on this node (its publisher or its pull), {} without one."""
        media = self._media.get(room_id)
        return dict(media.codecs) if media is not None and media.publisher_id is not None else {}

    def request_keyframe(self, room_id: str) -> None:
        """Ask the room's source here for a keyframe (rate limited per room)."""
        media = self._media.get(room_id)
        if media is not None:
            media.request_keyframe()

    # --- publishers ---

    async def publish(self, room_id: str, stream_key: str | None, sdp: str) -> SessionAnswer:
        """Start a publisher session (WHIP ``POST``)."""
        room = self._rooms.get(room_id)
        if room is None:
            raise MediaError(404, "not_found", f"no room {shown(room_id)}")
        if not stream_key or not hmac.compare_digest(stream_key.encode(), str(room.stream_key).encode()):
            raise MediaError(401, "unauthorized", "wrong or missing stream key (Bearer token)")
        screened = screen_offer(sdp, self._limits)
        sdp = screened.text
        description = offer.parse(sdp)
        sections = offer.tracks(description, sending=True)
        media = self._media_room(room_id)
        try:
            codecs = offer.publisher_codecs(sections, media.preferred_codecs())
            self._check_capacity()
            if media.upstream is not None and self.cascade is not None:
                self.cascade.drop(room_id)  # the publisher is here now: this node is the room's origin
            replaced = self._replaceable_publisher(media)
        except MediaError:
            self._forget_if_empty(media)
            raise

        session_id = secrets.token_urlsafe(16)
        media.publisher_id = session_id  # claim the room before the first await
        with self._admissions.hold("publisher", room_id):
            if replaced is not None:
                log.info("publisher %s of room %s sent no media for %.1f s: replaced", replaced.id, room_id,
                         time.monotonic() - media.last_media)
                await self._went_quiet(media, "publisher_replaced")
                await self._close(replaced)
            pc = self._peer_connection()
            try:
                receivers: dict[str, RTCRtpReceiver] = {}
                for kind, name in codecs.items():
                    transceiver = pc.addTransceiver(kind, direction="recvonly")
                    capabilities = RTCRtpReceiver.getCapabilities(kind).codecs
                    transceiver.setCodecPreferences(
                        [c for c in capabilities if c.name.lower() in (name.lower(), "rtx")]
                    )
                    receivers[kind] = transceiver.receiver
                    aiortc_compat.tap_receiver(transceiver.receiver, media.frame_handler(session_id, kind))
                answer = await self._answer(pc, sdp)
            except Exception:
                media.publisher_id = None
                await self._discard(pc)
                self._forget_if_empty(media)
                raise
            stranded = media.begin_source(session_id, codecs, receivers.get("video"))
            session = _Session(session_id, "publisher", media, pc, self._ufrag(description), secrets.token_hex(8))
            session.remote_candidates = screened.received
            self._sessions[session_id] = session
        metrics.PUBLISHERS.labels(room_id).set(1)
        if self.on_publisher is not None:
            self.on_publisher(room_id, True)
        self._watch(session)
        self._spawn(self._connect_deadline(session))
        self._spawn(self._watch_media(session))
        self._end_stranded(stranded, codecs)
        return SessionAnswer(session_id, answer, session.etag)

    def _replaceable_publisher(self, media: MediaRoom) -> _Session | None:
        """The room's publisher if a new one may take over (no media for ``publisher_idle``); 409 otherwise."""
        if media.publisher_id is None:
            return None
        current = self._sessions.get(media.publisher_id)
        if current is None or time.monotonic() - media.last_media < self.config.publisher_idle:
            raise MediaError(409, "conflict", f"room {media.id!r} already has a publisher")
        return current

    def _end_stranded(self, stranded: dict[str, Any], codecs: dict[str, str]) -> None:
        """End the sessions of viewers that cannot take the new publisher's codec; they must offer again."""
        for viewer_id, output in stranded.items():
            output.close()
            session = self._sessions.get(viewer_id)
            if session is None:
                continue
            log.info("viewer %s negotiated another codec than the new publisher's %s: session ended", viewer_id, codecs)
            if self.on_stranded is not None:
                self.on_stranded(viewer_id, dict(codecs))
            self._spawn(self._close(session))

    async def _watch_media(self, session: _Session) -> None:
        """Tell viewers the room is offline as soon as its publisher's media stops (not when ICE gives up)."""
        media = session.room
        idle = self.config.publisher_idle
        while session.id in self._sessions and media.publisher_id == session.id:
            await asyncio.sleep(idle / 4)
            if media.live and media.publisher_id == session.id and time.monotonic() - media.last_media >= idle:
                await self._went_quiet(media, "publisher_idle")

    # --- viewers ---

    async def view(
        self, room_id: str, sdp: str, session_id: str | None = None, sub: str | None = None,
        edge: str | None = None,
    ) -> SessionAnswer:
        """Start a viewer session (WHEP ``POST`` or a websocket ``offer``; ``session_id`` = conn id).

        ``sub`` is the viewer's user id when its request carried a verified token,
        so a page watching over WHEP beside its websocket counts once. ``edge`` is the
        id of a node pulling the room (its node credential verified): only the room's origin
        or an edge of it within the depth bound serves one (``_check_feed``), and it is not a
        person in the room's audience. On a node that is not the room's origin, a viewer first
        makes sure the room is pulled from its cascade (engine/media/cascade.py).
        """
        room = self._rooms.get(room_id)
        if room is None:
            raise MediaError(404, "not_found", f"no room {shown(room_id)}")
        if room.hls_only and edge is None:  # edges still pull it: their HLS viewers need it
            raise MediaError(503, "hls_only", f"room {room_id!r} is HLS-only: play /hls/{room_id}/index.m3u8")
        screened = screen_offer(sdp, self._limits)
        sdp = screened.text
        description = offer.parse(sdp)
        sections = offer.tracks(description, sending=False)
        pulled: dict[str, str] = {}
        if edge is not None:
            self._check_feed(room_id)
        elif self.cascade is not None and not self.has_local_publisher(room_id):
            pulled = await self.cascade.prepare(room_id)
        media = self._media_room(room_id)
        try:
            codecs = offer.viewer_codecs(sections, pulled or media.codecs)
        except MediaError:
            self._forget_if_empty(media)
            raise
        resource = session_id is None
        session_id = session_id or secrets.token_urlsafe(16)
        if session_id in self._sessions:
            await self._close(self._sessions[session_id])
            media = self._media_room(room_id)  # closing the previous session may have forgotten the room
        try:
            self._admit_viewer(media, edge is not None)
        except MediaError:
            self._forget_if_empty(media)
            raise

        started = time.monotonic()
        first_frame = metrics.FIRST_FRAME.labels(room_id)
        def on_first_frame() -> None:
            first_frame.observe(time.monotonic() - started)

        output: StockOutput | FastOutput
        if media.fanout is not None:
            output = FastOutput(
                media.fanout,
                room_id,
                codecs,
                self.config.viewer_queue_frames,
                media.counters,
                media.request_keyframe,
                media.nacks.inc,
                on_first_frame,
                gso=self.config.udp_gso,
                retransmit_budget=RetransmitBudget(self.config.rtx_rate, self.config.rtx_per_packet),
            )
        else:
            output = StockOutput(
                codecs,
                self.config.viewer_queue_frames,
                media.counters,
                media.request_keyframe,
                media.nacks.inc,
                on_first_frame,
                retransmit_budget=RetransmitBudget(self.config.rtx_rate, self.config.rtx_per_packet),
            )
        pc = self._peer_connection()
        try:
            with self._admissions.hold("viewer", room_id):  # from the admission check until the session is entered
                try:
                    output.add_to(pc)
                    answer = await self._answer(pc, sdp, before_answer=output.bind)
                except Exception:
                    output.close()
                    await self._discard(pc)
                    raise
                session = _Session(session_id, "viewer", media, pc, self._ufrag(description), secrets.token_hex(8),
                                   sub=sub, http_resource=resource, edge=edge)
                session.output = output
                session.remote_candidates = screened.received
                self._sessions[session_id] = session
                media.add_viewer(session_id, output, codecs, edge=edge is not None)
                if edge is not None:
                    metrics.EDGES_SERVED.labels(room_id).set(len(media.edges))
        except Exception:
            self._forget_if_empty(media)
            raise
        if self._audience is not None and edge is None:
            self._audience.joined(room_id, "media", sub)
        self._viewers_changed(media)
        self._watch(session)
        self._spawn(self._connect_deadline(session))
        return SessionAnswer(session_id, answer, session.etag)

    async def add_candidate(self, session_id: str, candidate: str, mid: str | None = None) -> None:
        """Trickle one remote candidate (``candidate:...`` with or without ``a=``)."""
        candidate = check_lines(candidate, "ICE candidate")
        session = self._sessions.get(session_id)
        if session is None:
            raise MediaError(404, "not_found", "no such media session")
        await self._trickle(session, [candidate], mid, 400)

    async def close_viewer(self, session_id: str) -> None:
        """End a viewer (its websocket closed); unknown ids are ignored."""
        session = self._sessions.get(session_id)
        if session is not None and session.role == "viewer":
            await self._close(session)

    # --- WHIP/WHEP resources ---

    def _resource(self, role: str, room_id: str, session_id: str) -> _Session:
        session = self._sessions.get(session_id)
        if session is None or not session.http_resource or session.role != role or session.room.id != room_id:
            raise MediaError(404, "not_found", "no such session")
        return session

    def recently_ended(self, role: str, room_id: str, session_id: str) -> bool:
        """Whether this session resource existed and ended a short while ago."""
        return (role, room_id, session_id) in self._ended

    async def patch(self, role: str, room_id: str, session_id: str, if_match: str | None, body: str) -> PatchAnswer:
        """Trickle ICE (RFC 9725 section 4.3) or an ICE restart (section 4.4) on a session.

        A fragment whose ``a=ice-ufrag`` differs from the peer's current one is
        an ICE restart: it needs ``If-Match`` (the ETag or ``*``), gets a new
        ETag and the server's new ICE credentials and candidates back, and
        the session's DTLS and SRTP carry on over the new ICE path once it
        connects (engine/media/aiortc_compat.py, ``IceRestart``).
        """
        session = self._resource(role, room_id, session_id)
        if session.patches is None:
            session.patches = TokenBucket(self.config.patch_rate, self.config.patch_burst)
        if not session.patches.take():
            raise MediaError(
                429, "rate_limited", "too many PATCH requests for this session", {"Retry-After": "1"}
            )
        if if_match is not None and if_match.strip() not in ("*", f'"{session.etag}"', session.etag):
            raise MediaError(412, "precondition_failed", "If-Match does not match the session's ETag")
        body = check_lines(body, "trickle fragment")
        ufrag = _UFRAG.search(body)
        if ufrag and ufrag.group(1) != session.remote_ufrag:
            if if_match is None:
                raise MediaError(428, "precondition_required", "an ICE restart needs If-Match (the ETag or *)")
            return await self._restart_ice(session, ufrag.group(1), body)
        mid = _MID.search(body)
        await self._trickle(session, _CANDIDATE.findall(body), mid.group(1) if mid else None, 422)
        return PatchAnswer(session.etag)

    async def _restart_ice(self, session: _Session, ufrag: str, body: str) -> PatchAnswer:
        pwd = _PWD.search(body)
        if pwd is None:
            raise MediaError(400, "bad_request", "an ICE restart fragment needs a=ice-pwd with the new a=ice-ufrag")
        remote, received = screen_candidates(_CANDIDATE.findall(body), self._limits, 0, 422)
        if session.restart is not None:
            await session.restart.abort()  # a newer restart replaces one still connecting
        try:
            restart = aiortc_compat.IceRestart(
                session.pc,
                self.config.announced_addresses,
                self.config.listen_address,
                self.config.socket_receive_buffer,
            )
        except ValueError as exc:
            raise MediaError(501, "not_implemented", str(exc)) from exc
        try:
            candidates = await restart.gather()
            await restart.begin(ufrag, pwd.group(1), remote, bool(_END_OF_CANDIDATES.search(body)))
        except (ValueError, IndexError) as exc:
            await restart.abort()
            raise MediaError(400, "bad_request", f"unreadable ICE candidate: {exc}") from exc
        except Exception:
            await restart.abort()
            raise
        session.restart = restart
        session.remote_candidates = received  # a new ICE generation starts a new candidate budget
        session.remote_ufrag = ufrag
        session.etag = secrets.token_hex(8)
        self._spawn(self._finish_restart(session, restart))
        local_ufrag, local_pwd = restart.local_parameters
        first = session.pc.getTransceivers()[0]
        lines = [
            f"a=ice-ufrag:{local_ufrag}",
            f"a=ice-pwd:{local_pwd}",
            f"m={first.kind} 9 UDP/TLS/RTP/SAVPF 0",
            f"a=mid:{first.mid}",
            *(f"a={candidate}" for candidate in candidates),
            "a=end-of-candidates",
        ]
        return PatchAnswer(session.etag, "\r\n".join(lines) + "\r\n")

    async def _finish_restart(self, session: _Session, restart: aiortc_compat.IceRestart) -> None:
        """Wait for the restarted ICE path; then the fast path re-reads the viewer's socket and address."""
        connected = await restart.connect(self.config.connect_timeout)
        if session.restart is restart:
            session.restart = None
        if not connected:
            log.info("ICE restart of media session %s did not connect; the previous path stays", session.id)
            return
        if session.output is not None:
            session.output.ice_restarted()

    async def end(self, role: str, room_id: str, session_id: str) -> None:
        """``DELETE`` of a session resource; one that ended a short while ago is already done."""
        if session_id not in self._sessions and self.recently_ended(role, room_id, session_id):
            return
        await self._close(self._resource(role, room_id, session_id))

    # --- internals ---

    def _media_room(self, room_id: str) -> MediaRoom:
        media = self._media.get(room_id)
        if media is None:
            media = self._media[room_id] = MediaRoom(room_id, self.config)
            media.on_media_resumed = lambda: self._media_resumed(media)
            media.taps = self.taps
        return media

    def _overloaded(self, message: str) -> MediaError:
        return MediaError(503, "overloaded", message, {"Retry-After": str(self.config.retry_after)})

    def _check_capacity(self) -> None:
        if len(self._sessions) + self._admissions.total >= self.config.max_peers:
            raise self._overloaded("this node has its maximum of media sessions")

    def _check_feed(self, room_id: str) -> None:
        """Whether this node may feed one more edge of the room: 409 ``not_origin`` when it neither holds
        the room's publisher nor pulls it within the depth bound (so pulls never loop), 503 ``edges_full``
        past ``max_edges_per_node`` (the edge asks another node of the room's cascade)."""
        if not self.has_local_publisher(room_id):
            pull = self.cascade.pull(room_id) if self.cascade is not None else None
            if pull is None or pull.state == "requesting" or pull.depth >= self.config.max_edge_depth:
                raise MediaError(409, "not_origin", f"room {shown(room_id)} is neither published nor relayed here")
        media = self._media.get(room_id)
        if media is not None and len(media.edges) >= self.config.max_edges_per_node:
            raise MediaError(503, "edges_full", f"room {shown(room_id)} feeds its maximum of edges from this node",
                             {"Retry-After": str(self.config.retry_after)})

    def _admit_viewer(self, media: MediaRoom, edge: bool = False) -> None:
        """503 unless the room and node have room for one more viewer.

        Edges (other nodes pulling the room) do not count against ``max_viewers_per_room``:
        a room full of viewers here must still feed the nodes that serve its other viewers.

        A viewer still connecting (maybe one that never will) counts against
        the room's viewers and also against the much smaller connecting caps,
        so half-open sessions cannot fill a room, and viewers never take the
        sessions reserved for publishers. Sessions admitted but still being
        answered count everywhere (``Admissions``).
        """
        connecting = [s for s in self._sessions.values() if s.role == "viewer" and not s.connected]
        answering = self._admissions.viewers_in(media.id)  # admitted, not in the table yet
        in_room = sum(1 for s in connecting if s.room is media) + answering
        if not edge and media.audience + answering >= self.config.max_viewers_per_room:
            raise self._overloaded(f"room {media.id!r} has its maximum of viewers")
        if in_room >= self.config.max_connecting_per_room:
            raise self._overloaded(f"room {media.id!r} has its maximum of viewers still connecting")
        if len(connecting) + self._admissions.viewers >= self.config.max_connecting:
            raise self._overloaded("this node has its maximum of viewers still connecting")
        if len(self._sessions) + self._admissions.total >= self.config.max_peers - self.config.publisher_reserve:
            raise self._overloaded("this node has its maximum of media sessions for viewers")

    def _peer_connection(self) -> RTCPeerConnection:
        servers = [RTCIceServer(urls=url) for url in self.config.ice_servers]
        return RTCPeerConnection(RTCConfiguration(iceServers=servers))

    async def _answer(self, pc: RTCPeerConnection, sdp: str, before_answer: Any = None) -> str:
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            if before_answer is not None:
                before_answer()
            aiortc_compat.answer_as_dtls_server(pc)
        except _PEER_FAULTS as exc:
            # aiortc checks offers with asserts and lookups; what reaches here is the peer's fault
            raise MediaError(400, "bad_request", f"SDP offer rejected: {exc or type(exc).__name__}") from exc
        aiortc_compat.bind_ice(
            pc, self.config.announced_addresses, self.config.listen_address, self.config.socket_receive_buffer
        )
        try:
            await pc.setLocalDescription(await pc.createAnswer())
        except _PEER_FAULTS as exc:
            raise MediaError(400, "bad_request", f"SDP offer cannot be answered: {exc or type(exc).__name__}") from exc
        return pc.localDescription.sdp

    @staticmethod
    async def _discard(pc: RTCPeerConnection) -> None:
        """Close a peer connection; an error closing what an odd offer half set up is logged, not raised.

        It would otherwise replace the offer's 400 with a 500, or stop a session's close half-way.
        """
        try:
            await pc.close()
        except Exception:
            log.warning("closing a peer connection failed", exc_info=True)

    @staticmethod
    def _ufrag(description: Any) -> str:
        return description.media[0].ice.usernameFragment

    async def _trickle(self, session: _Session, lines: list[str], mid: str | None, too_many: int) -> None:
        """Add trickled candidates within the session's budget (``too_many``: the status past it)."""
        kept, received = screen_candidates(lines, self._limits, session.remote_candidates, too_many)
        session.remote_candidates += received
        for value in kept:
            candidate = candidate_from_sdp(value.removeprefix("candidate:"))
            candidate.sdpMid = mid if mid is not None else session.pc.getTransceivers()[0].mid
            await session.pc.addIceCandidate(candidate)

    def _watch(self, session: _Session) -> None:
        @session.pc.on("connectionstatechange")
        async def changed() -> None:
            state = session.pc.connectionState
            if state == "connected":
                session.connected = True
            if state == "connected" and session.role == "publisher":
                await self._online(session)
            elif state in ("failed", "closed"):
                await self._close(session)

    async def _connect_deadline(self, session: _Session) -> None:
        await asyncio.sleep(self.config.connect_timeout)
        if session.pc.connectionState != "connected" and session.id in self._sessions:
            log.info("media session %s did not connect in time", session.id)
            await self._close(session)

    async def _online(self, session: _Session) -> None:
        media = session.room
        if media.publisher_id != session.id:
            return
        media.last_media = time.monotonic()
        if not media.live:
            media.live = True
            await self._publish_online(media)

    def _media_resumed(self, media: MediaRoom) -> None:
        """Media flows again after the room went quiet: viewers see it live again (the origin tells them)."""
        if media.publisher_id is not None and not media.live and media.upstream is None:
            media.live = True
            self._spawn(self._publish_online(media))

    async def _publish_online(self, media: MediaRoom) -> None:
        data: dict[str, Any] = {"codecs": dict(media.codecs)}
        await self._bus.publish(media.id, "media.online", data)
        self._bus.set_state(media.id, "media", "media.status", self._status(media))

    async def _went_quiet(self, media: MediaRoom, reason: str) -> None:
        """The publisher is still there but sends nothing: viewers see the room offline."""
        if not media.live:
            return
        media.live = False
        await self._bus.publish(media.id, "media.offline", {"reason": reason})
        self._bus.set_state(media.id, "media", "media.status", self._status(media))

    @staticmethod
    def _status(media: MediaRoom) -> dict[str, Any]:
        """The ``media.status`` state value (snapshots carry it): live, media viewers, the codecs relayed."""
        return {"live": media.live, "viewers": len(media.viewers), "codecs": dict(media.codecs)}

    async def _close(self, session: _Session) -> None:
        if session.closing:
            return
        session.closing = True
        self._sessions.pop(session.id, None)
        if session.http_resource:
            self._ended.add((session.role, session.room.id, session.id))
        if session.restart is not None:
            await session.restart.abort()
        media = session.room
        if session.role == "viewer":
            output = media.remove_viewer(session.id)
            if output is not None:
                output.close()
            if session.edge is not None:
                metrics.EDGES_SERVED.labels(media.id).set(len(media.edges))
            elif self._audience is not None:
                self._audience.left(media.id, "media", session.sub)
            if self.cascade is not None and not media.viewers:
                self.cascade.viewers_gone(media.id)
            await self._discard(session.pc)
            self._viewers_changed(media)
        else:
            await self._discard(session.pc)
            if media.end_source(session.id):
                metrics.PUBLISHERS.labels(media.id).set(0)
                if self.on_publisher is not None:
                    self.on_publisher(media.id, False)
                await self._bus.publish(media.id, "media.offline", {"reason": "publisher_left"})
                self._bus.set_state(media.id, "media", "media.status", self._status(media))
        self._forget_if_empty(media)

    def _viewers_changed(self, media: MediaRoom) -> None:
        metrics.VIEWERS.labels(media.id).set(len(media.viewers))
        self._bus.set_state(media.id, "media", "media.status", self._status(media))

    def _forget_if_empty(self, media: MediaRoom) -> None:
        if media.empty and self._media.get(media.id) is media and not self._admissions.pending(media.id):
            del self._media[media.id]
            media.close()
            metrics.forget(media.id)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
