"""Media fan-out bench: one publisher, N viewers, the relay pinned to one core.

For each N the bench starts ``livecart serve`` on core 0 (its own data dir
and ports, ICE on 127.0.0.1), publishes a pre-encoded 1280x720 ~2.5 Mbit/s
H264 + Opus stream over WHIP from this process, and joins N WHEP viewers from
worker processes (bench/media_viewer.py) on core 1, one every
``--join-interval`` seconds. After the last join and a settling pause it
measures a steady window:

- server CPU (utime + stime from /proc/PID/stat) over the window, and over a
  publisher-only window before any viewer joined (the baseline);
- frames delivered: per viewer, the share of the video frames the publisher
  sent during the window that arrived complete (every RTP packet);
- added lag: per delivered frame, arrival of its last packet at the viewer
  minus the moment the publisher handed it to its sender (one machine, one
  monotonic clock). Viewers identify frames without decoding: RTP timestamps
  give their order, and each frame's packet count and payload bytes say which
  frame of the loop it is;
- memory per viewer: (server RSS in the window - RSS with the publisher only) / N;
- join to first frame: from the viewer's WHEP ``POST`` to the last packet of
  its first complete video frame.

N passes when every viewer joined, received >= 99 % of the frames and the
p99 added lag (all viewers' frames pooled) is under 150 ms. ``--find-max``
then bisects between the largest passing and the smallest failing N.

Each N runs ``--runs`` times; the table has every run and, per N, a row of
medians (each column's median over the runs; derived columns of that row are
computed from its own medians). Relay counters (NACKs, retransmissions,
dropped frames) are read at both ends of the window, like the CPU, so they
count the same seconds as the lossy viewer's losses. The fast/stock ratio is
printed only for an N both paths ran in this command. Results go to
bench/results/NAME.{md,json} with the commit, command and machine.

Recording (the fMP4 remux of every broadcast, engine/recording/) is off
(``--no-record``) unless ``--record on`` or ``--record both``: with ``both``
each run of an N runs the server with recording off, then on, one after the
other, and the report adds the recording's cost per room: the server's CPU
with recording on minus off, in the publisher-only window (the room alone)
and in the measured window (with N viewers), as % of one core, and the
viewers' p99 added lag on and off. A run with recording on checks that the
room's recording grew during it.

    python bench/media_fanout.py --viewers 10,25,50,100 --find-max --path stock
    python bench/media_fanout.py --viewers 50 --runs 5 --record both --name recording_cost
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription

from engine.media import aiortc_compat

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import (  # noqa: E402
    CoreWindow,
    core_busy_share,
    fmt,
    free_port,
    markdown_table,
    median,
    percentile,
    prioritise,
    process_cpu,
    record,
    write_results,
)
from media_lossy import LossyViewer  # noqa: E402
from media_stream import ReplayTrack, Stream, StreamSpec, load, signature  # noqa: E402

HERE = Path(__file__).resolve().parent
SRTP_TAGS = (16, 10)  # AEAD_AES_*_GCM, AES128_CM_HMAC_SHA1_80
LOOPBACK = ("127.0.0.1",)
ROOM = "bench"


@dataclass
class Result:
    """One N on one forwarding path."""

    path: str
    viewers: int
    record: bool = False  # the server recorded the broadcast
    joined: int = 0
    server_cpu: float = 0.0  # % of one core over the window
    baseline_cpu: float = 0.0  # % of one core, publisher only
    core0_others: float = 0.0  # % of core 0 used by other processes during the window (noise)
    core1_busy: float = 0.0  # % of core 1 busy (viewers, publisher and anything else)
    rss_baseline_mb: float = 0.0
    rss_mb: float = 0.0
    kb_per_viewer: float = 0.0
    frames_sent: int = 0
    delivered_min: float = 0.0  # share of sent frames, worst viewer
    delivered_median: float = 0.0
    audio_min: float = 0.0
    lag_p50_ms: float | None = None
    lag_p99_ms: float | None = None
    lag_worst_viewer_p99_ms: float | None = None
    keyframe_lag_p50_ms: float | None = None
    audio_lag_p50_ms: float | None = None
    audio_lag_p99_ms: float | None = None
    first_frame_p50_ms: float | None = None
    first_frame_p99_ms: float | None = None
    # relay counters over the window (read at both ends, like the CPU)
    dropped_frames: float = 0.0  # frames dropped for slow viewers
    nacks: float = 0.0  # packets NACKed by viewers
    retransmits: float = 0.0  # packets re-sent from the room's history (fast path)
    lossy_dropped: int = 0  # packets the one lossy viewer (bench/media_lossy.py) dropped in the window
    lossy_delivered: float = 0.0  # its complete frames / frames sent, over the frames that arrived in the window
    run: int = 1
    errors: list[str] = field(default_factory=list)

    @property
    def cpu_per_viewer(self) -> float:
        """% of a core per viewer: all the server's CPU (publisher included) over N, the conservative share."""
        return self.server_cpu / self.viewers

    @property
    def viewers_per_core(self) -> float:
        return 100 / self.cpu_per_viewer if self.cpu_per_viewer else float("inf")

    @property
    def passed(self) -> bool:
        lag = self.lag_p99_ms
        return self.joined == self.viewers and self.delivered_min >= 0.99 and lag is not None and lag < 150


# --- server ----------------------------------------------------------------


def forwarding_flag() -> str | None:
    """The ``livecart serve`` flag that picks the forwarding path, if this build has one."""
    usage = subprocess.run(["livecart", "serve", "--help"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"--(?:media-)?forwarding\b", usage)
    return match.group(0) if match else None


class Server:
    """``livecart serve`` on core 0 with its own data dir and ports."""

    def __init__(self, path: str, flag: str | None, workdir: Path, nice: int = 0, recording: bool = False) -> None:
        self.http_port, self.ws_port = free_port(), free_port()
        self.data = workdir / "data"
        self.log = workdir / "server.log"
        command = [
            "taskset", "-c", "0", "livecart", "serve",
            "--host", "127.0.0.1", "--http-port", str(self.http_port), "--ws-port", str(self.ws_port),
            "--data-dir", str(self.data), "--announce", "127.0.0.1", "--demo-room", ROOM,
        ]  # fmt: skip
        if flag:
            command += [flag, path]
        if not recording:
            command.append("--no-record")
        self.command = command
        self.nice = nice
        self.base = f"http://127.0.0.1:{self.http_port}"
        self.process: subprocess.Popen[str] | None = None
        self.stream_key = ""

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=self.log.open("w"), text=True, start_new_session=True
        )
        prioritise(self.process.pid, self.nice)
        deadline = time.monotonic() + 30
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"livecart serve exited; see {self.log}")
            match = re.search(r"stream key:\s+(\S+)", line)
            if match:
                self.stream_key = match.group(1)
                return
        raise RuntimeError("livecart serve did not print the demo room's stream key")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def cpu_seconds(self) -> float:
        return process_cpu(self.pid)

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024

    def metrics(self) -> dict[str, float]:
        """Sums of the relay's counters for the bench room, by metric name."""
        text = urllib.request.urlopen(f"{self.base}/metrics", timeout=10).read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("#") or f'room="{ROOM}"' not in line:
                continue
            name, value = line.rsplit(" ", 1)
            key = name.split("{", 1)[0]
            out[key] = out.get(key, 0.0) + float(value)
        return out

    def recording_bytes(self) -> int:
        """Bytes of the bench room's recording in progress (0 when none)."""
        url = f"{self.base}/api/rooms/{ROOM}/recordings"
        recordings = json.loads(urllib.request.urlopen(url, timeout=10).read())["recordings"]
        return sum(r["bytes"] for r in recordings if r["state"] == "recording")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# --- publisher -------------------------------------------------------------


class Publisher:
    """A WHIP publisher replaying the pre-encoded streams; ignores PLI as OBS does."""

    def __init__(self, video: Stream, audio: Stream) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.video = ReplayTrack(video)
        self.audio = ReplayTrack(audio)
        self.connected = asyncio.Event()

        @self.pc.on("connectionstatechange")
        def changed() -> None:
            if self.pc.connectionState == "connected":
                self.connected.set()

    async def publish(self, http: aiohttp.ClientSession, server: Server) -> None:
        for track, codec in ((self.audio, "opus"), (self.video, "h264")):
            transceiver = self.pc.addTransceiver(track, direction="sendonly")
            aiortc_compat.tap_sender(transceiver.sender, codec, lambda: None, lambda _: None)
            caps = [c for c in RTCRtpSender.getCapabilities(track.kind).codecs if c.name.lower() == codec]
            transceiver.setCodecPreferences(caps)
        aiortc_compat.bind_ice(self.pc, LOOPBACK)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {server.stream_key}"}
        response = await http.post(f"{server.base}/whip/{ROOM}", data=self.pc.localDescription.sdp, headers=headers)
        answer = await response.text()
        if response.status != 201:
            raise RuntimeError(f"WHIP publish failed: {response.status} {answer}")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await asyncio.wait_for(self.connected.wait(), 20)

    async def close(self) -> None:
        await self.pc.close()


# --- viewers ---------------------------------------------------------------


async def start_workers(
    args: argparse.Namespace, server: Server, n: int, workdir: Path, room: str = ROOM
) -> list[Any]:
    """Launch the viewer processes of ``room`` on core 1; returns (process, output path) pairs, not yet
    joining. ``server`` is anything with a ``base`` URL (the cascade bench passes its nodes)."""
    count = math.ceil(n / args.per_process)
    workers = []
    for w in range(count):
        out = workdir / f"viewers-{w}.json"
        process = await asyncio.create_subprocess_exec(
            "taskset", "-c", "1", sys.executable, str(HERE / "media_viewer.py"),
            "--base", server.base, "--room", room,
            "--first", str(w), "--stride", str(count), "--count", str(len(range(w, n, count))),
            "--join-interval", str(args.join_interval), "--rcvbuf", str(args.viewer_rcvbuf), "--out", str(out),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        workers.append((process, out))
    for process, _ in workers:
        line = await asyncio.wait_for(process.stdout.readline(), 60)
        if line.strip() != b"ready":
            raise RuntimeError(f"viewer process did not start: {line!r}")
    return workers


async def collect_workers(workers: list[Any], errors: list[str]) -> list[dict[str, Any]]:
    """The viewers' records, once their processes (from ``start_workers``) have written them."""
    records: list[dict[str, Any]] = []
    for process, out in workers:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), 60)
        if out.exists():
            records += json.loads(out.read_text())
        else:
            errors.append(f"viewer process {process.pid} wrote no results")
    return records


# --- analysis --------------------------------------------------------------


def unwrap(frames: list[list[float]]) -> list[list[float]]:
    """Frames in arrival order with 32-bit RTP timestamps unwrapped."""
    frames = sorted(frames, key=lambda f: f[1])
    offset, previous = 0, None
    for frame in frames:
        ts = int(frame[0])
        if previous is not None and ts - previous < -(1 << 31):
            offset += 1 << 32
        elif previous is not None and ts - previous > 1 << 31:
            offset -= 1 << 32
        previous = ts
        frame[0] = ts + offset
    return frames


class Matcher:
    """Finds which published frame each received frame is, for one kind (see module docstring).

    A received frame is known by its RTP timestamp, packet count and payload
    bytes. The signatures of ``gram`` consecutive frames (one RTP timestamp
    step apart) are looked up among the loop's; where they fit one place only
    they vote for the timestamp of the loop's start, and the winner places
    every frame. The loop is then chosen by time: the latest one the
    publisher sent before the frame arrived.
    """

    def __init__(self, stream: Stream, sent: list[float], gram: int, path: str = "stock") -> None:
        self.signatures = signature(stream, path)
        self.keyframes = stream.keyframes
        self.loop = len(self.signatures)
        self.step = stream.duration // self.loop
        self.period = stream.duration
        self.sent = sent
        self.gram = gram
        self.tag: int | None = None

    def _tagged(self, tag: int) -> list[tuple[int, int]]:
        return [(packets, size + packets * tag) for packets, size in self.signatures]

    def _grams(self, tag: int) -> dict[tuple[tuple[int, int], ...], list[int]]:
        tagged = self._tagged(tag)
        out: dict[tuple[tuple[int, int], ...], list[int]] = {}
        for i in range(self.loop):
            key = tuple(tagged[(i + k) % self.loop] for k in range(self.gram))
            out.setdefault(key, []).append(i)
        return out

    def _votes(self, frames: list[list[float]], tag: int) -> tuple[int, int]:
        """(timestamp of loop position 0 modulo one loop, votes for it)."""
        grams = self._grams(tag)
        complete = {int(f[0]): (int(f[3]), int(f[4])) for f in frames if f[5]}
        tally: dict[int, int] = {}
        for ts in complete:
            key = tuple(complete.get(ts + k * self.step) for k in range(self.gram))
            places = grams.get(key, ()) if None not in key else ()
            if len(places) == 1:
                base = (ts - places[0] * self.step) % self.period
                tally[base] = tally.get(base, 0) + 1
        if not tally:
            return 0, 0
        base = max(tally, key=tally.__getitem__)
        return base, tally[base]

    def match(self, frames: list[list[float]]) -> dict[int, tuple[float, bool]]:
        """Published frame index -> (arrival of its last packet, complete) for one viewer."""
        if self.tag is None:
            self.tag = max(SRTP_TAGS, key=lambda t: self._votes(frames, t)[1])
        base, votes = self._votes(frames, self.tag)
        if not votes:
            return {}
        tagged = self._tagged(self.tag)
        out: dict[int, tuple[float, bool]] = {}
        for ts, _first, last, packets, size, marker in frames:
            delta = int(ts) - base
            if delta % self.step:
                continue  # a cached frame replayed with packed timestamps at join
            position = (delta // self.step) % self.loop
            index = self._latest_sent(position, last)
            if index is not None:
                out[index] = (last, bool(marker) and tagged[position] == (int(packets), int(size)))
        return out

    def _latest_sent(self, position: int, arrival: float) -> int | None:
        """The last frame at ``position`` of the loop the publisher sent before ``arrival``."""
        sent = self.sent
        if position >= len(sent):
            return None
        index = position + self.loop * ((len(sent) - 1 - position) // self.loop)
        while index >= 0 and sent[index] > arrival:
            index -= self.loop
        return index if index >= 0 else None


def delivered(matcher: Matcher, frames: list[list[float]], counted: list[int]) -> dict[int, float]:
    """Added lag (ms) of each counted frame this viewer received complete, by published frame index."""
    received = matcher.match(unwrap(frames))
    return {g: 1000 * (received[g][0] - matcher.sent[g]) for g in counted if g in received and received[g][1]}


def analyse(
    result: Result,
    viewers: list[dict[str, Any]],
    video: Matcher,
    audio: Matcher,
    window: tuple[float, float],
) -> None:
    w0, w1 = window
    late = [v["index"] for v in viewers if v["answered"] > w0]
    if late:
        result.errors.append(f"{len(late)} viewers joined after the window began (client or server starved)")
    counted = [g for g, t in enumerate(video.sent) if w0 <= t <= w1]
    audio_counted = [g for g, t in enumerate(audio.sent) if w0 <= t <= w1]
    result.frames_sent = len(counted)
    lags: list[float] = []
    audio_lags: list[float] = []
    keyframe_lags: list[float] = []  # keyframes are ~1.7 % of frames: their burst to every viewer sets the p99
    keyframes = video.keyframes
    shares, audio_shares, worst_p99, first_frames = [], [], [], []
    for viewer in viewers:
        if viewer["status"] != 201:
            result.errors.append(f"viewer {viewer['index']}: {viewer['status']} {viewer['error']}")
            continue
        result.joined += 1
        if viewer["first_frame"]:
            first_frames.append(1000 * (viewer["first_frame"] - viewer["asked"]))
        by_frame = delivered(video, viewer["frames"], counted)
        own = list(by_frame.values())
        lags += own
        keyframe_lags += [lag for g, lag in by_frame.items() if keyframes[g % len(keyframes)]]
        shares.append(len(own) / len(counted) if counted else 0.0)
        worst_p99.append(percentile(own, 99) if own else float("inf"))  # no frame at all: the worst
        own_audio = list(delivered(audio, viewer["audio"], audio_counted).values())
        audio_lags += own_audio
        audio_shares.append(len(own_audio) / len(audio_counted) if audio_counted else 0.0)
    if shares:
        result.delivered_min = min(shares)
        result.delivered_median = median(shares)
        result.audio_min = min(audio_shares)
        result.lag_worst_viewer_p99_ms = max(worst_p99)
    result.lag_p50_ms = percentile(lags, 50)
    result.lag_p99_ms = percentile(lags, 99)
    result.keyframe_lag_p50_ms = percentile(keyframe_lags, 50)
    result.audio_lag_p50_ms = percentile(audio_lags, 50)
    result.audio_lag_p99_ms = percentile(audio_lags, 99)
    result.first_frame_p50_ms = percentile(first_frames, 50)
    result.first_frame_p99_ms = percentile(first_frames, 99)
    if len(first_frames) < result.joined:
        result.errors.append(f"{result.joined - len(first_frames)} joined viewers never got a frame")


# --- one run ---------------------------------------------------------------


async def sleep_until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.monotonic()))


async def wait_for_quiet_core0(limit: float, timeout: float) -> None:
    """Other people's work on core 0 skews every figure: wait (bounded) until it is below ``limit`` %."""
    deadline = time.monotonic() + timeout
    while True:
        busy = 100 * await asyncio.to_thread(core_busy_share, 0, 2.0)
        if busy <= limit or time.monotonic() > deadline:
            if busy > limit:
                print(f"  core 0 still {busy:.0f}% busy with other work; measuring anyway", flush=True)
            return


async def run_once(
    args: argparse.Namespace, path: str, flag: str | None, n: int, streams: tuple[Stream, Stream], recording: bool
) -> Result:
    result = Result(path, n, recording)
    await wait_for_quiet_core0(args.quiet, args.quiet_timeout)
    workdir = Path(tempfile.mkdtemp(prefix=f"media-fanout-{path}-{n}-"))
    server = Server(path, flag, workdir, args.server_nice, recording)
    server.start()
    publisher = Publisher(*streams)
    workers: list[Any] = []
    profiler: subprocess.Popen[bytes] | None = None
    lossy: LossyViewer | None = None
    try:
        async with aiohttp.ClientSession() as http:
            await publisher.publish(http, server)
        await asyncio.sleep(1.0)
        cpu0, t0 = server.cpu_seconds(), time.monotonic()
        await asyncio.sleep(args.baseline)
        result.baseline_cpu = 100 * (server.cpu_seconds() - cpu0) / (time.monotonic() - t0)
        result.rss_baseline_mb = server.rss_mb()

        workers = await start_workers(args, server, n, workdir)
        lossy = LossyViewer(args.lossy) if args.lossy else None
        if lossy is not None:
            async with aiohttp.ClientSession() as http:
                await lossy.join(http, f"{server.base}/whep/{ROOM}")
        join_at = time.monotonic() + 0.5
        w0 = join_at + n * args.join_interval + args.settle
        w1 = w0 + args.window
        stop_at = w1 + 1.5
        for process, _ in workers:
            process.stdin.write(f"{json.dumps({'join_at': join_at, 'stop_at': stop_at})}\n".encode())
            await process.stdin.drain()

        await sleep_until(w0)
        recorded0 = server.recording_bytes() if recording else 0
        counters0 = server.metrics()
        core0, core1 = CoreWindow(server.pid, core=0), CoreWindow(None, core=1)
        core0.start()
        core1.start()
        lossy_dropped0 = lossy.dropped if lossy is not None else 0
        result.rss_mb = server.rss_mb()
        if args.py_spy:
            profile = Path(args.py_spy) / f"py-spy-{path}-{n}.txt"
            profiler = subprocess.Popen(
                ["taskset", "-c", "1", "py-spy", "record", "--pid", str(server.pid), "--duration",
                 str(int(args.window)), "--rate", "200", "--nonblocking", "--format", "raw", "--output", str(profile)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        await sleep_until(w1)
        share0, share1 = core0.stop(), core1.stop()
        if lossy is not None:
            result.lossy_dropped = lossy.dropped - lossy_dropped0
        counters1 = server.metrics()
        if recording and server.recording_bytes() <= recorded0:
            result.errors.append("recording on, but the room's recording did not grow in the window")
        result.server_cpu = 100 * share0.server
        result.core0_others = 100 * share0.others
        result.core1_busy = 100 * share1.busy
        result.kb_per_viewer = 1024 * (result.rss_mb - result.rss_baseline_mb) / n

        def counted(name: str) -> float:
            return counters1.get(name, 0.0) - counters0.get(name, 0.0)

        result.dropped_frames = counted("livecart_media_frames_dropped_total")
        result.nacks = counted("livecart_media_nacks_total")
        result.retransmits = counted("livecart_media_retransmits_total")
        if lossy is not None:
            video_stream = streams[0]
            complete, sent = lossy.delivered_between(w0, w1, video_stream.duration // len(video_stream.payloads))
            result.lossy_delivered = complete / sent if sent else 0.0

        viewers = await collect_workers(workers, result.errors)
        video, audio = streams
        analyse(
            result,
            viewers,
            Matcher(video, publisher.video.sent, gram=2, path=path),
            Matcher(audio, publisher.audio.sent, gram=8),
            (w0, w1 - 0.3),
        )
    finally:
        if profiler is not None:
            profiler.wait(timeout=60)
        for process, _ in workers:
            if process.returncode is None:
                process.kill()
                await process.wait()
        if lossy is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(lossy.close(), 5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(publisher.close(), 5)
        server.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


# --- report ----------------------------------------------------------------

COLUMNS = (
    "path", "recording", "N", "run", "joined", "server CPU %", "CPU % pub only", "CPU % / viewer", "viewers / core",
    "others on core 0 %", "core 1 busy %", "frames min / median %", "audio min %", "lag p50 / p99 ms",
    "worst viewer p99 ms", "keyframe lag p50 ms", "audio lag p50 / p99 ms", "first frame p50 / p99 ms",
    "KB / viewer", "dropped", "lossy viewer: lost / NACKed / re-sent / frames %", "pass",
)  # fmt: skip


def median_result(runs: list[Result]) -> Result:
    """Each numeric figure's median over the runs of one N (derived figures follow from these)."""
    out = Result(runs[0].path, runs[0].viewers, runs[0].record, run=0)
    for name, value in vars(runs[0]).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and name not in ("viewers", "run"):
            figure = median(getattr(r, name) for r in runs)
            setattr(out, name, type(value)(figure) if figure is not None and isinstance(value, int) else figure)
        elif value is None:
            setattr(out, name, median(getattr(r, name) for r in runs))
    return out


def row(r: Result, passed: str | None = None) -> list[str]:
    return [
        r.path, "on" if r.record else "off", str(r.viewers), str(r.run) if r.run else "median", str(r.joined),
        fmt(r.server_cpu, 0), fmt(r.baseline_cpu, 1), fmt(r.cpu_per_viewer, 2), fmt(r.viewers_per_core, 0),
        fmt(r.core0_others, 0), fmt(r.core1_busy, 0), f"{100 * r.delivered_min:.1f} / {100 * r.delivered_median:.1f}",
        f"{100 * r.audio_min:.1f}", f"{fmt(r.lag_p50_ms, 0)} / {fmt(r.lag_p99_ms, 0)}",
        fmt(r.lag_worst_viewer_p99_ms, 0), fmt(r.keyframe_lag_p50_ms, 0),
        f"{fmt(r.audio_lag_p50_ms, 0)} / {fmt(r.audio_lag_p99_ms, 0)}",
        f"{fmt(r.first_frame_p50_ms, 0)} / {fmt(r.first_frame_p99_ms, 0)}", fmt(r.kb_per_viewer, 0),
        fmt(r.dropped_frames, 0),
        f"{r.lossy_dropped} / {r.nacks:.0f} / {r.retransmits:.0f} / {100 * r.lossy_delivered:.1f}",
        passed if passed is not None else ("yes" if r.passed else "no"),
    ]  # fmt: skip


def grouped(results: list[Result]) -> dict[tuple[str, bool, int], list[Result]]:
    groups: dict[tuple[str, bool, int], list[Result]] = {}
    for r in sorted(results, key=lambda r: (r.path, r.record, r.viewers, r.run)):
        groups.setdefault((r.path, r.record, r.viewers), []).append(r)
    return groups


def runs_passed(runs: list[Result]) -> bool:
    """An N passes when most of its runs pass."""
    return 2 * sum(r.passed for r in runs) > len(runs)


def table(results: list[Result]) -> str:
    rows = []
    for runs in grouped(results).values():
        rows += [row(r) for r in runs]
        if len(runs) > 1:
            rows.append(row(median_result(runs), f"{sum(r.passed for r in runs)} of {len(runs)} runs"))
    return markdown_table(list(COLUMNS), rows)


def ratios(results: list[Result]) -> str:
    """Fast over stock CPU per viewer, for each N both paths ran in this command (medians of its runs)."""
    groups = grouped(results)
    lines = []
    for (path, recorded, n), runs in groups.items():
        stock = groups.get(("stock", recorded, n))
        if path != "fast" or stock is None:
            continue
        fast_cpu = median(r.cpu_per_viewer for r in runs)
        stock_cpu = median(r.cpu_per_viewer for r in stock)
        fast_kb = median(r.kb_per_viewer for r in runs)
        stock_kb = median(r.kb_per_viewer for r in stock)
        if fast_cpu and stock_cpu:
            lines.append(
                f"- N = {n}{', recording' if recorded else ''}: CPU % per viewer fast / stock = "
                f"{fast_cpu:.2f} / {stock_cpu:.2f} = "
                f"{fast_cpu / stock_cpu:.2f} ({stock_cpu / fast_cpu:.1f}x the viewers per core); "
                f"KB per viewer {fmt(fast_kb, 0)} / {fmt(stock_kb, 0)}"
            )
    return "\n".join(lines)


def recording_cost(results: list[Result]) -> str:
    """Recording on minus off, per path and N both ran in this command (medians of their runs)."""
    groups = grouped(results)
    lines = []
    for (path, recorded, n), on in groups.items():
        off = groups.get((path, False, n))
        if not recorded or off is None:
            continue
        alone = (median(r.baseline_cpu for r in on) or 0.0) - (median(r.baseline_cpu for r in off) or 0.0)
        loaded = (median(r.server_cpu for r in on) or 0.0) - (median(r.server_cpu for r in off) or 0.0)
        lag_on = median(r.lag_p99_ms for r in on if r.lag_p99_ms is not None)
        lag_off = median(r.lag_p99_ms for r in off if r.lag_p99_ms is not None)
        lag_change = fmt(lag_on - lag_off, 1) if lag_on is not None and lag_off is not None else "n/a"
        lines.append(
            f"- {path}, N = {n} ({len(on)} runs on, {len(off)} off): recording costs {alone:.2f} % of a core "
            f"for the room alone (publisher-only window), {loaded:.2f} % with {n} viewers; viewers' added lag "
            f"p99 {fmt(lag_on, 1)} ms on / {fmt(lag_off, 1)} ms off ({lag_change} ms)"
        )
    return "\n".join(lines)


def report(results: list[Result]) -> str:
    text = (
        "CPU % / viewer = all the server's CPU over N (publisher included); viewers / core = 100 / that. "
        "Counters in the lossy viewer's column cover the same window as its losses; its frames % is "
        "complete frames over the frames whose RTP timestamps span its arrivals in the window.\n\n"
        + table(results)
    )
    if ratio_lines := ratios(results):
        text += "\n\nFast / stock in this command's runs:\n\n" + ratio_lines
    if cost_lines := recording_cost(results):
        text += "\n\nRecording on / off in this command's runs (on minus off, medians):\n\n" + cost_lines
    return text


# --- main ------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> list[Result]:
    os.sched_setaffinity(0, {1})
    flag = forwarding_flag()
    paths = ["stock", "fast"] if args.path == "both" else [args.path]
    if flag is None and paths != ["stock"]:
        raise SystemExit("this livecart has no forwarding-path flag: only --path stock can run")
    spec = StreamSpec()
    video, audio = load(spec, Path(args.cache))
    print(
        f"stream: {spec.width}x{spec.height} {spec.fps} fps, H264 {video.bitrate / 1e6:.2f} Mbit/s, "
        f"keyframe every {spec.gop} frames; Opus {audio.bitrate / 1e3:.0f} kbit/s",
        flush=True,
    )
    results: list[Result] = []

    modes = {"off": [False], "on": [True], "both": [False, True]}[args.record]

    async def measure(path: str, n: int) -> bool:
        """``--runs`` runs of one N (each with recording off and on, one after the other, for
        ``--record both``); whether most of them passed."""
        runs = []
        for k in range(args.runs):
            for recording in modes:
                result = await run_once(args, path, flag, n, (video, audio), recording)
                result.run = k + 1
                runs.append(result)
                results.append(result)
                print(" | ".join(row(result)), *result.errors[:3], sep="\n  ", flush=True)
        return runs_passed(runs)

    for path in paths:
        counts = [n for n in args.viewers if path != "stock" or not args.stock_max or n <= args.stock_max]
        done = {n: await measure(path, n) for n in counts}
        if args.find_max:
            passing = [n for n, ok in done.items() if ok]
            low = max(passing, default=0)
            failing = [n for n, ok in done.items() if not ok and n > low]
            high = min(failing, default=None)
            while high is not None and high - low > args.step:
                middle = low + (high - low) // 2 // args.step * args.step
                middle = max(middle, low + args.step)
                if await measure(path, middle):
                    low = middle
                else:
                    high = middle
            print(f"{path}: largest N passing = {low}" + (f" (fails at {high})" if high else ""), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--viewers", default="10,25,50,100", help="comma-separated N to run")
    parser.add_argument(
        "--stock-max", type=int, default=0, help="run the stock path only up to this N (0: every N)"
    )
    parser.add_argument("--path", choices=("stock", "fast", "both"), default="stock", help="forwarding path")
    parser.add_argument("--runs", type=int, default=3, help="runs of each N (the table adds their medians)")
    parser.add_argument(
        "--record", choices=("off", "on", "both"), default="off",
        help="the server records the broadcast: off (--no-record), on, or both in each run (recording cost)",
    )
    parser.add_argument("--find-max", action="store_true", help="bisect the largest passing N")
    parser.add_argument("--step", type=int, default=5, help="granularity of --find-max")
    parser.add_argument("--join-interval", type=float, default=0.1, help="seconds between viewer joins")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after the last join before measuring")
    parser.add_argument("--window", type=float, default=15.0, help="seconds measured")
    parser.add_argument("--baseline", type=float, default=3.0, help="seconds measured with the publisher only")
    parser.add_argument("--per-process", type=int, default=25, help="viewers per viewer process")
    parser.add_argument("--lossy", type=float, default=0.01, help="one more viewer losing this share (0: none)")
    parser.add_argument("--viewer-rcvbuf", type=int, default=4 * 1024 * 1024, help="viewers' UDP receive buffer")
    parser.add_argument(
        "--cache",
        default=str(Path(tempfile.gettempdir()) / "livecart-bench"),
        help="where the encoded stream is kept between runs",
    )
    parser.add_argument("--quiet", type=float, default=10.0, help="max %% of core 0 busy before a run starts")
    parser.add_argument("--quiet-timeout", type=float, default=30.0, help="seconds to wait for a quiet core 0")
    parser.add_argument(
        "--server-nice", type=int, default=0, help="nice value of the server's session (e.g. -10)"
    )
    parser.add_argument("--py-spy", default="", help="directory for py-spy raw profiles of each window")
    parser.add_argument("--keep", action="store_true", help="keep each run's server log and viewer data")
    parser.add_argument("--name", default="media_fanout", help="results go to bench/results/NAME.{md,json}")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop the server and viewers on the way out
    args.viewers = [int(n) for n in args.viewers.split(",")]
    run = record("media_fanout")
    results = uvloop.run(bench(args))
    markdown = report(results)
    print("\n" + markdown)
    data = [asdict(r) | {"passed": r.passed, "cpu_per_viewer": r.cpu_per_viewer} for r in results]
    print(write_results(args.name, run, markdown, data))


if __name__ == "__main__":
    main()
