"""What the recorder reads from an H264 access unit without decoding it: NAL units, SPS and PPS.

The MP4 sample entry (avcC) needs the sequence and picture parameter sets before the first
sample is written; the publisher sends them in band with each keyframe.
"""

from __future__ import annotations


def nal_units(data: bytes) -> list[bytes]:
    """The NAL units of an Annex B access unit, start codes removed."""
    units: list[bytes] = []
    starts: list[tuple[int, int]] = []  # (start code position, payload position)
    i = data.find(b"\x00\x00\x01")
    while i >= 0:
        begin = i - 1 if i > 0 and data[i - 1] == 0 else i
        starts.append((begin, i + 3))
        i = data.find(b"\x00\x00\x01", i + 3)
    for index, (_, payload) in enumerate(starts):
        end = starts[index + 1][0] if index + 1 < len(starts) else len(data)
        if end > payload:
            units.append(data[payload:end])
    return units


def parameter_sets(data: bytes) -> tuple[bytes, bytes] | None:
    """(SPS, PPS) carried in an access unit, or None when it lacks either."""
    sps = pps = None
    for unit in nal_units(data):
        kind = unit[0] & 0x1F
        if kind == 7 and sps is None:
            sps = unit
        elif kind == 8 and pps is None:
            pps = unit
    return (sps, pps) if sps is not None and pps is not None else None
