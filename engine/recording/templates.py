"""Stream descriptions for the muxer, read from the publisher's own bitstream: no codec is opened.

PyAV opens every output stream's codec context when it writes the file header, unless the
stream was made with ``add_stream_from_template``: then the codec parameters are copied from
an input stream and nothing is opened. The recorder makes those input streams by demuxing,
in memory, what describes the publisher's media: its first keyframe as a raw H264 elementary
stream (FFmpeg's parser reads the SPS and PPS: size, profile, the avcC extradata), and an
Ogg page sequence carrying the Opus identification header (RFC 7845) and one silent packet
(FFmpeg's Ogg demuxer wants a packet before it reports the stream).
"""

from __future__ import annotations

import io
import struct

import av
from av.container.input import InputContainer

AUDIO_RATE = 48000
#: An Opus packet of 20 ms of silence (TOC: CELT fullband 20 ms, mono, one frame).
SILENT_OPUS = b"\xf8\xff\xfe"


def opus_head(channels: int = 2) -> bytes:
    """The Opus identification header (RFC 7845 5.1) the MP4 ``dOps`` box is built from; no pre-skip."""
    return b"OpusHead" + struct.pack("<BBHIhB", 1, channels, 0, AUDIO_RATE, 0, 0)


def _ogg_crc(data: bytes) -> int:
    """Ogg's CRC-32 (polynomial 0x04C11DB7, not reflected, initial value 0)."""
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) & 0xFFFFFFFF if crc & 0x80000000 else (crc << 1) & 0xFFFFFFFF
    return crc


def _ogg_page(payload: bytes, sequence: int, flags: int, granule: int = 0) -> bytes:
    """One Ogg page (RFC 3533) holding one packet of under 64 KiB."""
    lacing = bytes([255] * (len(payload) // 255) + [len(payload) % 255])
    header = struct.pack("<4sBBqIII", b"OggS", 0, flags, granule, 1, sequence, 0) + bytes([len(lacing)]) + lacing
    crc = _ogg_crc(header + payload)
    return header[:22] + struct.pack("<I", crc) + header[26:] + payload


def opus_source(channels: int = 2) -> InputContainer:
    """An input whose one audio stream describes Opus at 48 kHz with ``channels`` channels."""
    tags = b"OpusTags" + struct.pack("<II", 0, 0)
    data = (_ogg_page(opus_head(channels), 0, 0x02) + _ogg_page(tags, 1, 0)
            + _ogg_page(SILENT_OPUS, 2, 0x04, granule=960))
    return av.open(io.BytesIO(data), format="ogg")


def h264_source(keyframe: bytes) -> InputContainer:
    """An input whose one video stream describes the H264 of ``keyframe`` (Annex B, with SPS and PPS)."""
    try:
        source = av.open(io.BytesIO(keyframe), format="h264")
    except av.FFmpegError as exc:
        raise ValueError(f"the first keyframe cannot be parsed: {exc}") from None
    stream = source.streams.video[0] if source.streams.video else None
    if stream is None or not stream.codec_context.width or not stream.codec_context.extradata:
        source.close()
        raise ValueError("the first keyframe carries no usable SPS and PPS")
    return source
