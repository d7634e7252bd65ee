// Shared harness for the browser end-to-end tests: the real Huddle server on free loopback
// ports, Chromium participants driven by playwright-core, and polling helpers that fail with
// what they last saw. Each test file runs in its own process, so the module state here (the
// server and the open browsers) belongs to one file; call cleanup() from its `after` hook.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
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

export async function startServer(extraArgs = []) {
  assert.ok(
    existsSync(HUDDLE_BIN),
    `Huddle server binary not found at ${HUDDLE_BIN}. Build it (cargo build --release) or set HUDDLE_BIN.`,
  );
  server.dataDir = mkdtempSync(path.join(tmpdir(), 'huddle-e2e-'));
  // HUDDLE_BIN is this test's own setting; the server reads HUDDLE_* as its configuration.
  const env = { ...process.env, NO_COLOR: '1' };
  delete env.HUDDLE_BIN;
  const proc = spawn(HUDDLE_BIN, ['serve', '--bind', '127.0.0.1:0', '--media-port', '0', '--turn-port', '0', '--data-dir', server.dataDir, ...extraArgs], {
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

export async function stopServer() {
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

export const participants = [];

export async function openParticipant(name) {
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

export function risingAudio(result) {
  return (result.streams || []).filter((s) => s.after > s.before);
}

export async function openChatIfClosed(p) {
  if (!(await p.page.isVisible('[data-testid="chat-input"]'))) await p.page.click('[data-testid="chat-toggle"]');
  await p.page.waitForSelector('[data-testid="chat-input"]', { state: 'visible', timeout: 5000 });
}

// Closes every browser, stops the server and removes its data directory.
export async function cleanup() {
  await Promise.allSettled(participants.map((p) => p.browser.close()));
  await stopServer();
  if (server.dataDir) rmSync(server.dataDir, { recursive: true, force: true });
}
