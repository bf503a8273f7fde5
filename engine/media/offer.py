"""Reading SDP offers before any peer connection exists.

Checks that need no network happen here, so a bad or unsupported offer is
refused with a precise error (400 unreadable, 422 unsupported tracks or
codecs) instead of a connection that never shows video.
"""

from __future__ import annotations

from aiortc import RTCRtpSender
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.sdp import MediaDescription, SessionDescription

from engine.media.aiortc_compat import codecs_compatible
from engine.media.errors import MediaError

#: Codecs the relay forwards, in order of preference for viewers of an empty room.
RELAYED = {"video": ("H264", "VP8"), "audio": ("opus",)}


def parse(text: str) -> SessionDescription:
    """Parse an SDP offer; 400 if it is not one."""
    if not text.strip().startswith("v=0"):
        raise MediaError(400, "bad_request", "body is not an SDP offer (it must start with v=0)")
    try:
        description = SessionDescription.parse(text)
    except (ValueError, IndexError, KeyError, StopIteration, AssertionError, AttributeError, TypeError) as exc:
        # aiortc's parser checks with asserts and lookups: any of them means the offer is malformed
        raise MediaError(400, "bad_request", f"unreadable SDP offer: {exc or type(exc).__name__}") from exc
    if not description.media:
        raise MediaError(400, "bad_request", "SDP offer has no m= section")
    for media in description.media:
        if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
            raise MediaError(400, "bad_request", "SDP offer lacks ice-ufrag/ice-pwd")
        if media.dtls is None or not media.dtls.fingerprints:
            raise MediaError(400, "bad_request", "SDP offer lacks a DTLS fingerprint")
    return description


def _supported(kind: str, name: str) -> list[RTCRtpCodecParameters]:
    return [
        RTCRtpCodecParameters(
            mimeType=c.mimeType, clockRate=c.clockRate, channels=c.channels, parameters=c.parameters
        )
        for c in RTCRtpSender.getCapabilities(kind).codecs
        if c.name.lower() == name.lower()
    ]


def accepts(media: MediaDescription, name: str) -> bool:
    """Whether ``media`` offers ``name`` in a form aiortc can packetize for it."""
    ours = _supported(media.kind, name)
    return any(codecs_compatible(local, remote) for remote in media.rtp.codecs for local in ours)


def _offered_names(media: MediaDescription) -> str:
    names = sorted({c.name for c in media.rtp.codecs if c.name.lower() not in ("rtx", "red", "ulpfec")})
    return ", ".join(names) or "none"


def tracks(description: SessionDescription, sending: bool) -> dict[str, MediaDescription]:
    """The audio and video sections; 422 for any other mix."""
    wanted = ("sendonly", "sendrecv") if sending else ("recvonly", "sendrecv")
    found: dict[str, MediaDescription] = {}
    for media in description.media:
        if media.kind not in RELAYED:
            raise MediaError(422, "unsupported_media", f"{media.kind} sections are not relayed")
        if media.kind in found:
            raise MediaError(422, "unsupported_media", f"more than one {media.kind} track")
        if media.direction not in wanted:
            raise MediaError(422, "unsupported_media", f"{media.kind} direction must be one of {wanted}")
        found[media.kind] = media
    return found


def publisher_codecs(
    sections: dict[str, MediaDescription], preferred: dict[str, list[str]] | None = None
) -> dict[str, str]:
    """The codec relayed per kind; 422 if none.

    The first of ``preferred[kind]`` (the codecs the room's viewers negotiated,
    most common first) that the publisher offers wins, so viewers waiting in
    the room keep working; otherwise the publisher's own first relayable codec.
    """
    codecs = {}
    for kind, media in sections.items():
        relayable = [
            name
            for name in (c.name for c in media.rtp.codecs)
            if name.lower() in {n.lower() for n in RELAYED[kind]} and accepts(media, name)
        ]
        if not relayable:
            raise MediaError(
                422,
                "unsupported_codec",
                f"no relayable {kind} codec offered (relayed: {', '.join(RELAYED[kind])}; "
                f"offered: {_offered_names(media)})",
            )
        offered = {name.lower() for name in relayable}
        wanted = (preferred or {}).get(kind, [])
        choice = next((name for name in wanted if name.lower() in offered), relayable[0])
        codecs[kind] = next(n for n in RELAYED[kind] if n.lower() == choice.lower())
    return codecs


def viewer_codecs(sections: dict[str, MediaDescription], room_codecs: dict[str, str]) -> dict[str, str]:
    """The codec per kind sent to a viewer; 422 naming the codec it cannot receive."""
    codecs = {}
    for kind, media in sections.items():
        wanted = room_codecs.get(kind)
        if wanted is not None:
            if not accepts(media, wanted):
                raise MediaError(
                    422,
                    "unsupported_codec",
                    f"this room's {kind} is {wanted}, which the offer cannot receive "
                    f"(offered: {_offered_names(media)})",
                )
            codecs[kind] = wanted
            continue
        choice = next((name for name in RELAYED[kind] if accepts(media, name)), None)
        if choice is None:
            raise MediaError(
                422,
                "unsupported_codec",
                f"the offer can receive no relayed {kind} codec ({', '.join(RELAYED[kind])}); "
                f"offered: {_offered_names(media)}",
            )
        codecs[kind] = choice
    return codecs
