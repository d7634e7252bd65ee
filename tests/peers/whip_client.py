#!/usr/bin/env python3
"""An independent WHIP publisher and WHEP viewer on aiortc, for testing Huddle's /whip and /whep.

    whip_client.py whip --url http://127.0.0.1:PORT/whip/ROOM --token TOKEN \
        --codec h264|vp8 --seconds N --tone-hz 440
    whip_client.py whep --url http://127.0.0.1:PORT/whep/ROOM --token TOKEN --seconds N

`whip` publishes a synthetic 640x360 30 fps video (a moving bar) in the one video codec asked
for, and an Opus sine tone; `whep` receives one video and one audio m-line and counts what it
decodes. Both POST the offer once ICE gathering is complete (no trickle), require `201` with a
`Location`, wait at most 15 s for the connection, run N seconds from then, and end with a
`DELETE` on the Location that must answer 200 or 204.

Every event is one JSON line on stdout (`created`, `connected`, `deleted`, `result`, `error`);
any failure prints an `error` event, says why on stderr and exits 1.

Loopback only: the peer connection has no ICE servers (aiortc would otherwise ask a public
STUN server), gathers a host candidate on 127.0.0.1 alone (aioice skips 127.0.0.1 by default),
ignores any remote candidate that is not a loopback address, and the HTTP requests go only to a
loopback host (no redirects are followed).

Runs with the venv that has aiortc, aiohttp and numpy (`.ci/run` makes target/aiortc-venv).
"""

import argparse
import asyncio
import fractions
import ipaddress
import json
import math
import sys
import time
from urllib.parse import urljoin, urlsplit

import aioice.ice
import aiohttp
import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

CONNECT_TIMEOUT_S = 15.0
GATHER_TIMEOUT_S = 5.0
HTTP_TIMEOUT_S = 20.0

WIDTH, HEIGHT, FPS = 640, 360, 30
AUDIO_RATE = 48000
AUDIO_PTIME = 0.020


class Failure(Exception):
    """A failure with a message for the user: printed, then exit 1."""


def emit(event, **fields):
    print(json.dumps({"event": event, **fields}), flush=True)


def log(message):
    print(f"whip_client: {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ loopback only


def is_loopback(host):
    if host is None:
        return False
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name (mDNS .local, DNS): never resolved here


def loopback_only():
    """Keeps every ICE packet on 127.0.0.1 (aioice 0.13 gathers from `get_host_addresses`, which
    leaves out 127.0.0.1, and resolves mDNS candidates on the LAN)."""

    def host_addresses(use_ipv4=True, use_ipv6=True):
        return ["127.0.0.1"]

    aioice.ice.get_host_addresses = host_addresses

    original = aioice.ice.Connection.add_remote_candidate
    if getattr(original, "_loopback_only", False):
        return

    async def add_remote_candidate(self, candidate):
        if candidate is not None and not is_loopback(candidate.host):
            log(f"ignored remote candidate {candidate.host}:{candidate.port} (not loopback)")
            return
        await original(self, candidate)

    add_remote_candidate._loopback_only = True
    aioice.ice.Connection.add_remote_candidate = add_remote_candidate


def check_url(url, what):
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not is_loopback(parts.hostname):
        raise Failure(f"{what} {url!r} is not an http(s) URL on a loopback address")
    return url


def new_peer_connection():
    loopback_only()
    # No ICE servers: with none given aiortc would use a public STUN server.
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


def candidate_hosts(sdp):
    hosts = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            fields = line.split()
            if len(fields) > 5:
                hosts.append(fields[4])
    return hosts


async def gathered_offer(pc):
    """setLocalDescription: aiortc returns from it once gathering is complete."""
    offer = await pc.createOffer()
    try:
        await asyncio.wait_for(pc.setLocalDescription(offer), GATHER_TIMEOUT_S)
    except asyncio.TimeoutError:
        raise Failure(f"ICE gathering did not complete in {GATHER_TIMEOUT_S:.0f} s")
    sdp = pc.localDescription.sdp
    hosts = candidate_hosts(sdp)
    if not hosts:
        raise Failure("the offer has no ICE candidate (no 127.0.0.1 host candidate was gathered)")
    stray = [h for h in hosts if not is_loopback(h)]
    if stray:
        raise Failure(f"the offer has non-loopback candidates {stray}: refusing to send it")
    return sdp


# ------------------------------------------------------------------ HTTP


def error_message(status, body):
    """The message of an error response ({"error": {...}} or {"error": CODE, "message"})."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        err = doc.get("error")
        if isinstance(err, dict):
            return f"{err.get('code')}: {err.get('message')}"
        if "message" in doc:
            return f"{err}: {doc.get('message')}"
    text = body.strip().replace("\n", " ")
    return text[:300] if text else "(empty body)"


class Session:
    """One WHIP or WHEP resource: the POST that makes it and the DELETE that ends it."""

    def __init__(self, http, url, token):
        self.http = http
        self.url = url
        self.token = token
        self.resource = None

    def headers(self, content_type=None):
        h = {"Authorization": f"Bearer {self.token}"}
        if content_type:
            h["Content-Type"] = content_type
        return h

    async def create(self, offer_sdp):
        async with self.http.post(
            self.url,
            data=offer_sdp.encode(),
            headers=self.headers("application/sdp"),
            allow_redirects=False,
        ) as res:
            body = await res.text()
            if res.status != 201:
                raise Failure(
                    f"POST {self.url} answered {res.status}, not 201: {error_message(res.status, body)}"
                )
            location = res.headers.get("Location")
            if not location:
                raise Failure(f"POST {self.url} answered 201 without a Location header")
            content_type = res.headers.get("Content-Type", "")
            if content_type.split(";")[0].strip().lower() != "application/sdp":
                raise Failure(f"the 201's Content-Type is {content_type!r}, not application/sdp")
            if not body.startswith("v=0"):
                raise Failure(f"the 201's body is not an SDP answer: {body[:120]!r}")
            self.resource = check_url(urljoin(self.url, location), "the Location")
            emit("created", location=location, etag=res.headers.get("ETag"))
            return body

    async def delete(self):
        if not self.resource:
            return None
        url, self.resource = self.resource, None
        async with self.http.delete(url, headers=self.headers(), allow_redirects=False) as res:
            body = await res.text()
            emit("deleted", status=res.status)
            if res.status not in (200, 204):
                raise Failure(
                    f"DELETE {url} answered {res.status}, not 200/204: {error_message(res.status, body)}"
                )
            return res.status


async def connected(pc):
    """Waits until the peer connection is connected; fails at `failed` or after 15 s."""
    done = asyncio.get_running_loop().create_future()

    def check():
        if done.done():
            return
        if pc.connectionState == "connected":
            done.set_result(None)
        elif pc.connectionState in ("failed", "closed"):
            done.set_exception(Failure(f"the connection is {pc.connectionState} (ICE or DTLS failed)"))

    pc.on("connectionstatechange", check)
    check()
    try:
        await asyncio.wait_for(done, CONNECT_TIMEOUT_S)
    except asyncio.TimeoutError:
        raise Failure(
            f"not connected within {CONNECT_TIMEOUT_S:.0f} s "
            f"(ICE {pc.iceConnectionState}, connection {pc.connectionState})"
        )
    emit("connected")


async def hold(pc, seconds):
    """Runs `seconds`, failing early if the connection fails."""
    lost = asyncio.get_running_loop().create_future()

    def check():
        if pc.connectionState in ("failed", "closed") and not lost.done():
            lost.set_result(pc.connectionState)

    pc.on("connectionstatechange", check)
    try:
        state = await asyncio.wait_for(lost, seconds)
    except asyncio.TimeoutError:
        return
    raise Failure(f"the connection became {state} during the run")


# ------------------------------------------------------------------ synthetic media


class MovingBar(MediaStreamTrack):
    """640x360 at 30 fps: a gradient with a white bar crossing it once every 2 s."""

    kind = "video"

    def __init__(self):
        super().__init__()
        y = np.linspace(40, 200, HEIGHT, dtype=np.float32)[:, None]
        x = np.linspace(0, 120, WIDTH, dtype=np.float32)[None, :]
        base = np.empty((HEIGHT, WIDTH, 3), dtype=np.uint8)
        base[..., 0] = (y + x * 0.5).clip(0, 255)
        base[..., 1] = (y * 0.6).clip(0, 255)
        base[..., 2] = (x + 60).clip(0, 255)
        self.base = base
        self.start = None
        self.count = 0

    async def recv(self):
        if self.start is None:
            self.start = time.monotonic()
        else:
            self.count += 1
            delay = self.start + self.count / FPS - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        img = self.base.copy()
        bar = 48
        x = int((self.count % (2 * FPS)) / (2 * FPS) * (WIDTH + bar)) - bar
        img[:, max(x, 0) : max(x + bar, 0)] = 255
        frame = av.VideoFrame.from_ndarray(img, format="bgr24")
        frame.pts = self.count * (90000 // FPS)
        frame.time_base = fractions.Fraction(1, 90000)
        return frame


class Tone(MediaStreamTrack):
    """A mono sine at `hz`, 20 ms frames at 48 kHz (aiortc encodes it as Opus)."""

    kind = "audio"

    def __init__(self, hz):
        super().__init__()
        self.hz = hz
        self.samples = int(AUDIO_RATE * AUDIO_PTIME)
        self.start = None
        self.pts = 0

    async def recv(self):
        if self.start is None:
            self.start = time.monotonic()
        else:
            self.pts += self.samples
            delay = self.start + self.pts / AUDIO_RATE - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        t = (np.arange(self.samples) + self.pts) / AUDIO_RATE
        wave = (0.3 * 32767 * np.sin(2 * math.pi * self.hz * t)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(wave.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = self.pts
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        return frame


def prefer(transceiver, kind, mime):
    """Offer only `mime` (and RTX for it) on this transceiver."""
    caps = RTCRtpSender.getCapabilities(kind).codecs
    chosen = [c for c in caps if c.mimeType.lower() == mime.lower()]
    if not chosen:
        raise Failure(f"aiortc has no {mime} codec")
    rtx = [c for c in caps if c.mimeType.lower() == f"{kind}/rtx"]
    transceiver.setCodecPreferences(chosen + rtx)


# ------------------------------------------------------------------ modes


async def run_whip(args, http):
    pc = new_peer_connection()
    session = Session(http, args.url, args.token)
    try:
        # Audio first, as OBS does (mid 0 audio, mid 1 video). One transceiver per kind: aiortc
        # reads the bundle's candidates from the transport of the first m-line, which is right
        # only while no other m-line shares that transport before bundling.
        audio = pc.addTransceiver(Tone(args.tone_hz), direction="sendonly")
        prefer(audio, "audio", "audio/opus")
        video = pc.addTransceiver(MovingBar(), direction="sendonly")
        prefer(video, "video", f"video/{args.codec}")
        offer = await gathered_offer(pc)
        answer = await session.create(offer)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await connected(pc)
        await hold(pc, args.seconds)
        await session.delete()
    finally:
        try:
            await session.delete()
        except Exception as e:  # already failing: say so, keep the first error
            log(f"DELETE after the failure: {e}")
        await pc.close()
    return 0


class Counter:
    def __init__(self):
        self.video_frames = 0
        self.width = 0
        self.height = 0
        self.audio = {}  # mid -> decoded frames
        self.tone = {}  # mid -> recent samples (channel 0)
        self.rate = {}
        self.first = {}
        self.t0 = time.monotonic()

    def first_frame(self, kind):
        if kind not in self.first:
            self.first[kind] = round((time.monotonic() - self.t0) * 1000)
            emit("first_frame", kind=kind, ms=self.first[kind])

    async def consume(self, track, mid):
        try:
            while True:
                frame = await track.recv()
                if track.kind == "video":
                    self.video_frames += 1
                    self.width, self.height = frame.width, frame.height
                    self.first_frame("video")
                else:
                    self.audio[mid] = self.audio.get(mid, 0) + 1
                    self.first_frame("audio")
                    pcm = frame.to_ndarray()
                    channels = len(frame.layout.channels)
                    mono = pcm.reshape(-1)[::channels] if pcm.shape[0] == 1 else pcm[0]
                    recent = self.tone.get(mid)
                    recent = mono if recent is None else np.concatenate((recent, mono))
                    self.tone[mid] = recent[-frame.sample_rate :]
                    self.rate[mid] = frame.sample_rate
        except MediaStreamError:
            pass

    def dominant_hz(self, mid):
        samples = self.tone.get(mid)
        if samples is None or len(samples) < 1024:
            return None
        x = samples.astype(np.float64)
        x -= x.mean()
        if not np.any(x):
            return 0.0
        spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
        freqs = np.fft.rfftfreq(len(x), 1 / self.rate[mid])
        return round(float(freqs[int(np.argmax(spectrum))]), 1)


async def run_whep(args, http):
    pc = new_peer_connection()
    session = Session(http, args.url, args.token)
    counter = Counter()
    tasks = []

    @pc.on("track")
    def on_track(track):
        mid = next((t.mid for t in pc.getTransceivers() if t.receiver.track is track), None)
        emit("track", kind=track.kind, mid=mid)
        tasks.append(asyncio.ensure_future(counter.consume(track, mid)))

    try:
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")
        offer = await gathered_offer(pc)
        answer = await session.create(offer)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await connected(pc)
        await hold(pc, args.seconds)
        await session.delete()
    finally:
        try:
            await session.delete()
        except Exception as e:
            log(f"DELETE after the failure: {e}")
        await pc.close()
        for t in tasks:
            t.cancel()
    audio_frames = sum(counter.audio.values())
    emit(
        "result",
        video_frames=counter.video_frames,
        width=counter.width,
        height=counter.height,
        audio_frames=audio_frames,
        audio_frames_by_mid=counter.audio,
        audio_hz={mid: counter.dominant_hz(mid) for mid in counter.audio},
        first_frame_ms=counter.first,
    )
    missing = [k for k, n in (("video", counter.video_frames), ("audio", audio_frames)) if n == 0]
    if missing:
        raise Failure(f"no {' and no '.join(missing)} frame was decoded in {args.seconds} s")
    return 0


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    for mode in ("whip", "whep"):
        s = sub.add_parser(mode, help=f"{mode.upper()} client")
        s.add_argument("--url", required=True, help=f"http://127.0.0.1:PORT/{mode}/ROOM")
        s.add_argument("--token", required=True, help="access token (sent as Bearer)")
        s.add_argument("--seconds", type=float, default=10.0, help="how long to run once connected")
        if mode == "whip":
            s.add_argument("--codec", choices=("h264", "vp8"), default="h264")
            s.add_argument("--tone-hz", type=float, default=440.0)
    return p.parse_args(argv)


async def main(argv):
    args = parse_args(argv)
    try:
        check_url(args.url, "--url")
        timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as http:
            if args.mode == "whip":
                return await run_whip(args, http)
            return await run_whep(args, http)
    except Failure as e:
        message = str(e)
    except aiohttp.ClientError as e:
        message = f"HTTP request failed: {e}"
    except asyncio.TimeoutError:
        message = f"an HTTP request took longer than {HTTP_TIMEOUT_S:.0f} s"
    emit("error", message=message)
    log(message)
    return 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
