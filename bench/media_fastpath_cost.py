"""CPU per packet of the fast path's per-viewer work, without a network peer or event loop.

For ``--viewers`` streams (each its own SRTP session, AEAD_AES_256_GCM as
aiortc prefers), one 720p-sized H264 delta frame (about 10.7 KB, 9 packets) is
sent ``--frames`` times to every viewer: header rewrite with the MID and
abs-send-time extensions, SRTP protect in place (engine/media/srtp.py), and one UDP GSO ``sendmsg`` per frame
(or one ``sendto`` per packet with ``--no-gso``) to a loopback socket nobody
reads (the kernel drops what overflows, after doing the send). Prints the
process CPU per packet, first without the send, then with it: the floor of
the fan-out bench's CPU per viewer (bench/media_fanout.py).

    taskset -c 0 python bench/media_fastpath_cost.py
"""

from __future__ import annotations

import argparse
import os
import socket
import time
from fractions import Fraction

from pylibsrtp import Policy, Session

from engine.media import rtp
from engine.media.aiortc_compat import SendParameters
from engine.media.fastpath import Stream
from engine.media.frames import EncodedFrame
from engine.media.srtp import PacketBuffer
from engine.media.udp import DatagramSender


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--viewers", type=int, default=200)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--no-gso", action="store_true")
    args = parser.parse_args()
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    out.bind(("127.0.0.1", 0))
    extensions = {rtp.URI_MID: 1, rtp.URI_ABS_SEND_TIME: 2}
    streams = []
    for i in range(args.viewers):
        params = SendParameters("video", "H264", 102, 90000, 103, 1000 + i, 5000 + i, "bench", "0", extensions)
        policy = Policy(
            key=os.urandom(44), ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=Policy.SRTP_PROFILE_AEAD_AES_256_GCM
        )
        path = DatagramSender(out.fileno(), sink.getsockname(), gso=not args.no_gso)
        streams.append(Stream(params, Session(policy), path))
    data = b"\x00\x00\x00\x01\x41" + os.urandom(10_700)
    frame = EncodedFrame("video", "H264", data, 0, Fraction(1, 90000))
    frame.packets = rtp.packetize_h264(data)
    frame.payload_bytes = len(data)
    count = args.frames * args.viewers * len(frame.packets)
    buffer = PacketBuffer()

    def run(send: bool) -> float:
        start = time.process_time()
        for k in range(args.frames):
            frame.first_index = k * len(frame.packets)
            for stream in streams:
                lengths = stream.write_frame(frame, k * 3000, rtp.ntp_now(), buffer)
                if send:
                    stream.path.send_packed(buffer.view, lengths)
        return (time.process_time() - start) / count * 1e6

    print(f"{len(frame.packets)} packets per frame, {args.viewers} viewers, {args.frames} frames")
    print(f"header + SRTP: {run(False):.2f} us/packet")
    print(f"header + SRTP + {'sendto' if args.no_gso else 'GSO sendmsg'}: {run(True):.2f} us/packet")


if __name__ == "__main__":
    main()
