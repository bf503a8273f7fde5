"""Settings of the media relay.

One frozen dataclass so the CLI and the environment can fill it in one place
(engine/config.py maps flags onto it) and every limit the relay enforces is
written down with its default and the reason for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.media.sdpguard import CandidateFilter

#: Values of ``MediaConfig.forwarding`` (and of the engine's ``--forwarding`` flag).
FORWARDING = ("fast", "stock")


@dataclass(frozen=True)
class MediaConfig:
    """Limits and network settings of the media relay.

    Every field has a default that suits one machine serving a few rooms.
    """

    #: STUN/TURN URLs handed to aiortc and advertised to WHIP/WHEP clients in
    #: ``Link: <url>; rel="ice-server"`` headers. Empty by default: the engine
    #: never contacts a server its operator did not configure.
    ice_servers: tuple[str, ...] = ()

    #: Addresses announced as ICE host candidates. An address the host owns
    #: (``127.0.0.1`` in tests, a LAN address) is bound directly; any other
    #: address (a public IP in front of a 1:1 NAT or a container) is announced
    #: with the port of a socket bound to ``listen_address``. Empty means
    #: aioice's default: every non-loopback interface address.
    announced_addresses: tuple[str, ...] = ()

    #: Local address bound for announced addresses the host does not own.
    listen_address: str = "0.0.0.0"

    #: Receive buffer (SO_RCVBUF) of each peer's UDP socket, in bytes. aioice
    #: uses 256 KB, which a keyframe burst to many viewers overflows on the
    #: publisher's socket; the kernel may cap it at net.core.rmem_max unless
    #: the process may use SO_RCVBUFFORCE.
    socket_receive_buffer: int = 4 * 1024 * 1024

    #: Minimum seconds between two keyframe requests (PLI) sent to a room's
    #: publisher, whatever the number of viewers asking.
    pli_min_interval: float = 1.0

    #: Frames queued for one viewer track before the viewer counts as behind:
    #: its video queue is then emptied and refilled from the next keyframe,
    #: its audio queue drops the oldest frame. Must exceed
    #: ``keyframe_cache_frames``, since a late joiner starts with the cache.
    viewer_queue_frames: int = 400

    #: Bounds of the per-room keyframe cache (the frames from the latest
    #: keyframe on). A group of pictures longer than either bound is dropped,
    #: and late joiners wait for the next keyframe (a PLI is sent at once).
    keyframe_cache_frames: int = 300
    keyframe_cache_bytes: int = 8 * 1024 * 1024

    #: Viewers per room; the next viewer is refused with 503 + Retry-After.
    max_viewers_per_room: int = 500

    #: Peer connections (publishers and viewers) on this node; past it, new
    #: sessions are refused with 503 + Retry-After.
    max_peers: int = 2000

    #: Seconds suggested to refused clients in ``Retry-After``.
    retry_after: int = 5

    #: How frames reach viewers: ``"fast"`` packetizes each frame once per room
    #: and writes every viewer's RTP itself (engine/media/fastpath.py); ``"stock"``
    #: feeds one aiortc ``RTCRtpSender`` per viewer track (engine/media/forwarding.py),
    #: about a third of the fast path's viewers per core.
    forwarding: str = "fast"

    #: Fast path: packets of each kind kept per room to answer viewers' NACKs
    #: (shared by all viewers; 2048 video packets is about 6 s at 2.5 Mbit/s).
    nack_history_packets: int = 2048

    #: Fast path: packets sent to viewers before the room's pacer yields to the
    #: event loop, so a keyframe burst to many viewers never stalls the loop
    #: (the publisher's socket, RTCP and websockets are served in between).
    send_slice_packets: int = 256

    #: Fast path: send each frame's packets with one UDP GSO system call
    #: (Linux); off, or when the kernel refuses it, one ``sendto`` per packet.
    udp_gso: bool = True

    #: Seconds a publisher or viewer may take to connect (ICE + DTLS) before
    #: its session is dropped (and a publisher's room is free again).
    connect_timeout: float = 20.0

    #: Longest SDP offer or trickle fragment accepted, in bytes (then 413).
    max_sdp_bytes: int = 32 * 1024

    #: ICE candidates one session may send, offer and trickle together; an
    #: offer past it is refused with 400, a trickle fragment with 422. Browsers
    #: send fewer than 20. Each candidate costs loop time (aioice pairs and
    #: re-sorts on every addition) and up to 7 STUN checks per local candidate.
    max_remote_candidates: int = 32

    #: Media sections (``m=`` lines) one offer may hold; past it, 400. A
    #: browser sends one per track (two here); each costs parsing, a
    #: transceiver and BUNDLE bookkeeping before any connection exists.
    max_media_sections: int = 16

    #: Remote candidate ranges never contacted (engine/media/sdpguard.py,
    #: ``CandidateFilter``): CIDRs or loopback, private, link-local, multicast,
    #: unspecified, non-global. Empty: any address.
    ice_candidate_filter: str = ""

    #: Trickle ``PATCH`` requests per second per session, and their burst (then 429).
    patch_rate: float = 2.0
    patch_burst: int = 10

    #: Viewers not connected yet (ICE + DTLS), per room and per node; past
    #: either, new viewers are refused with 503 until some connect or reach
    #: ``connect_timeout``. Connected viewers count against ``max_viewers_per_room``.
    max_connecting_per_room: int = 20
    max_connecting: int = 200

    #: Sessions of ``max_peers`` that only publishers may take, so viewers
    #: filling the node never lock publishers out.
    publisher_reserve: int = 20

    #: Retransmitted packets per second per viewer, and resends of one packet
    #: to one viewer (engine/media/budgets.py); NACKs past them go unanswered.
    rtx_rate: float = 200.0
    rtx_per_packet: int = 3

    #: How long, and how many, ended session ids still answer ``DELETE`` with 200.
    ended_session_ttl: float = 60.0
    ended_sessions_max: int = 10000
    #: Seconds without media from a publisher after which viewers see the room
    #: offline (``media.offline``, reason ``publisher_idle``) and a new WHIP
    #: ``POST`` with the room's stream key takes over instead of getting 409.
    #: A crashed browser sends no ``DELETE``; ICE consent would only expire
    #: after about 30 s.
    publisher_idle: float = 3.0

    #: Media cascade (several nodes on one registry): seconds an edge keeps pulling a room after
    #: its last viewer there left, so a viewer zapping back does not make it reconnect to the origin.
    edge_linger: float = 5.0

    #: Media cascade: seconds between two checks of where each pulled (or awaited) room's publisher
    #: is, so edges follow a publisher that came back on another node within about this long.
    edge_poll: float = 1.0

    #: Media cascade: pulls of one room this node feeds (as origin or as an edge). Past it, another
    #: node pulls from an edge of the room instead (a tree): an edge costs the origin what one viewer
    #: costs (docs/OPERATIONS.md, "Media cascade", has the arithmetic).
    max_edges_per_node: int = 16

    #: Media cascade: longest chain from the origin to an edge (1: every edge pulls from the origin).
    max_edge_depth: int = 3

    def __post_init__(self) -> None:
        if self.viewer_queue_frames <= self.keyframe_cache_frames:
            raise ValueError("viewer_queue_frames must exceed keyframe_cache_frames")
        if self.forwarding not in FORWARDING:
            raise ValueError(f"forwarding must be one of {FORWARDING}, not {self.forwarding!r}")
        if self.nack_history_packets < 1 or self.send_slice_packets < 1:
            raise ValueError("nack_history_packets and send_slice_packets must be positive")
        if self.pli_min_interval < 0 or self.connect_timeout <= 0:
            raise ValueError("pli_min_interval must be >= 0 and connect_timeout > 0")
        if self.max_sdp_bytes < 1 or self.max_remote_candidates < 0 or self.patch_rate <= 0 or self.patch_burst < 1:
            raise ValueError("max_sdp_bytes and patch_burst must be >= 1, patch_rate > 0, max_remote_candidates >= 0")
        if self.max_media_sections < 1:
            raise ValueError("max_media_sections must be >= 1")
        if min(self.max_connecting_per_room, self.max_connecting, self.publisher_reserve) < 0:
            raise ValueError("max_connecting_per_room, max_connecting and publisher_reserve must be >= 0")
        if self.rtx_rate < 0 or self.rtx_per_packet < 0:
            raise ValueError("rtx_rate and rtx_per_packet must be >= 0")
        CandidateFilter.parse(self.ice_candidate_filter)  # ValueError names a bad item
        if self.publisher_idle <= 0:
            raise ValueError("publisher_idle must be > 0")
        if self.edge_linger < 0 or self.edge_poll <= 0:
            raise ValueError("edge_linger must be >= 0 and edge_poll > 0")
        if self.max_edges_per_node < 1 or self.max_edge_depth < 1:
            raise ValueError("max_edges_per_node and max_edge_depth must be >= 1")
