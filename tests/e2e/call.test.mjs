// Browser end-to-end test: three Chromium instances meet in one room through a
// real Huddle server, see and hear each other, chat, and one of them leaves.
//
//   HUDDLE_BIN=target/release/huddle node --test tests/e2e/
//
// Needs Chromium at /usr/bin/chromium (or CHROMIUM_BIN) and playwright-core.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import {
  ROOT, MEDIA_TIMEOUT_MS, note, waitFor, startServer, openParticipant, remoteVideos, isPlaying,
  inboundAudio, risingAudio, openChatIfClosed, cleanup, serverLogTail, participants,
} from './harness.mjs';

const SCREENSHOT = path.join(ROOT, 'docs', 'screenshot.png');

// ------------------------------------------------------------------ the test

after(cleanup);

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
