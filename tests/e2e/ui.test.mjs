// Browser end-to-end test of the web client's layout and host controls, on one call of two
// browsers (Alice opens the room first, so in local mode she is its host; Bob joins second).
//
// 1. Layout: at 375x812 (and 360x640) every control of the bar is in the viewport or in the
//    "More" menu (and works from there), and the page never scrolls sideways; at 1280x720 and
//    3840x2160 the full bar shows. A speaker view of 8 and of 25 tiles (extra tiles made by the
//    page's own participant code) and Alice's shared screen stay inside the stage, clear of the
//    header and the controls, at phone and desk sizes.
// 2. Hosts: see the second test below.
//
//   HUDDLE_BIN=target/release/huddle node --test tests/e2e/ui.test.mjs
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import {
  ROOT, CHROMIUM_ARGS, MEDIA_TIMEOUT_MS, note, waitFor, startServer, openParticipant, remoteVideos, isPlaying, cleanup, serverLogTail,
} from './harness.mjs';

// getDisplayMedia without a picker: Chromium captures the (virtual) screen by itself.
CHROMIUM_ARGS.push('--auto-select-desktop-capture-source=Entire screen', '--enable-usermedia-screen-capturing');

after(cleanup);

const ctx = { base: null, room: null, alice: null, bob: null };

// The screenshot gallery in docs/screenshots/ (docs/web-client.md): written when E2E_GALLERY=1,
// so that ordinary runs leave the tree clean.
async function shot(page, name) {
  if (process.env.E2E_GALLERY !== '1') return;
  await page.screenshot({ path: path.join(ROOT, 'docs', 'screenshots', `${name}.png`) });
}

async function join(p, url) {
  await p.page.goto(url, { waitUntil: 'load', timeout: 15_000 });
  await p.page.waitForSelector('[data-testid="name"]', { state: 'visible' });
  await p.page.fill('[data-testid="name"]', p.name);
  await p.page.click('[data-testid="join"]');
  const s = await waitFor(`${p.name} to join`, () => p.page.evaluate(() => ({ state: window.huddle?.state, id: window.huddle?.participantId })), (s) => s.state === 'joined' && !!s.id, { timeout: 15_000 });
  p.participantId = s.id;
}

async function ensureCall() {
  if (ctx.alice) return;
  ctx.base = await startServer();
  note(`server ready at ${ctx.base}`);
  ctx.room = `ui-${Math.random().toString(36).slice(2, 10)}`;
  ctx.alice = await openParticipant('Alice');
  ctx.bob = await openParticipant('Bob');
  await join(ctx.alice, `${ctx.base}/r/${ctx.room}`);
  await join(ctx.bob, `${ctx.base}/r/${ctx.room}`);
  await waitFor("Bob to play Alice's video", () => remoteVideos(ctx.bob), (vs) => vs.filter(isPlaying).length === 1, { timeout: MEDIA_TIMEOUT_MS, interval: 200 });
}

// Every control of the bar: where it is and whether it is reachable without scrolling.
function barState(page) {
  return page.evaluate(() => {
    const vw = window.innerWidth;
    const vh = window.innerHeight;
    const inView = (e) => {
      const r = e.getBoundingClientRect();
      return r.width > 0 && r.height > 0 && r.left >= 0 && r.top >= 0 && r.right <= vw + 0.5 && r.bottom <= vh + 0.5;
    };
    const controls = [...document.querySelectorAll('.controls-group button')].filter((b) => b.id !== 'more-button' && !b.hidden);
    return {
      vw,
      scrollWidth: document.documentElement.scrollWidth,
      bodyScrollWidth: document.body.scrollWidth,
      compact: document.querySelector('.controls').classList.contains('compact'),
      moreVisible: (() => {
        const m = document.querySelector('#more-button');
        return !!m && getComputedStyle(m).display !== 'none' && inView(m);
      })(),
      controls: controls.map((b) => ({ id: b.id, label: b.getAttribute('aria-label'), inView: getComputedStyle(b).display !== 'none' && inView(b) })),
    };
  });
}

// Opens the More menu and lists its items (the id of the button each stands for), in view or not.
async function menuItems(page) {
  await page.click('[data-testid="more"]');
  await page.waitForSelector('[data-testid="more-menu"]', { state: 'visible', timeout: 3000 });
  return page.evaluate(() => {
    const vw = window.innerWidth;
    const vh = window.innerHeight;
    return [...document.querySelectorAll('[data-testid="more-item"]')].map((i) => {
      const r = i.getBoundingClientRect();
      return { for: i.dataset.for, text: i.textContent, inView: r.width > 0 && r.left >= 0 && r.top >= 0 && r.right <= vw + 0.5 && r.bottom <= vh + 0.5 };
    });
  });
}

async function checkPhone(p, size) {
  await p.page.setViewportSize(size);
  const s = await waitFor(`${p.name}'s control bar to settle at ${size.width}x${size.height}`, () => barState(p.page), (s) => s.vw === size.width && s.compact, { timeout: 5000 });
  assert.ok(s.scrollWidth <= s.vw, `the page scrolls sideways at ${size.width} px: scrollWidth ${s.scrollWidth}`);
  assert.ok(s.bodyScrollWidth <= s.vw, `the body is wider than the window at ${size.width} px: ${s.bodyScrollWidth}`);
  assert.ok(s.moreVisible, `the More button is not in view at ${size.width} px`);
  const items = await menuItems(p.page);
  const missing = [];
  for (const c of s.controls) {
    if (c.inView) continue;
    const item = items.find((i) => i.for === c.id);
    if (!item || !item.inView) missing.push(c.id);
  }
  assert.deepEqual(missing, [], `controls neither in view nor in the More menu at ${size.width}x${size.height}: ${JSON.stringify({ controls: s.controls, items })}`);
  for (const id of ['mic-button', 'camera-button', 'chat-button', 'leave-button']) {
    assert.ok(s.controls.find((c) => c.id === id)?.inView, `${id} must stay in the bar at ${size.width} px: ${JSON.stringify(s.controls)}`);
  }
  // Esc closes the menu.
  await p.page.keyboard.press('Escape');
  await p.page.waitForSelector('[data-testid="more-menu"]', { state: 'hidden', timeout: 2000 });
  const after = await p.page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(after <= size.width, `the page scrolls sideways with the menu used: ${after}`);
  return { s, items };
}

// Visible tiles' boxes against the stage, header and controls.
function stageBounds(page) {
  return page.evaluate(async () => {
    // After the resize observers have laid the stage out for the new size.
    await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
    const box = (e) => {
      const r = e.getBoundingClientRect();
      return { top: r.top, bottom: r.bottom, left: r.left, right: r.right, width: r.width, height: r.height };
    };
    const stage = box(document.querySelector('#stage'));
    const header = box(document.querySelector('.room-header'));
    const controls = box(document.querySelector('.controls'));
    const tiles = [...document.querySelectorAll('#grid > .tile')].filter((t) => !t.hidden).map((t) => ({
      id: t.dataset.participantId, screen: t.classList.contains('screen'), focused: t.classList.contains('focused'), ...box(t),
    }));
    return { stage, header, controls, tiles, scrollWidth: document.documentElement.scrollWidth, vw: innerWidth, focus: document.querySelector('#grid').classList.contains('focus') };
  });
}

function assertInside(b, what) {
  const e = 1; // a pixel of rounding
  const bad = b.tiles.filter((t) =>
    t.width <= 0 || t.height <= 0 ||
    t.top < b.stage.top - e || t.bottom > b.stage.bottom + e || t.left < b.stage.left - e || t.right > b.stage.right + e ||
    t.top < b.header.bottom - e || t.bottom > b.controls.top + e);
  assert.deepEqual(bad, [], `${what}: tiles outside the stage or under the header/controls (stage ${JSON.stringify(b.stage)}, header bottom ${b.header.bottom}, controls top ${b.controls.top})`);
  assert.ok(b.scrollWidth <= b.vw, `${what}: the page scrolls sideways (${b.scrollWidth} > ${b.vw})`);
}

const SIZES = [
  { width: 375, height: 812 },
  { width: 360, height: 640 },
  { width: 1280, height: 720 },
  { width: 1920, height: 1080 },
  { width: 3840, height: 2160 },
];

test('layout: the control bar fits from 360 px to 4K; speaker view and screen share stay inside the stage', { timeout: 150_000 }, async () => {
  try {
    await ensureCall();
    const { alice, bob } = ctx;

    // The chat (open by default on a wide window) would cover a phone's stage in the gallery.
    for (const p of [alice, bob]) await p.page.evaluate(() => window.huddle.view.setChatOpen(false));
    // 1. The control bar.
    const full = await waitFor('the full control bar at 1280 px', () => barState(bob.page), (s) => !s.compact && s.controls.length >= 8, { timeout: 5000 });
    assert.ok(full.controls.every((c) => c.inView), `every control in view at 1280 px: ${JSON.stringify(full.controls)}`);
    for (const size of [{ width: 375, height: 812 }, { width: 360, height: 640 }]) {
      const { s, items } = await checkPhone(bob, size);
      note(`${size.width}x${size.height}: in the bar ${s.controls.filter((c) => c.inView).map((c) => c.id).join(' ')}; in the menu ${items.map((i) => i.for).join(' ')}`);
    }
    await bob.page.setViewportSize({ width: 375, height: 812 });
    await bob.page.click('[data-testid="more"]');
    await shot(bob.page, 'phone-more-menu');
    await bob.page.keyboard.press('Escape');
    // A menu item does what its button does: raise the hand from the menu at 375 px.
    await bob.page.setViewportSize({ width: 375, height: 812 });
    await bob.page.click('[data-testid="more"]');
    await bob.page.click('[data-testid="more-item"][data-for="hand-button"]');
    await alice.page.waitForSelector(`[data-participant-id="${bob.participantId}"] [data-testid="hand-badge"]:not([hidden])`, { timeout: 5000 });
    await bob.page.click('[data-testid="more"]');
    await bob.page.click('[data-testid="more-item"][data-for="hand-button"]');
    await alice.page.waitForSelector(`[data-participant-id="${bob.participantId}"] [data-testid="hand-badge"]`, { state: 'hidden', timeout: 5000 });
    note('hand raised and lowered from the More menu at 375 px');
    for (const size of [{ width: 3840, height: 2160 }, { width: 1280, height: 720 }]) {
      await bob.page.setViewportSize(size);
      const s = await waitFor(`the full bar at ${size.width} px`, () => barState(bob.page), (s) => s.vw === size.width && !s.compact, { timeout: 5000 });
      assert.ok(s.controls.every((c) => c.inView) && !s.moreVisible, `every control in the bar at ${size.width} px: ${JSON.stringify(s)}`);
    }

    // 2. Speaker view with 8 and 25 tiles: Alice's page gets extra participants through its own code.
    const addFakes = (n) => alice.page.evaluate((n) => {
      for (let i = 0; i < n; i++) window.huddle.view.participantJoined({ participant_id: `fake-${i}`, name: `Guest ${i + 1}`, audio_muted: true, video_muted: true, tracks: [] });
    }, n);
    const dropFakes = (n) => alice.page.evaluate((n) => {
      for (let i = 0; i < n; i++) window.huddle.view.participantLeft(`fake-${i}`);
    }, n);
    await addFakes(6);
    // The chat (open by default on a wide window) would cover the stage of a phone.
    await alice.page.evaluate(() => window.huddle.view.setChatOpen(false));
    for (const [size, name] of [[{ width: 1920, height: 1080 }, 'fullhd-grid-8'], [{ width: 375, height: 812 }, 'phone-grid-8']]) {
      await alice.page.setViewportSize(size);
      await stageBounds(alice.page);
      await shot(alice.page, name);
    }
    await alice.page.setViewportSize({ width: 1280, height: 720 });
    await waitFor("Alice's full control bar", () => barState(alice.page), (s) => !s.compact, { timeout: 5000 });
    await alice.page.click('[data-testid="speaker-view"]');
    for (const [count, fakes] of [[8, 6], [25, 23]]) {
      if (fakes > 6) await addFakes(fakes);
      for (const size of SIZES) {
        await alice.page.setViewportSize(size);
        const b = await waitFor(`speaker view of ${count} at ${size.width}x${size.height}`, () => stageBounds(alice.page),
          (b) => b.vw === size.width && b.focus && b.tiles.length === count && b.tiles.filter((t) => t.focused).length === 1, { timeout: 5000 });
        assertInside(b, `speaker view of ${count} at ${size.width}x${size.height}`);
        if (count === 8 && size.width === 1280) await shot(alice.page, 'laptop-speaker-8');
        if (count === 8 && size.width === 375) await shot(alice.page, 'phone-speaker-8');
        const big = b.tiles.find((t) => t.focused);
        const small = Math.max(...b.tiles.filter((t) => !t.focused).map((t) => t.width * t.height));
        assert.ok(big.width * big.height > 2 * small, `the speaker's tile must be the big one at ${size.width} px: ${big.width}x${big.height} vs ${small}`);
      }
    }
    note('speaker view of 8 and 25 inside the stage at every size');
    await alice.page.click('[data-testid="speaker-view"]');
    await dropFakes(23);

    // 3. Alice shares her screen; Bob's page shows it inside the stage at every size.
    await alice.page.setViewportSize({ width: 1280, height: 720 });
    await alice.page.click('[data-testid="screen-share"]');
    const how = await waitFor('Alice to be sharing', () => alice.page.evaluate(() => ({ sharing: !!window.huddle.call?.screenTrack, errors: window.huddle.errors })), (s) => s.sharing || s.errors.length > 0, { timeout: 10_000 });
    assert.ok(how.sharing, `screen share did not start: ${JSON.stringify(how.errors)}`);
    for (const size of SIZES) {
      await bob.page.setViewportSize(size);
      const b = await waitFor(`Bob to show Alice's screen at ${size.width}x${size.height}`, () => stageBounds(bob.page),
        (b) => b.vw === size.width && b.tiles.some((t) => t.screen && t.focused && t.height > 50), { timeout: MEDIA_TIMEOUT_MS });
      assertInside(b, `screen share at ${size.width}x${size.height}`);
      if (size.width === 1280) await shot(bob.page, 'laptop-screen-share');
      if (size.width === 375) await shot(bob.page, 'phone-screen-share');
    }
    await waitFor('the shared screen to play at Bob', () => bob.page.evaluate(() => document.querySelector('[data-testid="screen-tile"] video')?.videoWidth || 0), (w) => w > 0, { timeout: MEDIA_TIMEOUT_MS });
    note('the shared screen stays inside the stage at every size');
    await alice.page.click('[data-testid="screen-share"]');
    await bob.page.waitForSelector('[data-testid="screen-tile"]', { state: 'detached', timeout: 10_000 }).catch(() => {});
    await bob.page.setViewportSize({ width: 1280, height: 720 });

    for (const p of [alice, bob]) {
      assert.deepEqual(await p.page.evaluate(() => window.huddle.errors), [], `${p.name} reported errors`);
      assert.deepEqual(p.pageErrors, [], `${p.name} had page errors`);
    }
  } catch (err) {
    console.log('server log tail:\n' + serverLogTail());
    throw err;
  }
});

// Connection quality on a clean loopback call: every tile's dot (the server's verdict, from
// loss, round trip and jitter judged per media kind) is "good" on both pages, and the dot's
// popover shows the page's own measurements.
test('connection quality: good on every tile of a clean call; the popover shows round trip, loss, bitrate, resolution, fps', { timeout: 90_000 }, async () => {
  try {
    await ensureCall();
    const { alice, bob } = ctx;
    const dots = (p) => p.page.evaluate(() => [...document.querySelectorAll('#grid > .tile:not(.screen)')].map((t) => ({ id: t.dataset.participantId, q: t.querySelector('[data-testid="quality"]:not([hidden])')?.dataset.quality || null })));
    // The layout test before this one shared a 1080p screen and resized the pages up to 4K on
    // a busy 2-core machine: a verdict covering that (the server judges the last 5 s) may be
    // fair. So: every tile good within 30 s, then good over the next two verdicts.
    for (const p of [alice, bob]) {
      await waitFor(`${p.name}'s tiles all to show "good"`, () => dots(p), (d) => d.length === 2 && d.every((x) => x.q === 'good'), { timeout: 30_000, interval: 500 });
    }
    // And it stays good over the next verdicts (the server sends one every 5 s on a change).
    const until = Date.now() + 11_000;
    while (Date.now() < until) {
      for (const p of [alice, bob]) {
        const d = await dots(p);
        assert.ok(d.every((x) => x.q === 'good'), `${p.name}: a false alarm on a clean link: ${JSON.stringify(d)}`);
      }
      await new Promise((r) => setTimeout(r, 500));
    }
    note('connection quality good on every tile of both pages');

    await alice.page.click(`[data-testid="tile"][data-participant-id="${bob.participantId}"] [data-testid="quality"]`);
    await alice.page.waitForSelector('[data-testid="stats-popover"]', { state: 'visible', timeout: 3000 });
    const stats = await waitFor('the popover to show measurements', () => alice.page.evaluate(() => {
      const v = (id) => document.querySelector(`[data-testid="${id}"] dd`)?.textContent || '';
      return { rtt: v('stats-rtt'), lossA: v('stats-loss-audio'), lossV: v('stats-loss-video'), bitrate: v('stats-bitrate'), res: v('stats-resolution'), fps: v('stats-fps') };
    }), (s) => /\d+ ms/.test(s.rtt) && /%/.test(s.lossA) && /%/.test(s.lossV) && parseInt(s.bitrate, 10) > 0 && /\d+×\d+/.test(s.res) && parseInt(s.fps, 10) > 0, { timeout: 10_000, interval: 500 });
    note(`popover for Bob at Alice: ${JSON.stringify(stats)}`);
    await alice.page.keyboard.press('Escape');
    await alice.page.waitForSelector('[data-testid="stats-popover"]', { state: 'hidden', timeout: 2000 });
  } catch (err) {
    console.log('server log tail:\n' + serverLogTail());
    throw err;
  }
});

// Pinning and keyboard shortcuts: Alice pins Bob's tile, which stays large (over speaker
// updates and a change of window size) until she unpins it; `?` lists the shortcuts, Esc closes
// the list, C opens the chat and H raises the hand.
test('a pinned tile stays large; keyboard shortcuts and their list; the microphone meter', { timeout: 60_000 }, async () => {
  try {
    await ensureCall();
    const { alice, bob } = ctx;
    await alice.page.setViewportSize({ width: 1280, height: 720 });
    const bobTile = `[data-testid="tile"][data-participant-id="${bob.participantId}"]`;
    const sizes = () => alice.page.evaluate((sel) => {
      const b = document.querySelector(sel).getBoundingClientRect();
      const s = document.querySelector('[data-testid="self-tile"]').getBoundingClientRect();
      return { bob: b.width * b.height, self: s.width * s.height, pinned: document.querySelector(sel).classList.contains('pinned') };
    }, bobTile);
    await alice.page.hover(bobTile);
    await alice.page.click(`${bobTile} [data-testid="pin"]`);
    for (const [i, size] of [{ width: 1280, height: 720 }, { width: 375, height: 812 }, { width: 1280, height: 720 }].entries()) {
      await alice.page.setViewportSize(size);
      const s = await waitFor(`Bob's pinned tile to be large at ${size.width} px`, sizes, (s) => s.pinned && s.bob > 2 * s.self, { timeout: 5000 });
      if (i === 0) await new Promise((r) => setTimeout(r, 3000)); // speaker updates come and go
      const again = await sizes();
      assert.ok(again.pinned && again.bob > 2 * again.self, `the pinned tile must stay large: ${JSON.stringify({ s, again })}`);
    }
    await alice.page.click(`${bobTile} [data-testid="pin"]`);
    await waitFor('the grid back after unpinning', sizes, (s) => !s.pinned && s.bob < 1.5 * s.self, { timeout: 5000 });
    note('a pinned tile stayed large; unpinned, the grid is back');

    // Shortcuts: ? opens the list (Esc closes it), C toggles the chat, H the hand.
    await bob.page.click('#stage');
    await bob.page.keyboard.press('Shift+Slash');
    await bob.page.waitForSelector('[data-testid="shortcuts"]', { state: 'visible', timeout: 3000 });
    const listed = await bob.page.$$eval('[data-testid="shortcut"]', (els) => els.map((e) => e.textContent));
    assert.ok(listed.length >= 9, `shortcut list: ${JSON.stringify(listed)}`);
    await bob.page.keyboard.press('Escape');
    await bob.page.waitForSelector('[data-testid="shortcuts"]', { state: 'hidden', timeout: 2000 });
    const chatBefore = await bob.page.getAttribute('#chat-button', 'aria-pressed');
    if (chatBefore === 'true') await shot(bob.page, 'laptop-chat');
    await bob.page.keyboard.press('c');
    await waitFor('C to toggle the chat', () => bob.page.getAttribute('#chat-button', 'aria-pressed'), (v) => v !== chatBefore, { timeout: 2000 });
    if (chatBefore === 'false') await shot(bob.page, 'laptop-chat');
    await bob.page.keyboard.press('c');
    await bob.page.click('#stage');
    await bob.page.keyboard.press('h');
    await alice.page.waitForSelector(`${bobTile} [data-testid="hand-badge"]:not([hidden])`, { timeout: 5000 });
    await waitFor("Bob's own page to show his hand up", () => bob.page.evaluate(() => window.huddle.mod.myHand), Boolean, { timeout: 5000 });
    await bob.page.keyboard.press('h');
    await waitFor("H again to lower Bob's hand", () => bob.page.evaluate(() => ({ up: window.huddle.mod.myHand, focus: document.activeElement?.id || document.activeElement?.tagName })), (s) => !s.up, { timeout: 5000 });
    await alice.page.waitForSelector(`${bobTile} [data-testid="hand-badge"]`, { state: 'hidden', timeout: 5000 });
    note('shortcuts: ?, Esc, C, H work');
    // The microphone meter: the fake microphone beeps, so the ring on the button moves.
    const level = await waitFor("Bob's microphone level on his button", () => bob.page.evaluate(() => Number(document.querySelector('#mic-button').style.getPropertyValue('--level') || 0)), (l) => l > 0.05, { timeout: 10_000, interval: 100 });
    note(`microphone level shown: ${level}`);
  } catch (err) {
    console.log('server log tail:\n' + serverLogTail());
    throw err;
  }
});

// Accessibility: axe-core finds no serious or critical violation on the landing page, the join
// page and the meeting (with the participants panel, the More menu and the connection popover
// open in turn).
const AXE = readFileSync(path.join(ROOT, 'node_modules/axe-core/axe.min.js'), 'utf8');

async function axeViolations(page, what) {
  // Not addScriptTag: the page's content security policy (script-src 'self') refuses inline
  // scripts, as it should; evaluating through the DevTools protocol is not a page script.
  if (!(await page.evaluate(() => typeof window.axe === 'object'))) await page.evaluate(AXE);
  const res = await page.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }));
  const bad = res.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  return bad.map((v) => ({ where: what, id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.slice(0, 3).map((n) => n.target.join(' ')) }));
}

test('accessibility: no serious or critical axe-core violation on the landing, join and meeting pages', { timeout: 90_000 }, async () => {
  try {
    await ensureCall();
    const { alice, base } = ctx;
    const found = [];
    const page = await alice.page.context().newPage();
    await page.goto(`${base}/`, { waitUntil: 'load' });
    await page.waitForSelector('[data-testid="room-input"]', { state: 'visible' });
    found.push(...(await axeViolations(page, 'landing')));
    assert.ok(await page.isVisible('#landing main'), 'the landing page has a main landmark');
    await page.goto(`${base}/r/axe-${Math.random().toString(36).slice(2, 8)}`, { waitUntil: 'load' });
    await page.waitForSelector('[data-testid="name"]', { state: 'visible' });
    found.push(...(await axeViolations(page, 'join')));
    assert.ok(await page.isVisible('#join main'), 'the join page has a main landmark');
    // The speaker picker and its test sound.
    const speakers = await page.$$eval('[data-testid="speaker-select"] option', (os) => os.length);
    assert.ok(speakers >= 1, 'the speaker picker lists an output');
    await page.click('[data-testid="speaker-test"]');
    await waitFor('the test sound to play', () => page.evaluate(() => {
      const a = document.querySelector('[data-testid="speaker-test-audio"]');
      return { t: a.currentTime, paused: a.paused, err: a.error && a.error.code };
    }), (s) => s.t > 0.1, { timeout: 5000 });
    await page.close();
    await alice.page.setViewportSize({ width: 1280, height: 720 });
    // Two more tiles through the page's own code: one muted with camera off and a raised hand.
    await alice.page.evaluate(() => {
      window.huddle.view.participantJoined({ participant_id: 'axe-1', name: 'Muted Guest', audio_muted: true, video_muted: true, tracks: [] });
      window.huddle.mod.setHand('axe-1', true);
      window.huddle.view.participantJoined({ participant_id: 'axe-2', name: 'Guest', tracks: [] });
    });
    found.push(...(await axeViolations(alice.page, 'meeting')));
    await alice.page.click('[data-testid="people-toggle"]');
    found.push(...(await axeViolations(alice.page, 'meeting with the participants panel')));
    await alice.page.keyboard.press('Escape');
    await alice.page.waitForSelector('[data-testid="people-panel"]', { state: 'hidden', timeout: 2000 });
    await alice.page.setViewportSize({ width: 375, height: 812 });
    await alice.page.waitForSelector('[data-testid="more"]', { state: 'visible', timeout: 5000 });
    await alice.page.click('[data-testid="more"]');
    found.push(...(await axeViolations(alice.page, 'meeting at 375 px with the More menu')));
    await alice.page.keyboard.press('Escape');
    await alice.page.setViewportSize({ width: 1280, height: 720 });
    await alice.page.evaluate(() => {
      window.huddle.mod.setHand('axe-1', false);
      for (const id of ['axe-1', 'axe-2']) window.huddle.view.participantLeft(id);
    });
    assert.deepEqual(found, [], `axe-core violations: ${JSON.stringify(found, null, 1)}`);
    note('axe-core: no serious or critical violation on landing, join and meeting pages');
  } catch (err) {
    console.log('server log tail:\n' + serverLogTail());
    throw err;
  }
});

// Friendly pages and names: bad room names and unknown paths get the page (status 404), which
// says what is wrong; /r/NAME/ goes to /r/NAME; a room name in another script gets its
// URL-safe form ("xn--" Punycode) and is shown as typed; a plain page in an end-to-end
// encrypted room is told to add the passphrase.
test('friendly pages: bad room names, unknown paths, names in any language, the E2EE passphrase hint', { timeout: 60_000 }, async () => {
  try {
    await ensureCall();
    const { alice, bob, base } = ctx;
    for (const p of ['/r/bad%20room', `/r/${'x'.repeat(65)}`, '/nope', '/r/room/extra']) {
      const res = await fetch(`${base}${p}`);
      const body = await res.text();
      assert.equal(res.status, 404, `${p}: status`);
      assert.match(res.headers.get('content-type') || '', /text\/html/, `${p}: an HTML page, not JSON`);
      assert.match(body, /<html/i, `${p}: the page`);
    }
    const api = await fetch(`${base}/api/nope`);
    assert.equal(api.status, 404);
    assert.match(api.headers.get('content-type') || '', /json/, '/api/ stays JSON');
    const slash = await fetch(`${base}/r/some-room/?lang=de`, { redirect: 'manual' });
    assert.equal(slash.status, 308);
    assert.equal(slash.headers.get('location'), '/r/some-room?lang=de');

    const page = await alice.page.context().newPage();
    await page.goto(`${base}/nope`, { waitUntil: 'load' });
    await page.waitForSelector('[data-testid="room-input"]', { state: 'visible' });
    assert.match(await page.textContent('[data-testid="banner"]'), /no page at this address/i);
    await page.goto(`${base}/r/bad%3Croom%3E`, { waitUntil: 'load' });
    await page.waitForSelector('[data-testid="room-input"]', { state: 'visible' });
    assert.match(await page.textContent('[data-testid="banner"]'), /room name is not valid/i);
    // A name in another script, typed on the landing page and into the address bar.
    await page.goto(`${base}/`, { waitUntil: 'load' });
    await page.fill('[data-testid="room-input"]', '项目周会');
    await Promise.all([page.waitForURL(/\/r\/xn--/), page.click('[data-testid="go"]')]);
    assert.equal(new URL(page.url()).pathname, '/r/xn--6oq12ksw9amb2a');
    await page.waitForSelector('[data-testid="name"]', { state: 'visible' });
    assert.equal(await page.textContent('#join-room-name'), '项目周会');
    await page.goto(`${base}/r/${encodeURIComponent('café')}`, { waitUntil: 'load' });
    await page.waitForURL(/\/r\/xn--caf-dma$/);
    await page.waitForSelector('[data-testid="name"]', { state: 'visible' });
    assert.equal(await page.textContent('#join-room-name'), 'café');
    await page.close();
    note('bad names and unknown paths get the page with a message; names in any script work');

    // An `e2ee1:` message (what an encrypted client sends) reaches Bob's plain page: he is
    // told the call is end-to-end encrypted and offered the passphrase screen.
    await alice.page.evaluate(() => window.huddle.call.send({ type: 'chat', text: 'e2ee1:AAAA' }));
    await bob.page.waitForSelector('[data-testid="e2ee-plain"]', { state: 'visible', timeout: 5000 });
    assert.match(await bob.page.textContent('[data-testid="e2ee-plain"]'), /end-to-end encrypted: enter the passphrase/);
    await bob.page.keyboard.press('Escape');
    await bob.page.waitForSelector('[data-testid="e2ee-plain"]', { state: 'hidden', timeout: 2000 });
    assert.equal(await alice.page.isVisible('[data-testid="e2ee-plain"]'), false, "the sender's own message does not raise the hint");
    note('a plain page in an encrypted room is told to enter the passphrase');
  } catch (err) {
    console.log('server log tail:\n' + serverLogTail());
    throw err;
  }
});

// Hosts: Alice opened the room by link first, so she hosts (local mode); Bob does not. From
// her participants panel she mutes Bob and stops his video, turns the lobby on, removes him;
// Bob's rejoin waits in the lobby until Alice admits him; she makes him a host; her invite link
// carries a signed invite; she locks the room and ends the meeting for all.
test('hosts: the first by link hosts; mute, stop video, spotlight, lobby, remove, admit, make host, lock, end from the page', { timeout: 120_000 }, async () => {
  try {
    await ensureCall();
    const { alice, bob, base, room } = ctx;
    await alice.page.setViewportSize({ width: 1280, height: 720 });
    await bob.page.setViewportSize({ width: 1280, height: 720 });
    await waitFor('Alice to be the host, Bob not', () => Promise.all([alice, bob].map((p) => p.page.evaluate(() => !!window.huddle.host?.myHost))), ([a, b]) => a && !b, { timeout: 5000 });
    await alice.page.click('[data-testid="people-toggle"]');
    await alice.page.waitForSelector('[data-testid="host-controls"]', { state: 'visible', timeout: 3000 });
    await bob.page.click('[data-testid="people-toggle"]');
    await bob.page.waitForSelector('[data-testid="people-panel"]', { state: 'visible', timeout: 3000 });
    assert.equal(await bob.page.isVisible('[data-testid="host-controls"]'), false, 'Bob (no host) must not see host controls');
    assert.equal(await bob.page.locator('[data-testid="host-remove"]').count(), 0, 'Bob (no host) must not see per-person actions');
    assert.ok(await bob.page.isVisible(`[data-testid="person"][data-participant-id="${alice.participantId}"] [data-testid="host-badge"]`), "Bob's list marks Alice as host");
    // A non-host's moderate is refused by the server.
    await bob.page.evaluate((id) => window.huddle.call.send({ type: 'moderate', participant_id: id, action: 'remove', request_id: 'not-host' }), alice.participantId);
    await waitFor("the server to refuse Bob's moderate", () => bob.page.evaluate(() => window.huddle.trace.filter((e) => e.dir === 'in' && e.type === 'error').map((e) => e.code)), (codes) => codes.includes('forbidden'), { timeout: 5000 });
    await bob.page.evaluate(() => { window.huddle.call.lastError = null; window.huddle.errors.length = 0; });
    assert.equal(await alice.page.evaluate(() => window.huddle.state), 'joined', 'Alice must still be in the room');

    const person = `[data-testid="person"][data-participant-id="${bob.participantId}"]`;
    const bobTile = `[data-testid="tile"][data-participant-id="${bob.participantId}"]`;
    // Mute and stop video.
    await shot(alice.page, 'laptop-host-panel');
    await alice.page.click(`${person} [data-testid="host-mute"]`);
    await waitFor("Bob's microphone to be muted by the host", () => bob.page.evaluate(() => window.huddle.audioMuted), Boolean, { timeout: 5000 });
    await alice.page.waitForSelector(`${bobTile} .mic-badge:not([hidden])`, { timeout: 5000 });
    await alice.page.click(`${person} [data-testid="host-stop-video"]`);
    await waitFor("Bob's camera to be stopped by the host", () => bob.page.evaluate(() => window.huddle.videoMuted), Boolean, { timeout: 5000 });
    await alice.page.waitForSelector(`${bobTile} .cam-badge:not([hidden])`, { timeout: 5000 });
    note('Alice muted Bob and stopped his video from the page');

    // Spotlight Bob for everyone: the server tells the room (Bob's page too), and Alice's page
    // shows his tile large, as a pin; taking it away unpins it.
    const spot = () => alice.page.evaluate((sel) => {
      const b = document.querySelector(sel).getBoundingClientRect();
      const s = document.querySelector('[data-testid="self-tile"]').getBoundingClientRect();
      return { pinned: document.querySelector(sel).classList.contains('pinned'), big: b.width * b.height > 2 * s.width * s.height };
    }, bobTile);
    await alice.page.click(`${person} [data-testid="host-spotlight"]`);
    await waitFor("Bob's tile in the spotlight on Alice's page", spot, (s) => s.pinned && s.big, { timeout: 5000 });
    await waitFor("Bob's page to hear of the spotlight", () => bob.page.evaluate(() => window.huddle.host?.spotlightId), (id) => id === bob.participantId, { timeout: 5000 });
    await alice.page.click(`${person} [data-testid="host-unspotlight"]`);
    await waitFor('the spotlight gone on both pages', () => Promise.all([spot(), bob.page.evaluate(() => window.huddle.host?.spotlightId)]), ([s, id]) => !s.pinned && id === null, { timeout: 5000 });
    note('Alice put Bob in the spotlight for everyone and took him out');

    // Lobby on: everyone is told.
    await alice.page.click('label:has([data-testid="host-lobby"])');
    await waitFor('the lobby to be on for both', () => Promise.all([alice, bob].map((p) => p.page.evaluate(() => window.huddle.host?.flags.lobby))), (v) => v.every(Boolean), { timeout: 5000 });

    // Remove Bob: his page says so.
    await alice.page.click(`${person} [data-testid="host-remove"]`);
    await bob.page.waitForSelector('#left:not([hidden])', { timeout: 10_000 });
    assert.match(await bob.page.textContent('#left-reason'), /removed/i);
    await alice.page.waitForSelector(bobTile, { state: 'detached', timeout: 10_000 });
    note('Alice removed Bob');

    // Bob rejoins: the lobby holds him until Alice admits him.
    await Promise.all([bob.page.waitForNavigation({ waitUntil: 'load' }), bob.page.click('[data-testid="rejoin"]')]);
    await bob.page.waitForSelector('[data-testid="name"]', { state: 'visible' });
    await bob.page.fill('[data-testid="name"]', 'Bob');
    await bob.page.click('[data-testid="join"]');
    await bob.page.waitForSelector('[data-testid="lobby"]', { state: 'visible', timeout: 10_000 });
    // Denied first: Bob's page says so, with no Rejoin.
    await alice.page.waitForSelector('[data-testid="knock"]', { state: 'visible', timeout: 10_000 });
    await alice.page.click('[data-testid="knock-deny"]');
    await bob.page.waitForSelector('#left:not([hidden])', { timeout: 10_000 });
    assert.match(await bob.page.textContent('#left-title'), /not let in/i);
    assert.equal(await bob.page.isVisible('[data-testid="rejoin"]'), false, 'no Rejoin after a denial');
    note('Bob was denied at the lobby and told so');
    // He opens the link again and is admitted.
    await bob.page.goto(`${base}/r/${room}`, { waitUntil: 'load' });
    await bob.page.waitForSelector('[data-testid="name"]', { state: 'visible' });
    await bob.page.fill('[data-testid="name"]', 'Bob');
    await bob.page.click('[data-testid="join"]');
    await bob.page.waitForSelector('[data-testid="lobby"]', { state: 'visible', timeout: 10_000 });
    await alice.page.waitForSelector('[data-testid="knock"]', { state: 'visible', timeout: 10_000 });
    await alice.page.click('[data-testid="knock-admit"]');
    const back = await waitFor('Bob to be admitted', () => bob.page.evaluate(() => ({ state: window.huddle.state, id: window.huddle.participantId })), (s) => s.state === 'joined' && !!s.id, { timeout: 10_000 });
    bob.participantId = back.id;
    note('Bob waited in the lobby and was admitted');

    // Make Bob a host: he gets the controls.
    const person2 = `[data-testid="person"][data-participant-id="${bob.participantId}"]`;
    await alice.page.waitForSelector(`${person2} [data-testid="host-make-host"]`, { timeout: 10_000 });
    await alice.page.click(`${person2} [data-testid="host-make-host"]`);
    await waitFor('Bob to become a host', () => bob.page.evaluate(() => !!window.huddle.host?.myHost), Boolean, { timeout: 5000 });

    // A host's invite link carries a signed invite that /api/token accepts.
    await alice.page.click('[data-testid="invite"]');
    const link = await waitFor("Alice's invite link", () => alice.page.evaluate(() => window.huddle.lastInvite || null), Boolean, { timeout: 5000 });
    const invite = new URL(link).searchParams.get('invite');
    assert.ok(invite && invite.split('.').length === 3, `the invite link has no signed invite: ${link}`);
    const res = await fetch(`${base}/api/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ room, name: 'Invited', invite }) });
    assert.equal(res.status, 200, 'the invite should get a guest token');

    // Lock: a newcomer is refused.
    await alice.page.click('label:has([data-testid="host-lock"])');
    await waitFor('the room to be locked', () => alice.page.evaluate(() => window.huddle.host?.flags.locked), Boolean, { timeout: 5000 });
    const refused = await joinWs(alice.page, room);
    assert.equal(refused.code, 'room_locked', `a newcomer of a locked room: ${JSON.stringify(refused)}`);
    note('invite link made; the locked room refused a newcomer');

    // End for all.
    alice.page.once('dialog', (d) => d.accept());
    await alice.page.click('[data-testid="host-end"]');
    for (const p of [alice, bob]) {
      await p.page.waitForSelector('#left:not([hidden])', { timeout: 10_000 });
      assert.match(await p.page.textContent('#left-reason'), /ended/i, `${p.name}'s page after the host ended the meeting`);
    }
    for (const p of [alice, bob]) assert.deepEqual(p.pageErrors, [], `${p.name} had page errors`);
  } catch (err) {
    console.log('server log tail:\n' + serverLogTail());
    throw err;
  }
});

// A newcomer's WebSocket join, from a page of the server's origin: the first error, joined or
// lobby it gets.
function joinWs(page, room) {
  return page.evaluate(async (room) => {
    const res = await fetch('/api/token', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ room, name: 'Late' }) });
    const { token } = await res.json();
    const ws = new WebSocket(`${location.origin.replace(/^http/, 'ws')}/ws`);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve({ type: 'timeout' }), 5000);
      ws.onopen = () => ws.send(JSON.stringify({ type: 'join', protocol: 1, token }));
      ws.onmessage = (e) => {
        const m = JSON.parse(e.data);
        if (['error', 'joined', 'lobby'].includes(m.type)) {
          clearTimeout(timer);
          ws.close();
          resolve(m);
        }
      };
      ws.onerror = () => resolve({ type: 'socket_error' });
    });
  }, room);
}
