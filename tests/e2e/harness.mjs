// Shared harness for the browser end-to-end tests: the real Huddle server on free loopback
// ports, Chromium participants driven by playwright-core, and polling helpers that fail with
// what they last saw. Each test file runs in its own process, so the module state here (the
// server and the open browsers) belongs to one file; call cleanup() from its `after` hook.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import dgram from 'node:dgram';
import net from 'node:net';
import { createInterface } from 'node:readline';
import { appendFileSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const HUDDLE_BIN = path.resolve(process.env.HUDDLE_BIN || path.join(ROOT, 'target/release/huddle'));
export const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-default-apps',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  '--allow-loopback-in-peer-connection',
];
export const VIEWPORT = { width: 1280, height: 720 };
export const MEDIA_TIMEOUT_MS = 20_000;

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const stamp = () => new Date().toISOString().slice(11, 23);
export const note = (...a) => console.log(`[${stamp()}]`, ...a);

// ------------------------------------------------------------------ helpers

// Poll `probe` until `check(value)` holds, or fail with `what` and the last value seen.
export async function waitFor(what, probe, check, { timeout = 10_000, interval = 250 } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  let lastError;
  for (;;) {
    try {
      last = await probe();
      lastError = undefined;
      if (check(last)) return last;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() >= deadline) {
      const seen = lastError ? `error: ${lastError.message}` : JSON.stringify(last, null, 1);
      throw new Error(`Timed out after ${timeout} ms waiting for ${what}. Last seen: ${seen}`);
    }
    await sleep(interval);
  }
}

// ------------------------------------------------------------------ server

export const server = { proc: null, dataDir: null, log: [], url: null };

// The server's last lines, without Rust backtrace frames (they hide the cause).
export function serverLogTail(n = 60) {
  return logTail(server.log, n);
}

export function logTail(log, n = 60) {
  const frame = /^\[std(out|err)\]\s+(\d+: |at )/;
  let inBacktrace = false;
  const kept = [];
  for (const line of log) {
    if (line.includes('Stack backtrace:')) inBacktrace = true;
    else if (!frame.test(line)) inBacktrace = false;
    if (!(inBacktrace && frame.test(line))) kept.push(line);
  }
  return kept.slice(-n).join('\n');
}

export async function startServer(extraArgs = [], env = {}) {
  const started = await spawnHuddle(['--bind', '127.0.0.1:0', ...extraArgs], env, server);
  return started.url;
}

// Starts `huddle serve` (media and TURN on free ports, a fresh data directory) and resolves
// with `into` (a new object unless given) once it prints its ready line: {proc, dataDir, log,
// url}. `args` must include --bind; `env` is added to the environment. With `into.ports`
// ({media, turn}) media and TURN use those ports; with `into.keepDataDir` its `dataDir` is
// used again (see restartServer).
export async function spawnHuddle(args, env = {}, into = { proc: null, dataDir: null, log: [], url: null }) {
  assert.ok(
    existsSync(HUDDLE_BIN),
    `Huddle server binary not found at ${HUDDLE_BIN}. Build it (cargo build --release) or set HUDDLE_BIN.`,
  );
  const s = into;
  // One process per object: starting another into a running one would lose the first (nothing
  // would stop it, and its pipes would keep node from exiting after the last test).
  assert.ok(
    !(s.proc && s.proc.exitCode === null && s.proc.signalCode === null),
    'a server is already running in this object (the shared `server` of startServer): stop it first, or give spawnHuddle a new object for a second server',
  );
  if (!(s.keepDataDir && s.dataDir)) s.dataDir = mkdtempSync(path.join(tmpdir(), 'huddle-e2e-'));
  s.args = args;
  s.env = env;
  s.url = null;
  const ports = s.ports || { media: 0, turn: 0 };
  // HUDDLE_BIN is this test's own setting; the server reads HUDDLE_* as its configuration.
  const fullEnv = { ...process.env, NO_COLOR: '1', ...env };
  delete fullEnv.HUDDLE_BIN;
  const proc = spawn(HUDDLE_BIN, ['serve', '--media-port', String(ports.media), '--turn-port', String(ports.turn), '--data-dir', s.dataDir, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: fullEnv,
  });
  s.proc = proc;
  if (!spawned.includes(s)) spawned.push(s);
  const tail = () => logTail(s.log);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      reject(new Error(`Server did not print "Huddle is ready at http://..." within 30 s. Its output:\n${tail()}`));
    }, 30_000);
    const onLine = (stream) => (line) => {
      const clean = line.replace(/\x1b\[[0-9;]*m/g, '');
      s.log.push(`[${stream}] ${clean}`);
      // For debugging a passing run too: E2E_SERVER_LOG=/tmp/server.log keeps every line.
      if (process.env.E2E_SERVER_LOG) appendFileSync(process.env.E2E_SERVER_LOG, `[${stream}] ${clean}\n`);
      const m = clean.match(/Huddle is ready at (https?:\/\/[^\s]+)/);
      if (m && stream === 'stdout' && !s.url) {
        s.url = m[1].replace(/\/+$/, '');
        clearTimeout(timer);
        resolve(s);
      }
    };
    createInterface({ input: proc.stdout }).on('line', onLine('stdout'));
    createInterface({ input: proc.stderr }).on('line', onLine('stderr'));
    proc.on('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`Could not start ${HUDDLE_BIN}: ${err.message}`));
    });
    proc.on('exit', (code, signal) => {
      s.log.push(`[exit] code=${code} signal=${signal}`);
      if (!s.url) {
        clearTimeout(timer);
        reject(new Error(`Server exited (code ${code}, signal ${signal}) before it was ready. Its output:\n${tail()}`));
      }
    });
  });
}

// Starts a server stopped with stopServer again: same arguments, ports and data directory.
export async function restartServer(s = server) {
  assert.ok(s.keepDataDir && s.ports, 'restartServer needs a server started with fixed ports and keepDataDir');
  return spawnHuddle(s.args, s.env, s);
}

// Free loopback ports for a server that is to be restarted on the same ones: {http, media
// (the first of `workers` consecutive UDP ports), turn (UDP and TCP)}.
export async function freePorts(workers = 2) {
  const free = (kind, port) =>
    new Promise((resolve) => {
      const done = (ok, close) => {
        try {
          close();
        } catch {
          /* not open */
        }
        resolve(ok);
      };
      if (kind === 'tcp') {
        const srv = net.createServer();
        srv.once('error', () => resolve(false));
        srv.listen(port, '127.0.0.1', () => done(true, () => srv.close()));
      } else {
        const sock = dgram.createSocket('udp4');
        sock.once('error', () => resolve(false));
        sock.bind(port, '127.0.0.1', () => done(true, () => sock.close()));
      }
    });
  const pick = async (check) => {
    for (let i = 0; i < 200; i++) {
      const port = 20000 + Math.floor(Math.random() * 30000);
      if (await check(port)) return port;
    }
    throw new Error('no free loopback port found');
  };
  const http = await pick((p) => free('tcp', p));
  const media = await pick(async (p) => {
    for (let i = 0; i < workers; i++) if (!(await free('udp', p + i))) return false;
    return true;
  });
  const turn = await pick(async (p) => (await free('udp', p)) && (await free('tcp', p)));
  return { http, media, turn };
}

// Every server this file started (killed on exit).
const spawned = [];

export async function stopServer(s = server) {
  const proc = s.proc;
  if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise((r) => proc.once('exit', r));
  proc.kill('SIGTERM');
  const done = await Promise.race([exited.then(() => true), sleep(5000).then(() => false)]);
  if (!done) {
    proc.kill('SIGKILL');
    await Promise.race([exited, sleep(2000)]);
  }
}

// Never leave a server behind, even when the runner is interrupted.
process.on('exit', () => {
  for (const s of spawned) if (s.proc && s.proc.exitCode === null && s.proc.signalCode === null) s.proc.kill('SIGKILL');
});

// ------------------------------------------------------------------ participants

export const participants = [];

// `origin`: where the page will be loaded from when not the server itself (e.g. a lane of the
// impairment proxy); `args`: Chromium flags for this browser only (a fake camera file, say).
export async function openParticipant(name, { origin = server.url, args = [] } = {}) {
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: [...CHROMIUM_ARGS, ...args], headless: true, timeout: 30_000 });
  const context = await browser.newContext({ viewport: VIEWPORT, locale: 'en-US' });
  context.setDefaultTimeout(10_000);
  await context.grantPermissions(['camera', 'microphone'], { origin });
  const page = await context.newPage();
  const p = { name, browser, page, pageErrors: [], consoleErrors: [], participantId: null };
  page.on('pageerror', (err) => p.pageErrors.push(String(err && err.stack ? err.stack : err)));
  page.on('console', (msg) => {
    if (msg.type() === 'error' && !/status of 404/.test(msg.text())) p.consoleErrors.push(msg.text());
  });
  participants.push(p);
  return p;
}

// Remote <video> elements and whether they play: currentTime must advance over one second.
export async function remoteVideos(p) {
  return p.page.evaluate(async () => {
    const videos = [...document.querySelectorAll('video[data-remote="1"]')];
    const before = videos.map((v) => v.currentTime);
    await new Promise((r) => setTimeout(r, 1000));
    return videos.map((v, i) => ({
      participantId: v.closest('[data-participant-id]')?.dataset.participantId ?? null,
      width: v.videoWidth,
      height: v.videoHeight,
      advanced: Number((v.currentTime - before[i]).toFixed(3)),
      paused: v.paused,
      readyState: v.readyState,
    }));
  });
}

export const isPlaying = (v) => v.width > 0 && v.height > 0 && v.advanced > 0.3 && !v.paused;

// Inbound audio RTP streams on the page's RTCPeerConnection, sampled one second apart.
export async function inboundAudio(p) {
  return p.page.evaluate(async () => {
    const pc = window.huddle && window.huddle.pc;
    if (!pc) return { error: 'window.huddle.pc is not set' };
    const sample = async () => {
      const out = {};
      (await pc.getStats()).forEach((r) => {
        if (r.type === 'inbound-rtp' && r.kind === 'audio') out[r.id] = r.packetsReceived || 0;
      });
      return out;
    };
    const a = await sample();
    await new Promise((r) => setTimeout(r, 1000));
    const b = await sample();
    return { streams: Object.keys(b).map((id) => ({ id, before: a[id] ?? 0, after: b[id] })) };
  });
}

// The inbound camera video on the page with the most decoded frames (getStats inbound-rtp):
// its decoded size, frame count, NACKs sent and packets lost; null before any frame.
export async function inboundVideo(p) {
  return p.page.evaluate(async () => {
    const pc = window.huddle && window.huddle.pc;
    if (!pc) return null;
    let best = null;
    (await pc.getStats()).forEach((r) => {
      if (r.type !== 'inbound-rtp' || r.kind !== 'video' || !r.framesDecoded) return;
      if (!best || r.framesDecoded > best.framesDecoded) {
        best = {
          frameWidth: r.frameWidth,
          frameHeight: r.frameHeight,
          framesDecoded: r.framesDecoded,
          trackIdentifier: r.trackIdentifier,
          nackCount: r.nackCount,
          packetsLost: r.packetsLost,
          pliCount: r.pliCount,
          freezeCount: r.freezeCount,
          totalFreezesDuration: r.totalFreezesDuration,
        };
      }
    });
    return best;
  });
}

// The camera layers a participant sends (getStats outbound-rtp, video): one entry per
// simulcast layer, widest first, with what limits it (qualityLimitationReason: cpu, bandwidth).
export async function outboundVideo(p) {
  return p.page.evaluate(async () => {
    const pc = window.huddle && window.huddle.pc;
    if (!pc) return [];
    const out = [];
    (await pc.getStats()).forEach((r) => {
      if (r.type !== 'outbound-rtp' || r.kind !== 'video') return;
      out.push({
        rid: r.rid,
        frameWidth: r.frameWidth || 0,
        framesEncoded: r.framesEncoded || 0,
        framesPerSecond: r.framesPerSecond || 0,
        active: r.active,
        limitedBy: r.qualityLimitationReason,
      });
    });
    return out.sort((a, b) => b.frameWidth - a.frameWidth);
  });
}

// What a subscriber receives of a publisher's camera and why: its inbound video, the layers the
// publisher sends (outboundVideo) and the tile the subscriber last reported (video_sizes).
export async function layerState(sub, pub) {
  return {
    bob: await inboundVideo(sub),
    alice: await outboundVideo(pub),
    tile: await sub.page.evaluate(() => {
      const sent = (window.huddle.trace || []).filter((e) => e.type === 'video_sizes' && e.dir === 'out' && e.tracks);
      const last = sent.length ? sent[sent.length - 1].tracks : [];
      return last.reduce((a, t) => (t.width > a.width ? t : a), { width: 0, height: 0 });
    }),
  };
}

// The widest layer the publisher's browser is sending now (active, frames flowing).
export const widestSent = (s) => Math.max(0, ...s.alice.filter((l) => l.active && l.framesPerSecond > 0).map((l) => l.frameWidth));

// Whether the subscriber receives a layer that covers its tile (fitsTile). Should no layer
// cover it (Chromium scales its layers down when its CPU or uplink is short), the widest the
// publisher sends will do, once dynacast has had 2 s since `since` to resume it.
export const coversTile = (s, since) =>
  !!s.bob && s.tile.width > 0 &&
  (fitsTile(s) || (Date.now() - since > 2000 && widestSent(s) > 0 && s.bob.frameWidth >= widestSent(s)));

// Whether the received frames are large enough for the tile: at least 90 % of it each way, as
// the server's layer_for_size reckons.
export const fitsTile = (s) => !!s.bob && s.bob.frameWidth * 10 >= s.tile.width * 9 && s.bob.frameHeight * 10 >= s.tile.height * 9;

export const layerText = (s) => `${s.bob.frameWidth}x${s.bob.frameHeight} for a ${s.tile.width}x${s.tile.height} tile`;

// Frames the subscriber decodes of the publisher's camera over `seconds`, against about how
// many the publisher encodes: its frame rate (outbound-rtp framesPerSecond of its busiest active
// layer; lower when its CPU is short), summed each second. Per-layer frame counters start again
// when dynacast pauses a layer, so they cannot be subtracted.
export async function decodedVsSent(sub, pub, seconds) {
  const v0 = await inboundVideo(sub);
  let sent = 0;
  let layers = [];
  for (let i = 0; i < seconds; i++) {
    await sleep(1000);
    layers = await outboundVideo(pub);
    sent += Math.max(0, ...layers.filter((l) => l.active).map((l) => l.framesPerSecond));
  }
  const v1 = await inboundVideo(sub);
  return { decoded: v1.framesDecoded - v0.framesDecoded, sent, v0, v1, layers };
}

export function risingAudio(result) {
  return (result.streams || []).filter((s) => s.after > s.before);
}

export async function openChatIfClosed(p) {
  if (!(await p.page.isVisible('[data-testid="chat-input"]'))) await p.page.click('[data-testid="chat-toggle"]');
  await p.page.waitForSelector('[data-testid="chat-input"]', { state: 'visible', timeout: 5000 });
}

// Closes one participant's browser (to free the two CPU cores for the next test).
export async function closeParticipant(p) {
  await p.browser.close().catch(() => {});
  const i = participants.indexOf(p);
  if (i >= 0) participants.splice(i, 1);
}

// Types the name, clicks Join and waits until the page says it joined; sets p.participantId.
export async function joinRoom(p, url) {
  await p.page.goto(url, { waitUntil: 'load', timeout: 15_000 });
  await p.page.waitForSelector('[data-testid="name"]', { state: 'visible' });
  await p.page.fill('[data-testid="name"]', p.name);
  await p.page.click('[data-testid="join"]');
  const s = await waitFor(
    `${p.name} to join`,
    () => p.page.evaluate(() => ({ state: window.huddle?.state, id: window.huddle?.participantId })),
    (s) => s.state === 'joined' && !!s.id,
    { timeout: 15_000 },
  );
  p.participantId = s.id;
  return s.id;
}

// The local UDP ports of the page's ICE candidates, the media-carrying one first. A network cut
// must cover them all: Chromium moves to another candidate pair when one stops answering.
export async function localMediaPorts(p) {
  return p.page.evaluate(async () => {
    const pc = window.huddle && window.huddle.pc;
    if (!pc) return [];
    const stats = await pc.getStats();
    let best = null;
    stats.forEach((r) => {
      if (r.type === 'candidate-pair' && r.nominated && (!best || r.bytesSent > best.bytesSent)) best = r;
    });
    const first = best && stats.get(best.localCandidateId);
    const ports = first ? [first.port] : [];
    stats.forEach((r) => {
      if (r.type === 'local-candidate' && r.protocol === 'udp' && r.port > 9 && !ports.includes(r.port)) ports.push(r.port);
    });
    return ports;
  });
}

// The value of one Prometheus sample (sum over the series matching `name{labels...}`).
export async function metricValue(name, labels = {}) {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  let sum = 0;
  let found = false;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = line.match(/^([a-z_]+)(\{([^}]*)\})? ([0-9.eE+-]+)$/);
    if (!m || m[1] !== name) continue;
    const have = Object.fromEntries([...(m[3] || '').matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) {
      sum += Number(m[4]);
      found = true;
    }
  }
  if (!found) throw new Error(`metric ${name}${JSON.stringify(labels)} not in /metrics`);
  return sum;
}

// ------------------------------------------------------------------ impairment proxy

export const IMPAIR_BIN = path.resolve(process.env.IMPAIR_BIN || path.join(path.dirname(HUDDLE_BIN), 'huddle-impair'));
export const impairs = [];

// The media socket ports of the running server, from its "media worker started" log lines.
export function mediaPorts() {
  const ports = [];
  for (const line of server.log) {
    const m = line.match(/media worker started.*addr=127\.0\.0\.1:(\d+)/);
    if (m) ports.push(Number(m[1]));
  }
  return ports;
}

// Starts huddle-impair (loadtest/src/bin/huddle-impair.rs) in front of the server's media
// sockets on `udpIp` (start the server with `--public-ip <udpIp>` so that it advertises the
// proxy) and with `tcpLanes` TCP forwards to its HTTP port. Returns {bound, lanes (URLs),
// cmd(line)}: cmd resolves with the proxy's `ok ...` reply and rejects on `error ...`.
export async function startImpair({ udpIp = '127.0.0.2', tcpLanes = 0 } = {}) {
  assert.ok(existsSync(IMPAIR_BIN), `huddle-impair not found at ${IMPAIR_BIN}. Build it (cargo build --release --bin huddle-impair) or set IMPAIR_BIN.`);
  // The log lines come on stderr, the ready line on stdout: give stderr a moment.
  for (let i = 0; i < 50 && mediaPorts().length === 0; i++) await sleep(100);
  const ports = mediaPorts();
  assert.ok(ports.length > 0, `no "media worker started" line in the server log:\n${serverLogTail()}`);
  const http = new URL(server.url).host;
  const args = [];
  for (const p of ports) args.push('--udp', `${udpIp}:${p}=127.0.0.1:${p}`);
  for (let i = 0; i < tcpLanes; i++) args.push('--tcp', `127.0.0.1:0=${http}`);
  const proc = spawn(IMPAIR_BIN, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  const stderr = [];
  createInterface({ input: proc.stderr }).on('line', (l) => stderr.push(l));
  const lines = createInterface({ input: proc.stdout });
  const waiting = [];
  let onFirst;
  const first = new Promise((resolve, reject) => {
    onFirst = resolve;
    proc.on('exit', (code) => reject(new Error(`huddle-impair exited (${code}): ${stderr.join('\n')}`)));
    setTimeout(() => reject(new Error('huddle-impair printed nothing within 10 s')), 10_000);
  });
  lines.on('line', (line) => {
    if (onFirst) {
      const f = onFirst;
      onFirst = null;
      f(line);
      return;
    }
    const w = waiting.shift();
    if (w) w(line);
  });
  const bound = JSON.parse(await first);
  const impair = {
    proc,
    bound,
    lanes: bound.tcp.map((t) => `http://${t.listen}`),
    cmd(line) {
      return new Promise((resolve, reject) => {
        waiting.push((reply) => (reply.startsWith('ok') ? resolve(reply) : reject(new Error(`huddle-impair: ${line} -> ${reply}`))));
        proc.stdin.write(`${line}\n`);
      });
    },
  };
  impairs.push(impair);
  return impair;
}

process.on('exit', () => {
  for (const i of impairs) if (i.proc.exitCode === null) i.proc.kill('SIGKILL');
});

// Closes every browser, stops the server and removes its data directory.
export async function cleanup() {
  await Promise.allSettled(participants.map((p) => p.browser.close()));
  for (const i of impairs) if (i.proc.exitCode === null) i.proc.kill('SIGTERM');
  for (const s of spawned) {
    await stopServer(s);
    if (s.dataDir) rmSync(s.dataDir, { recursive: true, force: true });
  }
}
