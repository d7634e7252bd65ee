// Browser end-to-end test: three Chromium instances meet in one room through a
// real Huddle server, see and hear each other, chat, and one of them leaves.
//
//   HUDDLE_BIN=target/release/huddle node --test tests/e2e/
//
// Needs Chromium at /usr/bin/chromium (or CHROMIUM_BIN) and playwright-core.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const HUDDLE_BIN = path.resolve(process.env.HUDDLE_BIN || path.join(ROOT, 'target/release/huddle'));
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const SCREENSHOT = path.join(ROOT, 'docs', 'screenshot.png');
const CHROMIUM_ARGS = [
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
const VIEWPORT = { width: 1280, height: 720 };
const MEDIA_TIMEOUT_MS = 20_000;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const stamp = () => new Date().toISOString().slice(11, 23);
const note = (...a) => console.log(`[${stamp()}]`, ...a);

// ------------------------------------------------------------------ helpers

// Poll `probe` until `check(value)` holds, or fail with `what` and the last value seen.
async function waitFor(what, probe, check, { timeout = 10_000, interval = 250 } = {}) {
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

const server = { proc: null, dataDir: null, log: [], url: null };

// The server's last lines, without Rust backtrace frames (they hide the cause).
function serverLogTail(n = 60) {
  const frame = /^\[std(out|err)\]\s+(\d+: |at )/;
  let inBacktrace = false;
  const kept = [];
  for (const line of server.log) {
    if (line.includes('Stack backtrace:')) inBacktrace = true;
    else if (!frame.test(line)) inBacktrace = false;
    if (!(inBacktrace && frame.test(line))) kept.push(line);
  }
  return kept.slice(-n).join('\n');
}

async function startServer() {
  assert.ok(
    existsSync(HUDDLE_BIN),
    `Huddle server binary not found at ${HUDDLE_BIN}. Build it (cargo build --release) or set HUDDLE_BIN.`,
  );
  server.dataDir = mkdtempSync(path.join(tmpdir(), 'huddle-e2e-'));
  // HUDDLE_BIN is this test's own setting; the server reads HUDDLE_* as its configuration.
  const env = { ...process.env, NO_COLOR: '1' };
  delete env.HUDDLE_BIN;
  const proc = spawn(HUDDLE_BIN, ['serve', '--bind', '127.0.0.1:0', '--media-port', '0', '--turn-port', '0', '--data-dir', server.dataDir], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env,
  });
  server.proc = proc;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      reject(new Error(`Server did not print "Huddle is ready at http://..." within 30 s. Its output:\n${serverLogTail()}`));
    }, 30_000);
    const onLine = (stream) => (line) => {
      const clean = line.replace(/\x1b\[[0-9;]*m/g, '');
      server.log.push(`[${stream}] ${clean}`);
      const m = clean.match(/Huddle is ready at (https?:\/\/[^\s]+)/);
      if (m && stream === 'stdout' && !server.url) {
        server.url = m[1].replace(/\/+$/, '');
        clearTimeout(timer);
        resolve(server.url);
      }
    };
    createInterface({ input: proc.stdout }).on('line', onLine('stdout'));
    createInterface({ input: proc.stderr }).on('line', onLine('stderr'));
    proc.on('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`Could not start ${HUDDLE_BIN}: ${err.message}`));
    });
    proc.on('exit', (code, signal) => {
      server.log.push(`[exit] code=${code} signal=${signal}`);
      if (!server.url) {
        clearTimeout(timer);
        reject(new Error(`Server exited (code ${code}, signal ${signal}) before it was ready. Its output:\n${serverLogTail()}`));
      }
    });
  });
}

async function stopServer() {
  const proc = server.proc;
  if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise((r) => proc.once('exit', r));
  proc.kill('SIGTERM');
  const done = await Promise.race([exited.then(() => true), sleep(5000).then(() => false)]);
  if (!done) {
    proc.kill('SIGKILL');
    await Promise.race([exited, sleep(2000)]);
  }
}

// Never leave the server behind, even when the runner is interrupted.
process.on('exit', () => {
  if (server.proc && server.proc.exitCode === null && server.proc.signalCode === null) server.proc.kill('SIGKILL');
});

// ------------------------------------------------------------------ participants

const participants = [];

async function openParticipant(name) {
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true, timeout: 30_000 });
  const context = await browser.newContext({ viewport: VIEWPORT, locale: 'en-US' });
  context.setDefaultTimeout(10_000);
  await context.grantPermissions(['camera', 'microphone'], { origin: server.url });
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
async function remoteVideos(p) {
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

const isPlaying = (v) => v.width > 0 && v.height > 0 && v.advanced > 0.3 && !v.paused;

// Inbound audio RTP streams on the page's RTCPeerConnection, sampled one second apart.
async function inboundAudio(p) {
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

function risingAudio(result) {
  return (result.streams || []).filter((s) => s.after > s.before);
}

async function openChatIfClosed(p) {
  if (!(await p.page.isVisible('[data-testid="chat-input"]'))) await p.page.click('[data-testid="chat-toggle"]');
  await p.page.waitForSelector('[data-testid="chat-input"]', { state: 'visible', timeout: 5000 });
}

// ------------------------------------------------------------------ the test

after(async () => {
  await Promise.allSettled(participants.map((p) => p.browser.close()));
  await stopServer();
  if (server.dataDir) rmSync(server.dataDir, { recursive: true, force: true });
});

test('three browsers meet: video, audio, chat, leave', { timeout: 115_000 }, async (t) => {
  const started = Date.now();
  try {
    const base = await startServer();
    note(`server ready at ${base}`);
    const room = `e2e-${Math.random().toString(36).slice(2, 10)}`;

    // 1. Three Chromium processes open the room and join at about the same time.
    const names = ['Alice', 'Bob', 'Carol'];
    const people = await Promise.all(names.map((n) => openParticipant(n)));
    await Promise.all(
      people.map(async (p) => {
        await p.page.goto(`${base}/r/${room}`, { waitUntil: 'load', timeout: 15_000 });
        await p.page.waitForSelector('[data-testid="name"]', { state: 'visible', timeout: 10_000 });
        await p.page.fill('[data-testid="name"]', p.name);
      }),
    );
    await Promise.all(people.map((p) => p.page.click('[data-testid="join"]', { timeout: 10_000 })));
    for (const p of people) {
      const state = await waitFor(
        `${p.name} to be joined (window.huddle.state === 'joined' and participantId set)`,
        () => p.page.evaluate(() => ({ state: window.huddle?.state, id: window.huddle?.participantId, errors: window.huddle?.errors })),
        (s) => s.state === 'joined' && !!s.id,
        { timeout: 15_000 },
      );
      p.participantId = state.id;
    }
    note('all three joined:', people.map((p) => `${p.name}=${p.participantId}`).join(' '));
    assert.equal(new Set(people.map((p) => p.participantId)).size, 3, 'participant ids must be distinct');

    // 2. Everyone sees two playing remote videos (the two others) and receives two audio streams.
    await Promise.all(
      people.map(async (p) => {
        const others = people.filter((o) => o !== p).map((o) => o.participantId).sort();
        await waitFor(
          `${p.name} to show two playing remote videos from ${others.join(', ')} (videoWidth > 0, currentTime advancing)`,
          () => remoteVideos(p),
          (vs) => {
            const playing = vs.filter(isPlaying);
            return vs.length === 2 && playing.length === 2 && JSON.stringify(playing.map((v) => v.participantId).sort()) === JSON.stringify(others);
          },
          { timeout: MEDIA_TIMEOUT_MS, interval: 100 },
        );
        const audio = await waitFor(
          `${p.name} to receive two audio streams with packetsReceived rising (getStats inbound-rtp kind=audio)`,
          () => inboundAudio(p),
          (r) => risingAudio(r).length >= 2,
          { timeout: MEDIA_TIMEOUT_MS, interval: 100 },
        );
        note(`${p.name}: 2 remote videos playing; audio packets`, risingAudio(audio).map((s) => `${s.before}->${s.after}`).join(', '));
      }),
    );

    // 6 (measured now, printed at the end too). Join click to first remote frame.
    const timings = [];
    for (const p of people) {
      const h = await p.page.evaluate(() => ({ join: window.huddle.joinClickedAt, frame: window.huddle.firstRemoteFrameAt }));
      assert.equal(typeof h.join, 'number', `${p.name}: window.huddle.joinClickedAt is not set`);
      assert.equal(typeof h.frame, 'number', `${p.name}: window.huddle.firstRemoteFrameAt is not set although videos play`);
      timings.push({ name: p.name, ms: Math.round(h.frame - h.join) });
    }
    for (const { name, ms } of timings) console.log(`join_to_first_frame_ms name=${name} ms=${ms}`);

    // 3. A chat message typed by Alice shows up for Bob and Carol (as text, never as markup).
    const [alice, bob, carol] = people;
    const text = `Hello from Alice <b>not bold</b> ${Math.random().toString(36).slice(2, 8)}`;
    await openChatIfClosed(alice);
    await alice.page.fill('[data-testid="chat-input"]', text);
    await alice.page.press('[data-testid="chat-input"]', 'Enter');
    for (const p of people) {
      await waitFor(
        `${p.name} to show Alice's chat message in [data-testid=chat-log]`,
        () =>
          p.page.evaluate((want) => {
            const log = document.querySelector('[data-testid="chat-log"]');
            const items = [...(log ? log.querySelectorAll('[data-testid="chat-message"]') : [])];
            return {
              found: items.some((m) => m.textContent.includes(want)),
              injected: !!(log && log.querySelector('b')),
              count: items.length,
            };
          }, text),
        (r) => r.found,
        { timeout: 5000 },
      ).then((r) => assert.equal(r.injected, false, `${p.name}: chat text was inserted as HTML`));
    }
    note('chat message arrived at all three');

    // 4. Screenshot of one participant once everything plays.
    await waitFor('the toast to go away before the screenshot', () => alice.page.isHidden('#toast'), Boolean, { timeout: 4000 }).catch(() => {});
    mkdirSync(path.dirname(SCREENSHOT), { recursive: true });
    await alice.page.screenshot({ path: SCREENSHOT });
    note(`screenshot written to ${path.relative(ROOT, SCREENSHOT)}`);

    // 5. Carol leaves; Alice and Bob are left with exactly one remote video, Bob's or Alice's.
    await carol.page.click('[data-testid="leave"]');
    await waitFor("Carol's page to be in state 'left'", () => carol.page.evaluate(() => window.huddle.state), (s) => s === 'left', { timeout: 5000 });
    for (const [p, other] of [
      [alice, bob],
      [bob, alice],
    ]) {
      await waitFor(
        `${p.name} to show exactly one remote video (${other.name}'s, playing) after Carol left`,
        () => remoteVideos(p),
        (vs) => vs.length === 1 && isPlaying(vs[0]) && vs[0].participantId === other.participantId,
        { timeout: 8000, interval: 100 },
      );
      const tiles = await p.page.$$eval('[data-testid="tile"]', (els) => els.map((e) => e.dataset.participantId));
      assert.deepEqual(tiles, [other.participantId], `${p.name}: remote tiles after Carol left`);
    }
    note('after Carol left, Alice and Bob each show one remote video');

    // No uncaught page errors, no error banners (a server `error` lands in window.huddle.errors).
    for (const p of people) {
      const errors = await p.page.evaluate(() => window.huddle.errors);
      assert.deepEqual(errors, [], `${p.name}: errors reported by the client`);
    }
    for (const p of people) assert.deepEqual(p.pageErrors, [], `${p.name}: uncaught errors in the page`);

    // 6. Join-to-first-remote-frame times (printed above as soon as measured).
    t.diagnostic(timings.map(({ name, ms }) => `join_to_first_frame_ms name=${name} ms=${ms}`).join('; '));
    note(`done in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  } catch (err) {
    console.log(`server output (last lines):\n${serverLogTail(80)}`);
    for (const p of participants) {
      if (p.pageErrors.length) console.log(`${p.name} page errors:\n${p.pageErrors.join('\n')}`);
      if (p.consoleErrors.length) console.log(`${p.name} console errors:\n${p.consoleErrors.join('\n')}`);
      try {
        const state = await p.page.evaluate(() => ({
          state: window.huddle?.state,
          connectionState: window.huddle?.connectionState,
          errors: window.huddle?.errors,
          banner: document.querySelector('#banner:not([hidden]) .banner-text')?.textContent ?? null,
        }));
        console.log(`${p.name} client state: ${JSON.stringify(state)}`);
      } catch {
        /* page gone */
      }
    }
    throw err;
  }
});
