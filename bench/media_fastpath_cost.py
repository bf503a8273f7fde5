"""CPU per packet of the fast path's per-viewer work, without a network peer or event loop.

For ``--viewers`` streams (each its own SRTP session, AEAD_AES_256_GCM as
aiortc prefers), one 720p-sized H264 delta frame (about 10.7 KB, 9 packets) is
sent ``--frames`` times to every viewer: header rewrite with the MID and
abs-send-time extensions, SRTP protect in place (engine/media/srtp.py), and one UDP GSO ``sendmsg`` per frame
(or one ``sendto`` per packet with ``--no-gso``) to a loopback socket nobody
reads (the kernel drops what overflows, after doing the send). Measures the
process CPU per packet, first without the send, then with it (GSO and one
``sendto`` per packet, in the same run): the floor of the fan-out bench's CPU
per viewer (bench/media_fanout.py). It pins itself to core 0, repeats
``--runs`` times and writes every run, the medians and the other load on
core 0 to bench/results/NAME.{md,json}.

    python bench/media_fastpath_cost.py --runs 5
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from fractions import Fraction
from pathlib import Path

from pylibsrtp import Policy, Session

from engine.media import rtp
from engine.media.aiortc_compat import SendParameters
from engine.media.fastpath import Stream
from engine.media.frames import EncodedFrame
from engine.media.srtp import PacketBuffer
from engine.media.udp import DatagramSender

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import CoreWindow, fmt, markdown_table, median, record, write_results  # noqa: E402

CASES = ("header + SRTP", "header + SRTP + one UDP GSO `sendmsg` per frame", "header + SRTP + one `sendto` per packet")


def cost(viewers: int, frames: int, gso: bool, send: bool) -> float:
    """CPU µs per packet of ``frames`` frames to ``viewers`` streams, in this process."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    out.bind(("127.0.0.1", 0))
    extensions = {rtp.URI_MID: 1, rtp.URI_ABS_SEND_TIME: 2}
    streams = []
    for i in range(viewers):
        params = SendParameters("video", "H264", 102, 90000, 103, 1000 + i, 5000 + i, "bench", "0", extensions)
        policy = Policy(
            key=os.urandom(44), ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=Policy.SRTP_PROFILE_AEAD_AES_256_GCM
        )
        streams.append(Stream(params, Session(policy), DatagramSender(out.fileno(), sink.getsockname(), gso=gso)))
    data = b"\x00\x00\x00\x01\x41" + os.urandom(10_700)
    frame = EncodedFrame("video", "H264", data, 0, Fraction(1, 90000))
    frame.packets = rtp.packetize_h264(data)
    frame.payload_bytes = len(data)
    count = frames * viewers * len(frame.packets)
    buffer = PacketBuffer()
    start = time.process_time()
    for k in range(frames):
        frame.first_index = k * len(frame.packets)
        for stream in streams:
            lengths = stream.write_frame(frame, k * 3000, rtp.ntp_now(), buffer)
            if send:
                stream.path.send_packed(buffer.view, lengths)
    spent = time.process_time() - start
    sink.close()
    out.close()
    return spent / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--viewers", type=int, default=200)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--name", default="media_fastpath_cost", help="results go to bench/results/NAME.{md,json}")
    args = parser.parse_args()
    run = record("media_fastpath_cost")
    os.sched_setaffinity(0, {0})
    runs = []
    for _ in range(args.runs):
        window = CoreWindow(os.getpid(), core=0)
        window.start()
        figures = [cost(args.viewers, args.frames, gso=True, send=False),
                   cost(args.viewers, args.frames, gso=True, send=True),
                   cost(args.viewers, args.frames, gso=False, send=True)]
        share = window.stop()
        runs.append({"us_per_packet": dict(zip(CASES, figures, strict=True)), "core0_others": share.others})
        print(runs[-1], flush=True)
    rows = [[case, fmt(median(r["us_per_packet"][case] for r in runs), 2),
             ", ".join(fmt(r["us_per_packet"][case], 2) for r in runs)] for case in CASES]
    markdown = (
        f"{args.viewers} viewers x {args.frames} frames of a 9-packet H264 delta frame, pinned to core 0; other "
        f"load on core 0 per run (share of the core): {', '.join(fmt(r['core0_others'], 2) for r in runs)}.\n\n"
        + markdown_table(["per packet", "CPU µs (median)", "per run"], rows)
    )
    print(markdown)
    print(write_results(args.name, run, markdown, runs))


if __name__ == "__main__":
    main()
