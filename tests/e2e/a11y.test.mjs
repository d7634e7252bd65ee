// Browser end-to-end test of the meeting's popovers and dialogs from the keyboard, and of the
// chat box's placeholder:
//
// 1. Each popover (participants, the reaction picker of the bar and of a chat message, the
//    More menu on a phone, effects, the connection popover) and dialog (the list of
//    shortcuts), opened from the keyboard: the focus goes into it, Tab and Shift+Tab go round
//    inside it, Esc closes it and the focus is back on the control that opened it.
// 2. The chat box's placeholder fits, in every language: the input does not scroll and the
//    placeholder's text is no wider than the box.
//
//   HUDDLE_BIN=target/release/huddle node --test tests/e2e/a11y.test.mjs
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { ROOT, MEDIA_TIMEOUT_MS, note, waitFor, startServer, openParticipant, joinRoom, remoteVideos, isPlaying, openChatIfClosed, cleanup, serverLogTail, participants } from './harness.mjs';

after(cleanup);

const ctx = {};

async function ensureCall() {
  if (ctx.alice) return;
  ctx.base = await startServer();
  const room = `a11y-${Math.random().toString(36).slice(2, 10)}`;
  ctx.alice = await openParticipant('Alice');
  ctx.bob = await openParticipant('Bob');
  await joinRoom(ctx.alice, `${ctx.base}/r/${room}`);
  await joinRoom(ctx.bob, `${ctx.base}/r/${room}`);
  await waitFor("Alice to play Bob's video", () => remoteVideos(ctx.alice), (vs) => vs.filter(isPlaying).length === 1, { timeout: MEDIA_TIMEOUT_MS, interval: 200 });
}

// Where the focus is: a description, and whether it is inside `sel`.
const focusState = (page, sel) => page.evaluate((sel) => {
  const a = document.activeElement;
  const box = document.querySelector(sel);
  return {
    inside: !!(box && a && box.contains(a)),
    open: !!(box && !box.closest('[hidden]') && box.getClientRects().length),
    at: a ? `${a.tagName.toLowerCase()}${a.id ? `#${a.id}` : ''}${a.dataset?.testid ? `[${a.dataset.testid}]` : ''}${a.dataset?.for ? `(${a.dataset.for})` : a.tagName === 'BUTTON' && !a.id ? `(${a.textContent.trim().slice(0, 12)})` : ''}` : null,
  };
}, sel);

// Opens a popover with Enter on `opener` (focused by the page), checks that the focus goes in
// and stays in over Tab and Shift+Tab, then closes it with Esc and checks the focus is back.
// `stops`: how many controls Tab must visit in it (at least).
async function checkPopover(page, { name, opener, popover, tabs = 8, stops = 1 }) {
  await page.focus(opener);
  await page.keyboard.press('Enter');
  await page.waitForSelector(popover, { state: 'visible', timeout: 3000 });
  const first = await waitFor(`${name}: the focus to go into it`, () => focusState(page, popover), (s) => s.inside, { timeout: 2000, interval: 100 });
  const seen = new Set([first.at]);
  for (const key of ['Tab', 'Shift+Tab']) {
    for (let i = 0; i < tabs; i++) {
      await page.keyboard.press(key);
      const s = await focusState(page, popover);
      assert.ok(s.open && s.inside, `${name}: ${key} #${i + 1} took the focus out, to ${s.at}`);
      seen.add(s.at);
    }
  }
  assert.ok(seen.size >= stops, `${name}: Tab must go round its ${stops} controls, visited ${[...seen].join(', ')}`);
  await page.keyboard.press('Escape');
  await page.waitForSelector(popover, { state: 'hidden', timeout: 2000 });
  const back = await page.evaluate((sel) => document.activeElement === document.querySelector(sel), opener);
  const at = (await focusState(page, popover)).at;
  assert.ok(back, `${name}: after Esc the focus must be back on ${opener}, is on ${at}`);
  note(`${name}: focus in and kept over ${seen.size} stop(s) (${[...seen].join(', ')}); Esc closed it, focus back on its opener`);
}

test('popovers and dialogs keep the focus, close on Esc and give the focus back', { timeout: 120_000 }, async () => {
  try {
    await ensureCall();
    const { alice, bob } = ctx;
    const page = alice.page;
    await checkPopover(page, { name: 'participants', opener: '[data-testid="people-toggle"]', popover: '[data-testid="people-panel"]', stops: 4 });
    await checkPopover(page, { name: 'reactions of the bar', opener: '[data-testid="tile-react"]', popover: '.react-wrap .emoji-picker', stops: 6 });
    await checkPopover(page, { name: 'effects', opener: '[data-testid="effects"]', popover: '[data-testid="effects-popover"]', stops: 3 });
    const dot = `[data-participant-id="${bob.participantId}"] [data-testid="quality"]`;
    await page.waitForSelector(dot, { state: 'visible', timeout: 15_000 });
    await checkPopover(page, { name: 'connection', opener: dot, popover: '[data-testid="stats-popover"]', tabs: 2 });

    // A chat message's reaction picker.
    await openChatIfClosed(bob);
    await bob.page.fill('[data-testid="chat-input"]', 'hello');
    await bob.page.press('[data-testid="chat-input"]', 'Enter');
    await openChatIfClosed(alice);
    const react = '[data-testid="chat-log"] [data-testid="chat-react"]';
    await page.waitForSelector(react, { state: 'attached', timeout: 10_000 });
    await checkPopover(page, { name: 'reactions of a message', opener: react, popover: '[data-testid="chat-log"] .emoji-picker', stops: 6 });
    await page.click('#chat-close');

    // The list of shortcuts (a modal dialog), opened with `?` from the stage.
    await page.focus('[data-testid="mic"]');
    await page.keyboard.press('Shift+Slash');
    await page.waitForSelector('[data-testid="shortcuts"]', { state: 'visible', timeout: 3000 });
    for (let i = 0; i < 4; i++) {
      await page.keyboard.press('Tab');
      const s = await focusState(page, '[data-testid="shortcuts"]');
      assert.ok(s.inside, `shortcuts: Tab #${i + 1} took the focus out, to ${s.at}`);
    }
    await page.keyboard.press('Escape');
    await page.waitForSelector('[data-testid="shortcuts"]', { state: 'hidden', timeout: 2000 });
    assert.ok(await page.evaluate(() => document.activeElement?.dataset.testid === 'mic'), 'shortcuts: the focus back where it was');
    note('shortcuts: focus kept in the dialog; Esc closed it, focus back');

    // On a phone the More menu holds the secondary controls.
    await page.setViewportSize({ width: 375, height: 812 });
    await page.waitForSelector('[data-testid="more"]', { state: 'visible', timeout: 5000 });
    await checkPopover(page, { name: 'More menu at 375 px', opener: '[data-testid="more"]', popover: '[data-testid="more-menu"]', tabs: 12, stops: 4 });
    // A popover opened from the menu gives the focus back to the menu's button.
    await page.click('[data-testid="more"]');
    await page.click('[data-testid="more-item"][data-for="effects-button"]');
    await page.waitForSelector('[data-testid="effects-popover"]', { state: 'visible', timeout: 3000 });
    await page.keyboard.press('Escape');
    await page.waitForSelector('[data-testid="effects-popover"]', { state: 'hidden', timeout: 2000 });
    assert.ok(await page.evaluate(() => document.activeElement?.id === 'more-button'), 'effects from the More menu: focus back on More');
    await page.setViewportSize({ width: 1280, height: 720 });
    for (const p of participants) assert.deepEqual(p.pageErrors, [], `${p.name}: uncaught errors in the page`);
  } catch (err) {
    console.log(`--- server log ---\n${serverLogTail()}`);
    throw err;
  }
});

test('the chat box placeholder fits in every language, on a laptop and on a phone', { timeout: 60_000 }, async () => {
  try {
    await ensureCall();
    const page = ctx.alice.page;
    await openChatIfClosed(ctx.alice);
    const langs = readdirSync(path.join(ROOT, 'web', 'i18n')).filter((f) => f.endsWith('.json')).map((f) => f.replace(/\.json$/, ''));
    assert.ok(langs.length >= 6, `languages: ${langs}`);
    const bad = [];
    for (const size of [{ width: 1280, height: 720 }, { width: 375, height: 812 }, { width: 360, height: 640 }]) {
      await page.setViewportSize(size);
      await openChatIfClosed(ctx.alice);
      for (const lang of langs) {
        const r = await page.evaluate(async (lang) => {
          const text = (await (await fetch(`/assets/i18n/${lang}.json`)).json())['chat.placeholder'];
          const input = document.querySelector('[data-testid="chat-input"]');
          input.value = '';
          input.placeholder = text;
          const cs = getComputedStyle(input);
          const g = document.createElement('canvas').getContext('2d');
          g.font = `${cs.fontStyle} ${cs.fontWeight} ${cs.fontSize} ${cs.fontFamily}`;
          const room = input.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight);
          return { text, scrollWidth: input.scrollWidth, clientWidth: input.clientWidth, textWidth: Math.ceil(g.measureText(text).width), room: Math.floor(room) };
        }, lang);
        if (!(r.scrollWidth <= r.clientWidth && r.textWidth <= r.room)) bad.push({ lang, ...size, ...r });
        else if (lang === 'en') note(`${size.width} px, en: "${r.text}" ${r.textWidth} px in ${r.room} px`);
      }
    }
    assert.deepEqual(bad, [], `placeholders cut off: ${JSON.stringify(bad)}`);
    // Back to the page's own language.
    await page.evaluate(() => {
      document.querySelector('[data-testid="chat-input"]').placeholder = '';
    });
    await page.setViewportSize({ width: 1280, height: 720 });
  } catch (err) {
    console.log(`--- server log ---\n${serverLogTail()}`);
    throw err;
  }
});
