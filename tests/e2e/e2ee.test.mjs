// Browser end-to-end test of end-to-end encrypted calls (#e2ee in the room URL): two
// participants with the same passphrase see each other's video (decrypted after the SFU
// forwarded it); a third with another passphrase decodes no frame and is told so; chat between
// the first two is readable while the server stores only ciphertext.
//
//   HUDDLE_BIN=target/release/huddle node --test tests/e2e/e2ee.test.mjs
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  MEDIA_TIMEOUT_MS, note, waitFor, startServer, openParticipant, remoteVideos, isPlaying, openChatIfClosed, cleanup, serverLogTail, participants, server, metricValue,
} from './harness.mjs';

// The server writes every published frame it sees to this file (media.capture_path, a
// debugging option): what an operator could see.
const CAPTURE = path.join(tmpdir(), `huddle-e2ee-capture-${process.pid}.jsonl`);
process.env.HUDDLE_MEDIA__CAPTURE_PATH = CAPTURE;
process.env.HUDDLE_MEDIA__CAPTURE_FRAMES = '5000';

after(async () => {
  await cleanup();
  rmSync(CAPTURE, { force: true });
});

// The media key a passphrase gives in a room, derived as web/e2ee.js does.
async function mediaKey(passphrase, room) {
  const enc = new TextEncoder();
  const base = await crypto.subtle.importKey('raw', enc.encode(passphrase), 'PBKDF2', false, ['deriveBits']);
  const bits = new Uint8Array(
    await crypto.subtle.deriveBits({ name: 'PBKDF2', hash: 'SHA-256', salt: enc.encode(`huddle-e2ee/v1/${room}`), iterations: 200000 }, base, 512),
  );
  return crypto.subtle.importKey('raw', bits.slice(0, 32), 'AES-GCM', false, ['decrypt']);
}

// Decrypts one captured frame (clear prefix ‖ ciphertext+tag ‖ IV(12) ‖ key id; see
// web/e2ee-worker.js), or returns null when it does not decrypt under `key`.
async function openFrame(key, codec, bytes) {
  const clear = codec === 'opus' ? 1 : (bytes[0] & 1) === 0 ? 10 : 3;
  if (bytes.length < clear + 16 + 13 || bytes[bytes.length - 1] !== 1) return null;
  const iv = bytes.subarray(bytes.length - 13, bytes.length - 1);
  try {
    const pt = await crypto.subtle.decrypt({ name: 'AES-GCM', iv, additionalData: bytes.subarray(0, clear) }, key, bytes.subarray(clear, bytes.length - 13));
    return { clear, plain: new Uint8Array(pt), sealed: bytes.subarray(clear, bytes.length - 13) };
  } catch {
    return null;
  }
}

const SECRET_TEXT = 'the launch code is 4711';

async function videoDecodeStats(p) {
  return p.page.evaluate(async () => {
    let framesDecoded = 0;
    let framesReceived = 0;
    const streams = [];
    (await window.huddle.pc.getStats()).forEach((r) => {
      if (r.type === 'inbound-rtp' && r.kind === 'video') {
        framesDecoded += r.framesDecoded || 0;
        framesReceived += r.framesReceived || 0;
        streams.push({ track: r.trackIdentifier, packets: r.packetsReceived, frames: r.framesReceived, decoded: r.framesDecoded, keyframes: r.keyFramesDecoded, pli: r.pliCount });
      }
    });
    return { framesDecoded, framesReceived, e2ee: window.huddle.e2eeStats || null, streams };
  });
}

test('same passphrase: decrypted video and chat; another passphrase: nothing, and a warning', { timeout: 115_000 }, async () => {
  try {
    const base = await startServer();
    const room = `e2ee-${Math.random().toString(36).slice(2, 10)}`;
    const people = await Promise.all([
      openParticipant('Alice'),
      openParticipant('Bob'),
      openParticipant('Carol'),
    ]);
    const [alice, bob, carol] = people;
    const passphrases = { Alice: 'correct horse battery staple', Bob: 'correct horse battery staple', Carol: 'wrong guess' };
    await Promise.all(
      people.map(async (p) => {
        await p.page.goto(`${base}/r/${room}#e2ee`, { waitUntil: 'load', timeout: 15_000 });
        await p.page.waitForSelector('[data-testid="e2ee-passphrase"]', { state: 'visible' });
        await p.page.fill('[data-testid="name"]', p.name);
        await p.page.fill('[data-testid="e2ee-passphrase"]', passphrases[p.name]);
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
      assert.ok(await p.page.isVisible('[data-testid="e2ee-pill"]'), `${p.name} sees the room is end-to-end encrypted`);
    }
    note('three joined', await alice.page.evaluate(() => typeof window.RTCRtpScriptTransform));

    // Alice and Bob see each other's video playing: it was decrypted.
    for (const [p, other] of [[alice, bob], [bob, alice]]) {
      await waitFor(
        `${p.name} to play ${other.name}'s decrypted video`,
        async () => ({ videos: await remoteVideos(p), stats: await videoDecodeStats(p) }),
        (s) => s.videos.some((v) => v.participantId === other.participantId && isPlaying(v)),
        { timeout: 2 * MEDIA_TIMEOUT_MS },
      );
    }
    for (const p of [alice, bob]) {
      const s = await videoDecodeStats(p);
      assert.ok(s.e2ee && s.e2ee.encrypted > 0 && s.e2ee.decrypted > 0, `${p.name} encrypts and decrypts: ${JSON.stringify(s)}`);
      assert.ok(!(await p.page.evaluate(() => window.huddle.e2eeWarned)), `${p.name} is not warned`);
    }

    // Carol (another passphrase) receives frames but decodes none, and is told.
    await waitFor(
      'Carol to be warned that nothing decrypts (banner and header pill)',
      () => carol.page.evaluate(() => ({
        banner: document.querySelector('#banner')?.hidden === false ? document.querySelector('[data-testid="banner"]').textContent : null,
        pill: document.querySelector('[data-testid="e2ee-pill"]')?.dataset.state || null,
      })),
      (s) => s.pill === 'wrong' && /passphrase/i.test(s.banner || ''),
      { timeout: MEDIA_TIMEOUT_MS },
    );
    const c = await waitFor(
      'Carol to receive video frames that do not decrypt',
      () => videoDecodeStats(carol),
      (s) => s.e2ee && s.e2ee.failed > 50,
      { timeout: MEDIA_TIMEOUT_MS },
    );
    assert.equal(c.framesDecoded, 0, `Carol decodes no video frame: ${JSON.stringify(c)}`);
    assert.equal(c.e2ee.decrypted, 0, `Carol decrypts nothing: ${JSON.stringify(c)}`);
    const carolVideos = await remoteVideos(carol);
    assert.ok(!carolVideos.some(isPlaying), `no video plays for Carol: ${JSON.stringify(carolVideos)}`);

    // What the server saw of Alice's and Bob's media: every frame is sealed under their room
    // key (it opens with it, and not with Carol's), and no plaintext frame went through it.
    const frames = readFileSync(CAPTURE, 'utf8').trim().split('\n').map((l) => JSON.parse(l))
      .filter((f) => f.room === room && [alice.participantId, bob.participantId].includes(f.participant) && !f.truncated);
    const right = await mediaKey(passphrases.Alice, room);
    const wrong = await mediaKey(passphrases.Carol, room);
    const seen = { opus: 0, vp8: 0 };
    for (const f of frames) {
      if (!(f.codec in seen) || seen[f.codec] >= 40) continue;
      const bytes = Uint8Array.from(Buffer.from(f.data, 'hex'));
      const opened = await openFrame(right, f.codec, bytes);
      assert.ok(opened, `a ${f.codec} frame the server forwarded (${f.len} bytes) is not sealed under the room key: ${f.data.slice(0, 80)}`);
      // Silence under Opus DTX is a frame of a byte or two (the TOC, kept in clear): nothing to
      // leak, and an empty plaintext is "found" in any ciphertext. The check is on real frames.
      if (opened.plain.length < 16) continue;
      assert.ok(!Buffer.from(opened.sealed).includes(Buffer.from(opened.plain.subarray(0, 16))), 'the server saw ciphertext, not the frame');
      assert.equal(await openFrame(wrong, f.codec, bytes), null, 'another passphrase does not open it');
      seen[f.codec] += 1;
    }
    note(`server capture: ${frames.length} frames of Alice and Bob; checked ${seen.opus} Opus and ${seen.vp8} VP8 frames: all sealed under the room key`);
    assert.ok(seen.opus >= 20 && seen.vp8 >= 20, `enough captured frames to check: ${JSON.stringify(seen)}`);

    // Chat: Alice to Bob is readable; Carol sees an undecryptable message; the server has
    // only ciphertext.
    await openChatIfClosed(alice);
    await alice.page.fill('[data-testid="chat-input"]', SECRET_TEXT);
    await alice.page.click('[data-testid="chat-send"]');
    await waitFor(
      'Bob to read Alice\'s message',
      () => bob.page.evaluate(() => [...document.querySelectorAll('[data-testid="chat-message"] .chat-text')].map((e) => e.textContent)),
      (texts) => texts.includes(SECRET_TEXT),
    );
    const carolTexts = await waitFor(
      'Carol to get the message, undecrypted',
      () => carol.page.evaluate(() => [...document.querySelectorAll('.chat-message.undecryptable .chat-text')].map((e) => e.textContent)),
      (texts) => texts.length === 1,
    );
    assert.ok(!carolTexts.includes(SECRET_TEXT));

    const db = path.join(server.dataDir, 'chat.db');
    const raw = ['', '-wal'].map((s) => (existsSync(db + s) ? readFileSync(db + s).toString('latin1') : '')).join('');
    assert.ok(!raw.includes(SECRET_TEXT), 'the plaintext is nowhere in the database files');
    let stored;
    try {
      stored = execFileSync('sqlite3', [db, 'SELECT text FROM chat ORDER BY id DESC LIMIT 1'], { encoding: 'utf8' }).trim();
    } catch {
      // No sqlite3 here: the history in a fresh `joined` shows the same stored text.
      stored = null;
    }
    if (stored !== null) {
      note('stored chat text:', stored.slice(0, 40));
      assert.match(stored, /^e2ee1:[A-Za-z0-9+/=]+$/, 'the server stores ciphertext');
    } else {
      assert.ok(raw.includes('e2ee1:'), 'the server stores ciphertext');
    }

    // Carol's decoder, fed nothing it can decode, keeps asking for keyframes; the SFU stops
    // passing her requests on, so Alice and Bob are not flooded with keyframes.
    const held = await waitFor(
      "the SFU to hold back Carol's repeated keyframe requests",
      () => metricValue('huddle_keyframe_requests_suppressed_total'),
      (n) => n > 0,
      { timeout: 30_000, interval: 1000 },
    );
    note(`keyframe requests held back: ${held}`);
    for (const p of participants) assert.deepEqual(p.pageErrors, [], `${p.name}: uncaught errors in the page`);
  } catch (err) {
    console.log(`--- server log ---\n${serverLogTail()}`);
    for (const p of participants) {
      if (p.pageErrors.length) console.log(`${p.name} page errors:\n${p.pageErrors.join('\n')}`);
      if (p.consoleErrors.length) console.log(`${p.name} console errors:\n${p.consoleErrors.join('\n')}`);
    }
    throw err;
  }
});
