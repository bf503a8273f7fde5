"""What the recorder reads from an H264 access unit without decoding it: NAL units, SPS, PPS, size.

The MP4 sample entry (avcC) needs the sequence and picture parameter sets and the picture
size before the first sample is written; the publisher sends them in band with each keyframe.
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


class _Bits:
    """An RBSP bit reader (emulation prevention bytes removed) with Exp-Golomb codes."""

    def __init__(self, unit: bytes) -> None:
        self._data = unit.replace(b"\x00\x00\x03", b"\x00\x00")
        self._pos = 0

    def bit(self) -> int:
        byte = self._data[self._pos >> 3]  # IndexError on a truncated SPS
        value = (byte >> (7 - (self._pos & 7))) & 1
        self._pos += 1
        return value

    def bits(self, count: int) -> int:
        value = 0
        for _ in range(count):
            value = (value << 1) | self.bit()
        return value

    def ue(self) -> int:
        zeros = 0
        while self.bit() == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("bad Exp-Golomb code in SPS")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        value = self.ue()
        return (value + 1) // 2 if value & 1 else -(value // 2)


_HIGH_PROFILES = (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135)


def sps_size(sps: bytes) -> tuple[int, int]:
    """(width, height) of the pictures an SPS describes (ITU-T H.264 7.3.2.1.1), cropping applied.

    Raises ValueError for an SPS that cannot be read.
    """
    try:
        bits = _Bits(sps[1:])
        profile = bits.bits(8)
        bits.bits(16)  # constraint flags, level
        bits.ue()  # seq_parameter_set_id
        chroma_format = 1
        separate_planes = 0
        if profile in _HIGH_PROFILES:
            chroma_format = bits.ue()
            if chroma_format == 3:
                separate_planes = bits.bit()
            bits.ue()  # bit_depth_luma_minus8
            bits.ue()  # bit_depth_chroma_minus8
            bits.bit()  # qpprime_y_zero_transform_bypass_flag
            if bits.bit():  # seq_scaling_matrix_present_flag
                for index in range(8 if chroma_format != 3 else 12):
                    if bits.bit():
                        _skip_scaling_list(bits, 16 if index < 6 else 64)
        bits.ue()  # log2_max_frame_num_minus4
        poc_type = bits.ue()
        if poc_type == 0:
            bits.ue()
        elif poc_type == 1:
            bits.bit()
            bits.se()
            bits.se()
            for _ in range(bits.ue()):
                bits.se()
        bits.ue()  # max_num_ref_frames
        bits.bit()  # gaps_in_frame_num_value_allowed_flag
        width_mbs = bits.ue() + 1
        height_map_units = bits.ue() + 1
        frame_mbs_only = bits.bit()
        if not frame_mbs_only:
            bits.bit()  # mb_adaptive_frame_field_flag
        bits.bit()  # direct_8x8_inference_flag
        crop = (0, 0, 0, 0)
        if bits.bit():
            crop = (bits.ue(), bits.ue(), bits.ue(), bits.ue())
    except IndexError:
        raise ValueError("truncated SPS") from None
    array_type = 0 if separate_planes else chroma_format
    crop_x = 1 if array_type == 0 else (2 if chroma_format in (1, 2) else 1)
    crop_y = (2 - frame_mbs_only) * (1 if array_type == 0 else (2 if chroma_format == 1 else 1))
    width = width_mbs * 16 - crop_x * (crop[0] + crop[1])
    height = (2 - frame_mbs_only) * height_map_units * 16 - crop_y * (crop[2] + crop[3])
    if width <= 0 or height <= 0:
        raise ValueError("SPS describes an empty picture")
    return width, height


def _skip_scaling_list(bits: _Bits, size: int) -> None:
    last = next_scale = 8
    for _ in range(size):
        if next_scale:
            next_scale = (last + bits.se() + 256) % 256
        last = next_scale or last
