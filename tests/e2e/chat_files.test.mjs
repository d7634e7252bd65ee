// Browser end-to-end test of pictures and files in chat: one of three participants sends a
// picture, which the other two see as a server-made thumbnail and download byte for byte; a
// reaction shows as a count; a file over the size cap is refused with a clear message; the file
// routes refuse requests without a token for the room.
//
//   HUDDLE_BIN=target/release/huddle node --test tests/e2e/chat_files.test.mjs
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { note, waitFor, startServer, openParticipant, openChatIfClosed, cleanup, serverLogTail, participants } from './harness.mjs';

const CAP = 1_000_000;
const configDir = mkdtempSync(path.join(tmpdir(), 'huddle-e2e-files-'));
after(async () => {
  await cleanup();
  rmSync(configDir, { recursive: true, force: true });
});

const sha256 = (buf) => createHash('sha256').update(buf).digest('hex');

// The visible elements of the page that show `text` (innermost only): a refusal is said once.
function shownTimes(p, text) {
  return p.page.evaluate((text) => {
    const all = [...document.querySelectorAll('body *')].filter((e) => !e.closest('[hidden]') && e.getClientRects().length && e.textContent.includes(text));
    return all.filter((e) => ![...e.children].some((c) => all.includes(c))).map((e) => e.className || e.tagName);
  }, text);
}

async function joinAll(base, room, names) {
  const people = await Promise.all(names.map((n) => openParticipant(n)));
  await Promise.all(
    people.map(async (p) => {
      await p.page.goto(`${base}/r/${room}`, { waitUntil: 'load', timeout: 15_000 });
      await p.page.waitForSelector('[data-testid="name"]', { state: 'visible' });
      await p.page.fill('[data-testid="name"]', p.name);
      await p.page.click('[data-testid="join"]');
    }),
  );
  for (const p of people) {
    const s = await waitFor(
      `${p.name} to be joined`,
      () => p.page.evaluate(() => ({ state: window.huddle?.state, id: window.huddle?.participantId })),
      (s) => s.state === 'joined' && !!s.id,
      { timeout: 15_000 },
    );
    p.participantId = s.id;
    await openChatIfClosed(p);
  }
  return people;
}

test('a picture reaches two others as a thumbnail and downloads byte for byte; the cap and tokens hold', { timeout: 110_000 }, async () => {
  try {
    const cfg = path.join(configDir, 'huddle.toml');
    writeFileSync(cfg, `[chat]\nmax_upload_bytes = ${CAP}\n`);
    const base = await startServer(['--config', cfg]);
    const room = `files-${Math.random().toString(36).slice(2, 10)}`;
    const [alice, bob, carol] = await joinAll(base, room, ['Alice', 'Bob', 'Carol']);
    note('three joined');

    // A real picture, drawn in the browser: 800 x 600 PNG.
    const b64 = await alice.page.evaluate(async () => {
      const c = document.createElement('canvas');
      c.width = 800;
      c.height = 600;
      const g = c.getContext('2d');
      const grad = g.createLinearGradient(0, 0, 800, 600);
      grad.addColorStop(0, '#ff5a36');
      grad.addColorStop(1, '#2d6cdf');
      g.fillStyle = grad;
      g.fillRect(0, 0, 800, 600);
      g.fillStyle = '#fff';
      g.font = '80px sans-serif';
      g.fillText('Huddle 🎉', 120, 320);
      const blob = await new Promise((r) => c.toBlob(r, 'image/png'));
      const bytes = new Uint8Array(await blob.arrayBuffer());
      let s = '';
      for (const b of bytes) s += String.fromCharCode(b);
      return btoa(s);
    });
    const picture = Buffer.from(b64, 'base64');
    assert.ok(picture.length < CAP, `the picture (${picture.length} bytes) fits under the cap`);
    await alice.page.setInputFiles('[data-testid="chat-file"]', { name: 'sunset.png', mimeType: 'image/png', buffer: picture });

    // Bob and Carol see the thumbnail: decoded, at most 320 px.
    for (const p of [bob, carol]) {
      const thumb = await waitFor(
        `${p.name} to show the picture's thumbnail`,
        () => p.page.evaluate(() => {
          const img = document.querySelector('[data-testid="chat-thumb"]');
          return img ? { w: img.naturalWidth, h: img.naturalHeight, src: img.src.slice(0, 5), id: img.dataset.fileId } : null;
        }),
        (t) => t && t.w > 0,
        { timeout: 15_000 },
      );
      assert.equal(thumb.src, 'blob:');
      assert.ok(thumb.w <= 320 && thumb.h <= 320 && thumb.w === 320, `thumbnail is 320 px wide: ${JSON.stringify(thumb)}`);
      p.fileId = thumb.id;
    }

    // Bob downloads it through the UI (click on the thumbnail): the same bytes.
    const [download] = await Promise.all([bob.page.waitForEvent('download'), bob.page.click('[data-testid="chat-thumb"]')]);
    assert.equal(download.suggestedFilename(), 'sunset.png');
    const saved = readFileSync(await download.path());
    assert.equal(sha256(saved), sha256(picture), 'Bob downloads the picture byte for byte');
    // Carol fetches it with her token.
    const carolHash = await carol.page.evaluate(async (id) => {
      const { rich } = window.huddle;
      const res = await fetch(`${rich.base}/${id}`, { headers: rich.auth() });
      const digest = await crypto.subtle.digest('SHA-256', await res.arrayBuffer());
      return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, '0')).join('');
    }, carol.fileId);
    assert.equal(carolHash, sha256(picture), 'Carol downloads the picture byte for byte');

    // Bob reacts; Alice sees the count.
    await bob.page.hover('.chat-message[data-id] .chat-thumb-button');
    await bob.page.click('[data-testid="chat-react"]');
    await bob.page.click('.emoji-picker [data-testid="emoji"]');
    await waitFor(
      'Alice to see one 👍 under her picture',
      () => alice.page.evaluate(() => [...document.querySelectorAll('[data-testid="chat-reaction"]')].map((b) => b.textContent)),
      (r) => r.length === 1 && r[0] === '👍1',
    );

    // A file over the cap: refused with a clear message, before uploading (the client knows
    // the cap) and by the server (413) when the client does not check.
    const big = Buffer.alloc(CAP + 1000, 'a');
    await alice.page.setInputFiles('[data-testid="chat-file"]', { name: 'big.txt', mimeType: 'text/plain', buffer: big });
    let msg = await waitFor(
      'the upload box to say the file is too large',
      () => alice.page.evaluate(() => document.querySelector('[data-testid="chat-upload"]')?.dataset.error || null),
      (m) => !!m,
    );
    assert.match(msg, /big\.txt is too large: files can be at most 977 KB/);
    // Said once, in the upload box over the chat box (it was said in the banner too).
    assert.deepEqual(await shownTimes(alice, msg), ['chat-upload-name'], 'the refusal shows once (no banner repeats it)');
    await alice.page.evaluate(() => {
      window.huddle.rich.policy = null;
      delete document.querySelector('[data-testid="chat-upload"]').dataset.error;
    });
    await alice.page.setInputFiles('[data-testid="chat-file"]', { name: 'big2.txt', mimeType: 'text/plain', buffer: big });
    msg = await waitFor(
      'the server to refuse the large upload (413) with a clear message',
      () => alice.page.evaluate(() => document.querySelector('[data-testid="chat-upload"]')?.dataset.error || null),
      (m) => !!m,
    );
    assert.match(msg, /big2\.txt is too large/);
    assert.deepEqual(await shownTimes(alice, msg), ['chat-upload-name'], 'the server\'s refusal shows once');

    // Without a token for the room: 401; with another room's token: 403.
    const id = bob.fileId;
    let res = await fetch(`${base}/api/rooms/${room}/files/${id}`);
    assert.equal(res.status, 401);
    const other = await (await fetch(`${base}/api/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ room: 'elsewhere', name: 'M' }) })).json();
    res = await fetch(`${base}/api/rooms/${room}/files/${id}`, { headers: { authorization: `Bearer ${other.token}` } });
    assert.equal(res.status, 403);
    res = await fetch(`${base}/api/rooms/${room}/files/${id}/thumb`, { headers: { authorization: 'Bearer nope' } });
    assert.equal(res.status, 401);

    for (const p of participants) assert.deepEqual(p.pageErrors, [], `${p.name}: uncaught errors in the page`);
  } catch (err) {
    console.log(`--- server log ---\n${serverLogTail()}`);
    for (const p of participants) if (p.pageErrors.length) console.log(`${p.name} page errors:\n${p.pageErrors.join('\n')}`);
    throw err;
  }
});
