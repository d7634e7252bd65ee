// Browser end-to-end test of moderation: a host (admin token) and a guest in a lobby room. The
// guest waits in the lobby until the host admits them from the knock; the guest raises a hand,
// which the host sees on the guest's tile; the room API mutes the guest, which the host sees on
// the guest's tile and the guest on their own controls; a chat message shows "Delivered".
//
//   HUDDLE_BIN=target/release/huddle node --test tests/e2e/moderation.test.mjs
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { note, waitFor, startServer, openParticipant, openChatIfClosed, cleanup, serverLogTail, participants } from './harness.mjs';

const TOKEN_SECRET = 'e2e-token-secret-0123456789abcdef';
const API_KEY = 'e2e';
const API_SECRET = 'e2e-api-secret-0123456789abcdef';

const b64url = (s) => Buffer.from(s).toString('base64url');
function jwt(claims, secret) {
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify(claims));
  const sig = createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}
const now = () => Math.floor(Date.now() / 1000);

const configDir = mkdtempSync(path.join(tmpdir(), 'huddle-e2e-cfg-'));
after(async () => {
  await cleanup();
  rmSync(configDir, { recursive: true, force: true });
});

async function api(base, method, route, body) {
  const token = jwt({ iss: API_KEY, exp: now() + 300, grants: { admin: true } }, API_SECRET);
  const res = await fetch(`${base}${route}`, {
    method,
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: body ? JSON.stringify(body) : undefined,
  });
  const json = await res.json().catch(() => null);
  assert.ok(res.ok, `${method} ${route}: ${res.status} ${JSON.stringify(json)}`);
  return json;
}

test('lobby admit, raised hand, API mute and chat delivery between two browsers', { timeout: 100_000 }, async () => {
  try {
    const cfg = path.join(configDir, 'huddle.toml');
    writeFileSync(cfg, `[auth]\nsecret = "${TOKEN_SECRET}"\n[api]\nkey = "${API_KEY}"\nsecret = "${API_SECRET}"\n`);
    const base = await startServer(['--config', cfg]);
    note(`server ready at ${base}`);
    const room = `mod-${Math.random().toString(36).slice(2, 10)}`;
    await api(base, 'POST', '/api/rooms', { name: room, lobby: true });

    // The host joins with an admin token (skips the lobby); the guest with a guest token.
    const hostToken = jwt(
      { sub: 'host', name: 'Hana', room, iat: now(), exp: now() + 600, grants: { publish: true, subscribe: true, chat: true, admin: true } },
      TOKEN_SECRET,
    );
    const [host, guest] = await Promise.all([openParticipant('Hana'), openParticipant('Gus')]);
    await host.page.goto(`${base}/r/${room}?token=${hostToken}`, { waitUntil: 'load' });
    await guest.page.goto(`${base}/r/${room}`, { waitUntil: 'load' });
    await host.page.click('[data-testid="join"]');
    await waitFor('the host to be joined', () => host.page.evaluate(() => window.huddle?.state), (s) => s === 'joined', { timeout: 15_000 });

    await guest.page.fill('[data-testid="name"]', 'Gus');
    await guest.page.click('[data-testid="join"]');
    await guest.page.waitForSelector('[data-testid="lobby"]', { state: 'visible', timeout: 10_000 });
    note('the guest waits in the lobby');

    // The host's knock card admits the guest.
    await host.page.waitForSelector('[data-testid="knock"]', { state: 'visible', timeout: 10_000 });
    const knockText = await host.page.textContent('[data-testid="knock"]');
    assert.match(knockText, /Gus/);
    await host.page.click('[data-testid="knock-admit"]');
    const guestState = await waitFor(
      'the guest to be admitted and joined',
      () => guest.page.evaluate(() => ({ state: window.huddle?.state, id: window.huddle?.participantId, identity: window.huddle?.identity })),
      (s) => s.state === 'joined' && !!s.id,
      { timeout: 10_000 },
    );
    await host.page.waitForSelector('[data-testid="knock"]', { state: 'detached', timeout: 5000 });
    const guestTile = `[data-testid="tile"][data-participant-id="${guestState.id}"]`;
    await host.page.waitForSelector(guestTile, { timeout: 10_000 });
    note(`admitted: guest ${guestState.id} (${guestState.identity})`);

    // Raise hand: visible on the guest's tile at the host, and in the host's participant list.
    await guest.page.click('[data-testid="hand-raise"]');
    await host.page.waitForSelector(`${guestTile} [data-testid="hand-badge"]:not([hidden])`, { timeout: 5000 });
    await host.page.click('[data-testid="people-toggle"]');
    await waitFor(
      "the host's participant list to show the guest's hand",
      () => host.page.$$eval('[data-testid="person"]', (els) => els.map((e) => e.textContent)),
      (items) => items.some((s) => s.includes('Gus') && s.includes('✋')),
      { timeout: 5000 },
    );
    await guest.page.click('[data-testid="hand-raise"]');
    await host.page.waitForSelector(`${guestTile} [data-testid="hand-badge"]`, { state: 'hidden', timeout: 5000 });
    note('raised and lowered hand seen by the host');

    // The room API mutes the guest's microphone: the host's tile for the guest shows it muted,
    // the guest's own client turns the microphone off.
    await api(base, 'POST', `/api/rooms/${room}/participants/${encodeURIComponent(guestState.identity)}/mute`, { kind: 'audio' });
    await host.page.waitForSelector(`${guestTile} .mic-badge:not([hidden])`, { timeout: 5000 });
    await waitFor(
      "the guest's client to be muted",
      () => guest.page.evaluate(() => ({ muted: window.huddle.audioMuted, pressed: document.querySelector('#mic-button')?.getAttribute('aria-pressed') })),
      (s) => s.muted === true && s.pressed === 'true',
      { timeout: 5000 },
    );
    note("API mute shown on the guest's tile at the host and on the guest's own controls");

    // Chat: typing shows at the host; the guest's message goes sent -> delivered.
    await openChatIfClosed(guest);
    await openChatIfClosed(host);
    await guest.page.fill('[data-testid="chat-input"]', 'hello host');
    await host.page.waitForSelector('[data-testid="typing"]:has-text("Gus")', { timeout: 5000 });
    await guest.page.press('[data-testid="chat-input"]', 'Enter');
    await guest.page.waitForSelector('[data-testid="chat-status"][data-status="delivered"]', { timeout: 5000 });
    await waitFor(
      "the host to get the guest's message",
      () => host.page.$$eval('[data-testid="chat-message"]', (els) => els.map((e) => e.textContent)),
      (items) => items.some((s) => s.includes('hello host')),
      { timeout: 5000 },
    );
    note('typing indicator and delivery mark shown');

    for (const p of [host, guest]) {
      const errors = await p.page.evaluate(() => window.huddle.errors);
      assert.deepEqual(errors, [], `${p.name}: errors reported by the client`);
      assert.deepEqual(p.pageErrors, [], `${p.name}: uncaught errors in the page`);
    }
  } catch (err) {
    console.log(`server output (last lines):\n${serverLogTail(80)}`);
    for (const p of participants) {
      if (p.pageErrors.length) console.log(`${p.name} page errors:\n${p.pageErrors.join('\n')}`);
      try {
        const state = await p.page.evaluate(() => ({ state: window.huddle?.state, errors: window.huddle?.errors }));
        console.log(`${p.name} client state: ${JSON.stringify(state)}`);
      } catch {
        /* page gone */
      }
    }
    throw err;
  }
});
