"""Malformed and oversized offers, candidate floods and PATCH floods on WHIP, WHEP and the websocket.

Every refusal is a 4xx with a message naming the fault, never a 500 with a
traceback; and no offer or PATCH can hold the event loop (tests/looplag.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import websockets
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from looplag import MAX_STALL, loop_lag
from media_peers import Publisher, Viewer, post_offer
from sdp_edits import candidates, mids, with_candidates

from engine.app import App
from engine.config import Config
from engine.media.config import MediaConfig
from signaling.tokens import mint

H264_OPUS = {"video": "H264", "audio": "opus"}
SDPFRAG = {"Content-Type": "application/trickle-ice-sdpfrag"}


def _first_media_line(sdp: str, prefix: str) -> str:
    body = sdp[sdp.index("\r\nm=") :]
    return re.search(rf"^{prefix}[^\r]*", body, re.M).group(0)


#: Deterministic malformed offers: name -> (rewrite of a valid offer, words the refusal must contain).
MALFORMED: dict[str, tuple[Callable[[str], str], str]] = {
    "connection line without address": (
        lambda sdp: sdp.replace(_first_media_line(sdp, "c="), "c=IN IP4", 1),
        "connection line",
    ),
    "bare m=video": (lambda sdp: sdp.replace(_first_media_line(sdp, "m=video"), "m=video", 1), "media line"),
    "candidate ending in typ": (lambda sdp: re.sub(r"(a=candidate:[^\r]* typ) host", r"\1", sdp, count=1), "candidate"),
    "duplicate a=mid": (lambda sdp: sdp.replace(f"a=mid:{mids(sdp)[1]}", f"a=mid:{mids(sdp)[0]}"), "a=mid"),
    "BUNDLE naming an absent mid": (
        lambda sdp: re.sub(r"^a=group:BUNDLE ([^\r]*)", r"a=group:BUNDLE \1 nowhere", sdp, flags=re.M),
        "BUNDLE",
    ),
    "no a=mid": (lambda sdp: re.sub(r"^a=mid:[^\r]*\r\n", "", sdp, flags=re.M), "a=mid"),
    "a second a=mid without a value": (lambda sdp: sdp.replace("a=end-of-candidates", "a=mid", 1), "a=mid"),
    "payload type out of range": (
        lambda sdp: sdp.replace(_first_media_line(sdp, "m=video"), _first_media_line(sdp, "m=video") + " 300", 1),
        "payload type",
    ),
    # str.isdigit accepts these; int("²") raises, int("٩٩") reads 99
    "payload type in superscript digits": (
        lambda sdp: sdp.replace(_first_media_line(sdp, "m=video"), _first_media_line(sdp, "m=video") + " \u00b2", 1),
        "payload type",
    ),
    "payload type in Arabic-Indic digits": (
        lambda sdp: sdp.replace(_first_media_line(sdp, "m=video"), _first_media_line(sdp, "m=video") + " \u0669", 1),
        "payload type",
    ),
    "candidate priority in Arabic-Indic digits": (
        lambda sdp: with_candidates(sdp, ["a=candidate:1 1 udp \u0669\u0669 127.0.0.1 40000 typ host"]),
        "candidate",
    ),
    # aiortc splits lines on a bare CR too: what follows one must not pass the screen unseen
    "a second a=mid behind a bare CR": (
        lambda sdp: sdp.replace(f"a=mid:{mids(sdp)[0]}\r\n", f"a=mid:{mids(sdp)[0]}\r\na=x\ra=mid:hidden\r\n", 1),
        "line break",
    ),
    "candidates behind a bare CR": (
        lambda sdp: with_candidates(sdp, ["a=x" + "".join("\r" + line for line in candidates(40))]),
        "line break",
    ),
}


async def refusal(response: aiohttp.ClientResponse) -> tuple[int, str, str]:
    body = await response.json()
    return response.status, body["error"]["code"], body["error"]["message"]


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_malformed_offers_are_400_on_whip_and_whep(relay, h264, opus, case):
    rewrite, words = MALFORMED[case]
    publisher, viewer = Publisher(h264, opus), Viewer()
    whip = rewrite(await publisher.prepare(H264_OPUS))
    whep = rewrite(await viewer.offer())
    attempts = ((f"{relay.base}/whip/shop", whip, relay.key("shop")), (f"{relay.base}/whep/shop", whep, None))
    for url, sdp, key in attempts:
        status, code, message = await refusal(await post_offer(relay.http, url, sdp, key))
        assert (status, code) == (400, "bad_request"), message
        assert words in message
    assert relay.media.peer_count == 0
    await publisher.close()
    await viewer.close()


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    config = Config(
        host="127.0.0.1", http_port=0, ws_port=0, data_dir=str(tmp_path / "data"), secret="s" * 40,
        admin_key="test-admin", tick_ms=20, announce="127.0.0.1", demo_room="shop",
    )
    engine = App(config)
    await engine.start()
    yield engine
    await engine.stop()


async def ws_request(ws: Any, message: dict[str, Any]) -> dict[str, Any]:
    await ws.send(orjson.dumps(message).decode())
    while True:
        reply = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        if reply.get("re") == message["id"] and reply["type"] in ("ack", "error"):
            return reply


async def test_malformed_offers_are_bad_request_on_the_websocket(app):
    viewer = Viewer()
    valid = await viewer.offer()
    url = f"ws://127.0.0.1:{app.ws_port}/ws?token={mint(app.secret, 'shop', 'viewer', 'v1', 600)}"
    async with websockets.connect(url) as ws:
        for n, (case, (rewrite, words)) in enumerate(MALFORMED.items()):
            reply = await ws_request(ws, {"type": "offer", "id": f"r{n}", "sdp": rewrite(valid)})
            assert reply["type"] == "error", case
            assert reply["code"] == "bad_request" and words in reply["message"], (case, reply)
        hidden = candidates(1)[0][2:] + "\u2028a=candidate:2 1 udp 5 127.0.0.1 40001 typ host"
        reply = await ws_request(ws, {"type": "candidate", "id": "hidden", "candidate": hidden, "sdpMid": "0"})
        assert reply["code"] == "bad_request" and "line break" in reply["message"], reply
        flood = with_candidates(valid, candidates(200))
        reply = await ws_request(ws, {"type": "offer", "id": "flood", "sdp": flood})
        assert reply["code"] == "too_many_candidates", reply
    assert app.media.peer_count == 0
    await viewer.close()


def _mutate(lines: list[str], edits: list[tuple[int, int, int, str]]) -> str:
    """Delete, duplicate, truncate, swap or overwrite lines and words of an offer."""
    lines = list(lines)
    for position, op, other, token in edits:
        i = position % len(lines)
        words = lines[i].split(" ")
        if op == 0:
            del lines[i]
        elif op == 1:
            lines.insert(i, lines[i])
        elif op == 2:
            lines[i] = " ".join(words[: other % (len(words) + 1)]) if len(words) > 1 else lines[i][: other % 8]
        elif op == 3:
            j = other % len(lines)
            lines[i], lines[j] = lines[j], lines[i]
        else:
            words[other % len(words)] = token
            lines[i] = " ".join(words)
        if not lines:
            break
    return "\r\n".join(lines)


EDITS = st.lists(
    st.tuples(
        st.integers(0, 200),
        st.integers(0, 4),
        st.integers(0, 200),
        st.sampled_from(["", "x", "0", "-1", "300", "99999999999", "a=mid:0", "a=mid", ":", "typ", "IN", "IP6"]),
    ),
    min_size=1,
    max_size=4,
)


@pytest.fixture
async def valid_offers(h264, opus) -> dict[str, str]:
    """A real publisher's and a real viewer's offer (their peer connections closed again)."""
    publisher, viewer = Publisher(h264, opus), Viewer()
    offers = {"whip": await publisher.prepare(H264_OPUS), "whep": await viewer.offer()}
    await publisher.close()
    await viewer.close()
    return offers


@pytest.mark.parametrize("media_config", [MediaConfig(announced_addresses=("127.0.0.1",), max_connecting=10**6)])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=EDITS, whip=st.booleans())
@example(edits=[(27, 4, 0, "a=mid:0"), (189, 2, 5, "")], whip=True)  # found by this test: a bare "a=mid" line
async def test_mutated_offers_never_answer_5xx(relay, valid_offers, edits, whip):
    endpoint = "whip" if whip else "whep"
    key = relay.key("shop") if whip else None
    mutated = _mutate(valid_offers[endpoint].split("\r\n"), edits)
    response = await post_offer(relay.http, f"{relay.base}/{endpoint}/shop", mutated, key)
    assert response.status < 500, await response.text()
    if response.status == 201:
        assert (await relay.http.delete(relay.base + response.headers["Location"])).status == 200
    else:
        assert (await response.json())["error"]["message"]


async def test_candidate_flood_in_an_offer_is_refused_without_a_stall(relay):
    viewer = Viewer()
    valid = await viewer.offer()
    flood = with_candidates(valid, candidates(450))  # about 30 KB: under the size limit, far over the candidate cap
    huge = with_candidates(valid, candidates(4000))
    async with loop_lag() as lag:
        status, code, message = await refusal(await post_offer(relay.http, f"{relay.base}/whep/shop", flood))
        assert (status, code) == (400, "too_many_candidates")
        assert "450" in message and "32" in message
        status, code, _ = await refusal(await post_offer(relay.http, f"{relay.base}/whep/shop", huge))
        assert (status, code) == (413, "too_large")
        await asyncio.sleep(0.3)
    assert lag.worst < MAX_STALL, lag.worst
    at_cap = with_candidates(valid, candidates(32))
    response = await post_offer(relay.http, f"{relay.base}/whep/shop", at_cap)
    assert response.status == 201
    await viewer.close()


async def _viewer_session(relay) -> tuple[Viewer, str, str]:
    """A WHEP viewer whose offer carries no candidates and no end-of-candidates (it means to trickle)."""
    viewer = Viewer()
    sdp = with_candidates(await viewer.offer(), [], end=False)
    response = await post_offer(relay.http, f"{relay.base}/whep/shop", sdp)
    assert response.status == 201
    mid = mids(sdp)[0]
    return viewer, relay.base + response.headers["Location"], mid


async def test_candidate_flood_in_a_patch_is_refused_without_a_stall(relay):
    viewer, resource, mid = await _viewer_session(relay)
    flood = f"a=mid:{mid}\r\n" + "\r\n".join(candidates(450)) + "\r\n"
    async with loop_lag() as lag:
        status, code, _ = await refusal(await relay.http.patch(resource, data=flood, headers=SDPFRAG))
        assert (status, code) == (422, "too_many_candidates")
        # the cap counts the whole session: 30 accepted, then two more are two too many
        ok = await relay.http.patch(resource, data=f"a=mid:{mid}\r\n" + "\r\n".join(candidates(30)), headers=SDPFRAG)
        assert ok.status == 204
        over = f"a=mid:{mid}\r\n" + "\r\n".join(candidates(3, port=50000)) + "\r\n"
        status, code, message = await refusal(await relay.http.patch(resource, data=over, headers=SDPFRAG))
        assert (status, code) == (422, "too_many_candidates"), message
        await asyncio.sleep(0.3)
    assert lag.worst < MAX_STALL, lag.worst
    bad = await relay.http.patch(resource, data=f"a=mid:{mid}\r\na=candidate:1 1 udp 5 127.0.0.1 9 typ\r\n",
                                 headers=SDPFRAG)
    assert (await refusal(bad))[:2] == (400, "bad_request")
    # an ICE restart starts a new count, under the same cap
    restart = f"a=ice-ufrag:newu\r\na=ice-pwd:{'n' * 22}\r\na=mid:{mid}\r\n" + "\r\n".join(candidates(100)) + "\r\n"
    refused = await relay.http.patch(resource, data=restart, headers={**SDPFRAG, "If-Match": "*"})
    assert (await refusal(refused))[:2] == (422, "too_many_candidates")
    await viewer.close()


@pytest.fixture
def media_config() -> MediaConfig:
    return MediaConfig(announced_addresses=("127.0.0.1",))


@pytest.mark.parametrize(
    "media_config", [MediaConfig(announced_addresses=("127.0.0.1",), patch_rate=0.5, patch_burst=5)]
)
async def test_patches_are_rate_limited_per_session(relay):
    viewer, resource, mid = await _viewer_session(relay)
    statuses = []
    for n in range(8):
        response = await relay.http.patch(resource, data=f"a=mid:{mid}\r\n{candidates(1, 41000 + n)[0]}\r\n",
                                          headers=SDPFRAG)
        statuses.append(response.status)
        if response.status == 429:
            assert response.headers["Retry-After"]
            assert (await response.json())["error"]["code"] == "rate_limited"
    assert statuses[:5] == [204] * 5 and statuses[5:] == [429] * 3, statuses
    other, other_resource, other_mid = await _viewer_session(relay)  # the budget is per session
    fragment = f"a=mid:{other_mid}\r\n{candidates(1)[0]}\r\n"
    assert (await relay.http.patch(other_resource, data=fragment, headers=SDPFRAG)).status == 204
    await viewer.close()
    await other.close()


@pytest.mark.parametrize("media_config", [MediaConfig(announced_addresses=("127.0.0.1",), max_sdp_bytes=3500)])
async def test_bodies_over_the_size_limit_are_413(relay):
    viewer, resource, mid = await _viewer_session(relay)
    big = "a=mid:0\r\n" + "a=x-padding:" + "p" * 5000 + "\r\n"
    status, code, message = await refusal(await relay.http.patch(resource, data=big, headers=SDPFRAG))
    assert (status, code) == (413, "too_large") and "3500" in message
    offer = with_candidates(await Viewer().offer(), candidates(20))
    assert len(offer) > 3500
    status, code, _ = await refusal(await post_offer(relay.http, f"{relay.base}/whep/shop", offer))
    assert (status, code) == (413, "too_large")
    await viewer.close()


def test_media_config_checks_the_candidate_filter():
    with pytest.raises(ValueError, match="nowhere"):
        dataclasses.replace(MediaConfig(), ice_candidate_filter="loopback,nowhere")


#: Line boundaries of str.splitlines (aiortc's reading of SDP) besides \n and \r\n.
LINE_BREAKS = ("\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")


async def test_every_other_line_break_is_refused_in_offers_and_fragments(relay):
    viewer, resource, mid = await _viewer_session(relay)
    valid = await Viewer().offer()
    for separator in LINE_BREAKS:
        # 40 candidates past the cap of 32, 39 of them on what the screen would read as one line
        hidden = with_candidates(valid, [separator.join(candidates(40))])
        status, code, message = await refusal(await post_offer(relay.http, f"{relay.base}/whep/shop", hidden))
        assert (status, code) == (400, "bad_request"), (separator, message)
        assert "line break" in message, message
        fragment = f"a=mid:{mid}\r\na=x{separator}{candidates(1)[0]}\r\n"
        status, code, message = await refusal(await relay.http.patch(resource, data=fragment, headers=SDPFRAG))
        assert (status, code) == (400, "bad_request") and "line break" in message, (separator, message)
    assert relay.media.peer_count == 1
    await viewer.close()


async def test_a_hidden_candidate_flood_is_refused_without_a_stall(relay):
    valid = await Viewer().offer()
    short = [f"a=candidate:{n} 1 udp 1 127.0.0.1 {40000 + n} typ host" for n in range(550)]
    flood = with_candidates(valid, ["a=x" + "".join("\r" + line for line in short)])
    assert len(flood) < relay.media.config.max_sdp_bytes
    async with loop_lag() as lag:
        for _ in range(5):
            status, code, message = await refusal(await post_offer(relay.http, f"{relay.base}/whep/shop", flood))
            assert (status, code) == (400, "bad_request") and "line break" in message, message
        await asyncio.sleep(0.3)
    assert lag.worst < MAX_STALL, lag.worst
    assert relay.media.peer_count == 0


def _many_sections(sections: int, bundled: int) -> str:
    """An offer of ``sections`` audio sections and a BUNDLE group naming the last one ``bundled`` times."""
    bundle = "a=group:BUNDLE " + " ".join([str(sections - 1)] * bundled)
    lines = ["v=0", "o=- 1 1 IN IP4 0.0.0.0", "s=-", "t=0 0", bundle]
    for n in range(sections):
        lines += ["m=audio 9 X 0", f"a=mid:{n}"]
    return "\r\n".join(lines) + "\r\n"


async def test_offers_with_many_media_sections_are_refused_without_a_stall(relay):
    huge = _many_sections(650, 3300)  # about 30 KB, under the size limit
    assert len(huge) < relay.media.config.max_sdp_bytes
    async with loop_lag() as lag:
        for _ in range(3):
            status, code, message = await refusal(await post_offer(relay.http, f"{relay.base}/whep/shop", huge))
            assert (status, code) == (400, "bad_request") and "16 media sections" in message, message
        await asyncio.sleep(0.2)
    assert lag.worst < MAX_STALL, lag.worst
    status, _, message = await refusal(await post_offer(relay.http, f"{relay.base}/whep/shop", _many_sections(17, 1)))
    assert status == 400 and "media sections" in message


@pytest.mark.parametrize("media_config", [MediaConfig(announced_addresses=("127.0.0.1",), max_media_sections=1)])
async def test_the_media_section_cap_is_configurable(relay):
    viewer = Viewer()  # audio and video: two sections
    status, code, message = await refusal(await post_offer(relay.http, f"{relay.base}/whep/shop", await viewer.offer()))
    assert (status, code) == (400, "bad_request") and "more than 1 media sections" in message
    await viewer.close()
