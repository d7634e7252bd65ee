// Browser end-to-end test of meeting quality: simulcast layer choice by tile size, the
// server's active-speaker highlight, connection quality, and a screen share shown large.
//
// The server runs with media.bandwidth_estimate off, so that tile size alone picks the layer:
// on a loaded 2-core machine the delay-based estimate of a loopback link swings with CPU
// contention and would decide instead (layers chosen within the estimate are tested in
// network.test.mjs, through a capped link).
//
//   HUDDLE_BIN=target/release/huddle node --test tests/e2e/quality.test.mjs
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  CHROMIUM_ARGS, MEDIA_TIMEOUT_MS, note, sleep, waitFor, startServer, openParticipant, remoteVideos, isPlaying,
  layerState, coversTile, layerText, cleanup, serverLogTail,
} from './harness.mjs';

// getDisplayMedia without a picker: Chromium captures the (virtual) screen by itself.
CHROMIUM_ARGS.push('--auto-select-desktop-capture-source=Entire screen', '--enable-usermedia-screen-capturing');

after(cleanup);

const traced = (p, type) => p.page.evaluate((ty) => (window.huddle.trace || []).filter((e) => e.type === ty && e.dir === 'in'), type);

test('simulcast follows the tile size; speakers, quality and a screen share show', { timeout: 150_000 }, async () => {
  try {
    const base = await startServer([], { HUDDLE_MEDIA__BANDWIDTH_ESTIMATE: 'false' });
    note(`server ready at ${base}`);
    const room = `q-${Math.random().toString(36).slice(2, 10)}`;
    const people = await Promise.all(['Alice', 'Bob'].map((n) => openParticipant(n)));
    for (const p of people) {
      await p.page.goto(`${base}/r/${room}`, { waitUntil: 'load', timeout: 15_000 });
      await p.page.waitForSelector('[data-testid="name"]', { state: 'visible' });
      await p.page.fill('[data-testid="name"]', p.name);
      await p.page.click('[data-testid="join"]');
      const s = await waitFor(`${p.name} to join`, () => p.page.evaluate(() => ({ state: window.huddle?.state, id: window.huddle?.participantId })), (s) => s.state === 'joined' && !!s.id, { timeout: 15_000 });
      p.participantId = s.id;
    }
    const [alice, bob] = people;
    await waitFor("Bob to play Alice's video", () => remoteVideos(bob), (vs) => vs.filter(isPlaying).length === 1, { timeout: MEDIA_TIMEOUT_MS, interval: 200 });

    // 1. Simulcast: a large tile gets a layer that covers it (see coversTile), a small one a
    //    lower layer. The tile size is what Bob last reported (video_sizes).
    const seen = () => layerState(bob, alice);
    // A full-HD window: Alice's tile needs her top layer.
    await bob.page.setViewportSize({ width: 1920, height: 1080 });
    let since = Date.now();
    // Once Bob has reported the large tile (over 711 px, more than the middle 640 px layer covers).
    const large = (s) => s.tile.width > 711;
    const big = await waitFor("Bob's large tile to receive a layer that covers it", seen, (s) => large(s) && coversTile(s, since), { timeout: 30_000, interval: 500 });
    note(`large tile: Alice's video arrives at ${layerText(big)}; Alice sends ${JSON.stringify(big.alice)}`);
    await bob.page.setViewportSize({ width: 420, height: 320 });
    const small = await waitFor(
      "Bob's small tile to receive a lower layer",
      seen,
      (s) => s.bob && s.bob.frameWidth > 0 && s.bob.frameWidth < big.bob.frameWidth,
      { timeout: 20_000, interval: 500 },
    );
    note(`small tile: ${layerText(small)}`);
    const sizes = await bob.page.evaluate(() => (window.huddle.trace || []).filter((e) => e.type === 'video_sizes').length);
    assert.ok(sizes > 0, 'Bob reported no video_sizes');
    const layers = await traced(alice, 'layers');
    assert.ok(layers.length > 0, 'Alice was never told which layers to send (dynacast)');
    note(`Alice got ${layers.length} layers messages`);
    await bob.page.setViewportSize({ width: 1920, height: 1080 });
    since = Date.now();
    const back = await waitFor("Bob's tile, large again, to get a layer that covers it", seen, (s) => large(s) && s.bob.frameWidth > small.bob.frameWidth && coversTile(s, since), { timeout: 20_000, interval: 500 });
    note(`large again: ${layerText(back)}`);

    // 2. Active speaker: both fake microphones beep; Bob mutes his. The server names Alice,
    //    Bob rings her tile, and Bob, muted, is never named.
    await bob.page.click('[data-testid="mic"]');
    await waitFor('Bob to be muted', () => bob.page.evaluate(() => window.huddle.audioMuted), Boolean, { timeout: 5000 });
    await sleep(1500); // speaker updates already on their way
    const heard = new Set();
    const listenUntil = Date.now() + 4000;
    while (Date.now() < listenUntil) {
      for (const id of await alice.page.evaluate(() => window.huddle.speakers)) heard.add(id);
      await sleep(100);
    }
    assert.ok(heard.has(alice.participantId), `Alice (beeping) should be named speaking: ${[...heard]}`);
    assert.ok(!heard.has(bob.participantId), `Bob (muted) must not be named speaking: ${[...heard]}`);
    await waitFor(
      "Bob to highlight Alice's tile as speaking (server 'speakers')",
      () => bob.page.evaluate((id) => !!document.querySelector(`.tile.speaking[data-participant-id="${id}"]`), alice.participantId),
      Boolean,
      { timeout: 15_000, interval: 100 },
    );
    note('speaker highlight shown');

    // 3. Connection quality indicator on Alice's tile at Bob.
    const q = await waitFor(
      "a connection quality dot on Alice's tile at Bob",
      () => bob.page.evaluate((id) => document.querySelector(`[data-participant-id="${id}"] [data-testid="quality"]`)?.dataset.quality || null, alice.participantId),
      Boolean,
      { timeout: 30_000, interval: 500 },
    );
    note(`Alice's quality at Bob: ${q}`);

    // 4. Alice shares her screen; Bob shows it large, next to a strip with Alice's camera.
    await alice.page.click('[data-testid="screen-share"]');
    const how = await waitFor('Alice to be sharing', () => alice.page.evaluate(() => ({ sharing: !!window.huddle.call?.screenTrack, errors: window.huddle.errors })), (s) => s.sharing || s.errors.length > 0, { timeout: 10_000 });
    assert.ok(how.sharing, `screen share did not start: ${JSON.stringify(how.errors)}`);
    const shown = await waitFor(
      "Bob to show Alice's screen large and playing",
      () =>
        bob.page.evaluate((id) => {
          const s = document.querySelector(`[data-testid="screen-tile"][data-participant-id="${id}"]`);
          const cam = document.querySelector(`[data-testid="tile"][data-participant-id="${id}"]`);
          if (!s || s.hidden) return { present: !!s };
          const v = s.querySelector('video');
          return { present: true, width: v.videoWidth, screenBox: s.getBoundingClientRect().width, camBox: cam ? cam.getBoundingClientRect().width : 0, focused: s.classList.contains('focused') };
        }, alice.participantId),
      (r) => r.width > 0 && r.focused && r.screenBox > 2 * r.camBox,
      { timeout: MEDIA_TIMEOUT_MS, interval: 250 },
    );
    note(`screen at Bob: ${shown.width}px wide video, tile ${Math.round(shown.screenBox)}px vs camera ${Math.round(shown.camBox)}px`);

    for (const p of people) {
      const errors = await p.page.evaluate(() => window.huddle.errors);
      assert.deepEqual(errors, [], `${p.name} reported errors`);
      assert.deepEqual(p.pageErrors, [], `${p.name} had page errors`);
    }
  } catch (err) {
    console.log('server log tail:\n' + serverLogTail());
    throw err;
  }
});
