// WHIP in and WHEP out with independent peers: aiortc (tests/peers/whip_client.py) publishes
// H.264 + Opus, then VP8 + Opus, over WHIP into a room where a browser participant must play
// its video and receive its audio, and its DELETE must take it out of the room; then Chromium
// on /watch/{room} and an aiortc WHEP client must decode the room's video and audio, the
// player's video following the active speaker (told apart by their cameras' shapes: Alice's
// fake camera is 16:9, Bob's a 4:3 file) and, with ?participant=, staying on one person.
//
//   HUDDLE_BIN=target/release/huddle AIORTC_PYTHON=target/aiortc-venv/bin/python \
//     node --test tests/e2e/whip.test.mjs
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { createInterface } from 'node:readline';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  ROOT, MEDIA_TIMEOUT_MS, note, waitFor, startServer, openParticipant, joinRoom, remoteVideos, isPlaying,
  inboundAudio, cleanup, serverLogTail, metricValue,
} from './harness.mjs';

const PYTHON = path.resolve(process.env.AIORTC_PYTHON || path.join(ROOT, 'target/aiortc-venv/bin/python'));
const CLIENT = path.join(ROOT, 'tests/peers/whip_client.py');
const scratch = mkdtempSync(path.join(tmpdir(), 'huddle-whip-'));
const clients = [];

after(async () => {
  for (const c of clients) if (c.proc.exitCode === null) c.proc.kill('SIGKILL');
  await cleanup();
  rmSync(scratch, { recursive: true, force: true });
});

// One server for both tests (the harness keeps one `server`: a second startServer would leave
// the first running, and its pipes would keep this process from exiting).
let started = null;
const serverUrl = () => (started ??= startServer());

// Runs the aiortc client; its stdout is one JSON object per line.
function runClient(args) {
  assert.ok(existsSync(PYTHON), `No Python with aiortc at ${PYTHON}: run .ci/run (it makes target/aiortc-venv) or set AIORTC_PYTHON.`);
  const proc = spawn(PYTHON, [CLIENT, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const c = { proc, events: [], stderr: [] };
  createInterface({ input: proc.stdout }).on('line', (l) => {
    try {
      c.events.push(JSON.parse(l));
    } catch {
      c.stderr.push(`stdout: ${l}`);
    }
  });
  createInterface({ input: proc.stderr }).on('line', (l) => c.stderr.push(l));
  c.exited = new Promise((resolve) => proc.on('exit', (code) => resolve(code)));
  c.event = (name, timeout = 20_000) =>
    waitFor(`the aiortc client's "${name}" event`, async () => c.events.find((e) => e.event === name) || (proc.exitCode !== null ? { exited: proc.exitCode } : null), (e) => !!e, { timeout, interval: 200 }).then((e) => {
      assert.ok(!('exited' in e), `the aiortc client exited (${e.exited}) before "${name}":\n${c.stderr.slice(-30).join('\n')}`);
      return e;
    });
  clients.push(c);
  return c;
}

async function guestToken(base, room, name) {
  const res = await fetch(`${base}/api/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ room, name }) });
  const text = await res.text();
  assert.equal(res.status, 200, `guest token: ${text}`);
  return JSON.parse(text).token;
}

// The decoded inbound video on a page's peer connection with the most frames: size and codec.
// `app`: 'huddle' (the meeting page) or 'watch' (the player).
const decodedVideo = (page, app) =>
  page.evaluate(async (app) => {
    const pc = window[app]?.pc;
    if (!pc) return null;
    const stats = await pc.getStats();
    let best = null;
    stats.forEach((r) => {
      if (r.type === 'inbound-rtp' && r.kind === 'video' && r.framesDecoded > 0 && (!best || r.framesDecoded > best.framesDecoded)) best = r;
    });
    if (!best) return null;
    return { width: best.frameWidth, height: best.frameHeight, frames: best.framesDecoded, codec: stats.get(best.codecId)?.mimeType };
  }, app);

test('an aiortc WHIP publisher (H.264, then VP8) is seen and heard in the room, and DELETE takes it out', { timeout: 180_000 }, async () => {
  try {
    const base = await serverUrl();
    const room = `whip-${Math.random().toString(36).slice(2, 10)}`;
    const alice = await openParticipant('Alice');
    await joinRoom(alice, `${base}/r/${room}`);
    for (const [codec, mime] of [['h264', 'video/H264'], ['vp8', 'video/VP8']]) {
      const token = await guestToken(base, room, `OBS ${codec}`);
      const c = runClient(['whip', '--url', `${base}/whip/${room}`, '--token', token, '--codec', codec, '--seconds', '15', '--tone-hz', '440']);
      const created = await c.event('created');
      assert.match(created.location, new RegExp(`^/whip/${room}/`), 'a Location of the session');
      await c.event('connected');
      const playing = await waitFor(`Alice to play the ${codec} WHIP video`, () => remoteVideos(alice), (vs) => vs.filter(isPlaying).length === 1, { timeout: MEDIA_TIMEOUT_MS, interval: 300 });
      const v = await waitFor(`Alice to decode ${mime}`, () => decodedVideo(alice.page, 'huddle'), (v) => v && v.codec === mime && v.frames > 10, { timeout: MEDIA_TIMEOUT_MS, interval: 500 });
      note(`${codec}: Alice plays ${JSON.stringify(playing)}, decodes ${JSON.stringify(v)}`);
      const audio = await waitFor(`Alice to receive the ${codec} publisher's audio`, () => inboundAudio(alice), (a) => a.streams && a.streams.some((s) => s.after > s.before), { timeout: MEDIA_TIMEOUT_MS, interval: 300 });
      note(`${codec}: Alice's inbound audio ${JSON.stringify(audio.streams)}`);
      const name = await alice.page.evaluate(() => document.body.innerText);
      assert.ok(name.includes(`OBS ${codec}`), `the publisher is listed under its token's name`);
      const deleted = await c.event('deleted', 30_000);
      assert.ok([200, 204].includes(deleted.status), `DELETE answered ${deleted.status}`);
      assert.equal(await c.exited, 0, `the client failed:\n${c.stderr.slice(-30).join('\n')}`);
      await waitFor(`the ${codec} publisher to leave Alice's call`, () => remoteVideos(alice), (vs) => vs.length === 0, { timeout: 15_000, interval: 300 });
    }
    assert.equal(await metricValue('huddle_whip_sessions'), 0, 'no WHIP session left');
    assert.deepEqual(alice.pageErrors, [], 'no page errors');
  } catch (e) {
    console.log(serverLogTail());
    throw e;
  }
});

test('Chromium on /watch and an aiortc WHEP client decode the room; the player follows the speaker', { timeout: 180_000 }, async () => {
  try {
    const base = await serverUrl();
    const room = `whep-${Math.random().toString(36).slice(2, 10)}`;
    // Bob's camera: a 4:3 test pattern, where Alice's fake camera is 16:9 (1280x720).
    const bobCam = path.join(scratch, 'bob.y4m');
    execFileSync('ffmpeg', ['-v', 'error', '-y', '-f', 'lavfi', '-i', 'testsrc=size=480x360:rate=15', '-t', '4', '-pix_fmt', 'yuv420p', bobCam]);
    const alice = await openParticipant('Alice');
    const bob = await openParticipant('Bob', { args: [`--use-file-for-fake-video-capture=${bobCam}`] });
    await joinRoom(alice, `${base}/r/${room}`);
    await joinRoom(bob, `${base}/r/${room}`);
    // Bob is muted: Alice is the only speaker.
    await bob.page.click('[data-testid="mic"]');
    await waitFor("Alice to play Bob's video", () => remoteVideos(alice), (vs) => vs.filter(isPlaying).length === 1, { timeout: MEDIA_TIMEOUT_MS, interval: 300 });

    const viewer = await openParticipant('Viewer');
    await viewer.page.goto(`${base}/watch/${room}`, { waitUntil: 'load', timeout: 15_000 });
    await waitFor('the player to connect', () => viewer.page.evaluate(() => ({ status: window.watch?.status, errors: window.watch?.errors })), (s) => s.status === 'connected', { timeout: MEDIA_TIMEOUT_MS, interval: 300 });
    const shape = (v) => v && v.width > 0 && v.width / v.height;
    const wide = (v) => shape(v) > 1.6;
    const narrow = (v) => shape(v) && shape(v) < 1.45;
    const seen = () => decodedVideo(viewer.page, 'watch');
    const first = await waitFor("the player to show Alice, the speaker (16:9)", seen, wide, { timeout: MEDIA_TIMEOUT_MS, interval: 500 });
    note(`player: Alice speaks, shows ${JSON.stringify(first)}`);
    const playing = await viewer.page.evaluate(async () => {
      const v = document.querySelector('video');
      const t = v.currentTime;
      await new Promise((r) => setTimeout(r, 1000));
      return { width: v.videoWidth, advanced: v.currentTime - t, paused: v.paused };
    });
    assert.ok(playing.width > 0 && playing.advanced > 0.3 && !playing.paused, `the player's <video> plays: ${JSON.stringify(playing)}`);
    const heard = await waitFor('the player to receive audio', () => viewer.page.evaluate(async () => {
      let n = 0;
      (await window.watch.pc.getStats()).forEach((r) => { if (r.type === 'inbound-rtp' && r.kind === 'audio') n += r.packetsReceived || 0; });
      return n;
    }), (n) => n > 50, { timeout: MEDIA_TIMEOUT_MS, interval: 500 });
    note(`player: ${heard} audio packets`);
    assert.equal(await metricValue('huddle_whep_viewers'), 1, 'the player counts as a viewer');
    assert.equal(await viewer.page.evaluate(() => document.body.innerText.includes('Bob')), false, 'a viewer page lists nobody');

    // Alice goes quiet, Bob speaks: the player switches to Bob (16:9).
    await alice.page.click('[data-testid="mic"]');
    await bob.page.click('[data-testid="mic"]');
    const second = await waitFor('the player to follow the speaker to Bob (4:3)', seen, narrow, { timeout: 30_000, interval: 500 });
    note(`player: Bob speaks, shows ${JSON.stringify(second)}`);

    // ?participant=: Alice only, though Bob speaks.
    await viewer.page.goto(`${base}/watch/${room}?participant=${alice.participantId}`, { waitUntil: 'load', timeout: 15_000 });
    await waitFor('the player to connect again', () => viewer.page.evaluate(() => window.watch?.status), (s) => s === 'connected', { timeout: MEDIA_TIMEOUT_MS, interval: 300 });
    const pinned = await waitFor('the pinned player to show Alice (16:9)', seen, wide, { timeout: MEDIA_TIMEOUT_MS, interval: 500 });
    note(`player with ?participant=Alice: ${JSON.stringify(pinned)}`);

    // An independent WHEP client decodes video and audio.
    const token = await guestToken(base, room, 'aiortc viewer');
    const c = runClient(['whep', '--url', `${base}/whep/${room}`, '--token', token, '--seconds', '8']);
    const result = await c.event('result', 40_000);
    note(`aiortc WHEP: ${JSON.stringify(result)}`);
    assert.ok(result.video_frames > 10 && result.width > 0, `aiortc decoded video: ${JSON.stringify(result)}`);
    assert.ok(result.audio_frames > 50, `aiortc decoded audio: ${JSON.stringify(result)}`);
    assert.equal(await c.exited, 0, `the WHEP client failed:\n${c.stderr.slice(-30).join('\n')}`);
    for (const p of [alice, bob, viewer]) assert.deepEqual(p.pageErrors, [], `${p.name}: no page errors`);
  } catch (e) {
    console.log(serverLogTail());
    throw e;
  }
});
