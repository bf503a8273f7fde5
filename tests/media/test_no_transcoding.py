"""The relay never decodes or encodes: no codec is created or used in the whole run.

Publisher and viewers here also forward encoded data only (pre-encoded
packets, tapped receivers), so any decoder or encoder in the process would
have to be the server's.
"""

from __future__ import annotations

import asyncio
import threading

import aiortc.codecs
import aiortc.rtcrtpreceiver
import aiortc.rtcrtpsender
from media_peers import Publisher, Viewer

from engine.media import aiortc_compat


async def test_no_codec_is_created_or_used(relay, h264, vp8, opus, monkeypatch):
    uses: list[str] = []

    def counting(name, original):
        def wrapper(*args, **kwargs):
            uses.append(name)
            return original(*args, **kwargs)

        return wrapper

    for module in (aiortc.codecs, aiortc.rtcrtpreceiver, aiortc.rtcrtpsender):
        for name in ("get_decoder", "get_encoder"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, counting(name, getattr(module, name)))
    for cls in (aiortc.codecs.H264Encoder, aiortc.codecs.Vp8Encoder, aiortc.codecs.OpusEncoder):
        monkeypatch.setattr(cls, "encode", counting(f"{cls.__name__}.encode", cls.encode))
    for cls in (aiortc.codecs.H264Decoder, aiortc.codecs.Vp8Decoder, aiortc.codecs.OpusDecoder):
        monkeypatch.setattr(cls, "decode", counting(f"{cls.__name__}.decode", cls.decode))

    for room, stream in (("shop", h264), ("other", vp8)):
        codecs = {"video": "H264" if stream is h264 else "VP8", "audio": "opus"}
        publisher = Publisher(stream, opus)
        assert (await publisher.publish(relay.http, relay.base, room, relay.key(room), codecs)).status == 201
        viewers = [Viewer() for _ in range(2)]
        for viewer in viewers:
            await viewer.whep(relay.http, relay.base, room)

        async def received(viewers=viewers) -> None:
            while not all(v.log.count("video") >= 20 and v.log.count("audio") >= 20 for v in viewers):
                await asyncio.sleep(0.02)

        await asyncio.wait_for(received(), 10)
        decoder_threads = [t.name for t in threading.enumerate() if "decoder" in t.name]
        assert decoder_threads == []
        for peer in (*viewers, publisher):
            await peer.close()
    assert uses == []


def test_pack_only_sender_refuses_to_encode():
    packer = aiortc_compat._PackOnly(aiortc_compat._OpusPacker())
    try:
        packer.encode(object())
    except RuntimeError as exc:
        assert "never encodes" in str(exc)
    else:
        raise AssertionError("encode must refuse")
