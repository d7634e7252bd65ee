// Browser end-to-end test of noise suppression (RNNoise in an AudioWorklet) and background blur
// (MediaPipe selfie segmentation), both vendored in web/vendor/ and served by the binary.
//
// 1. The vendored files come from the binary with their types (wasm as application/wasm) and
//    the page's content security policy lets WebAssembly compile (no JavaScript eval).
// 2. Alice turns both effects on at the join screen (remembered over a reload) and joins: her
//    senders carry the processed tracks (not the devices'), the processors keep working, and
//    Bob receives her audio (bytes keep coming) and video (frames keep decoding), blurred: his
//    picture of her is under half as sharp as her camera's own picture, side by side.
// 3. Bob turns blur on in the meeting (the Effects popover): his video sender's track is
//    replaced by the processed one (replaceTrack), Alice keeps decoding his frames and sees
//    them blurred; off again, his sender carries the camera again.
//
//   HUDDLE_BIN=target/release/huddle node --test tests/e2e/effects.test.mjs
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { statSync } from 'node:fs';
import path from 'node:path';
import { ROOT, MEDIA_TIMEOUT_MS, note, sleep, waitFor, startServer, openParticipant, remoteVideos, isPlaying, cleanup, serverLogTail, participants } from './harness.mjs';

after(cleanup);

const ctx = { base: null };

async function ensureServer() {
  if (!ctx.base) ctx.base = await startServer();
  return ctx.base;
}

// What a page publishes, against the devices' own tracks (window.huddle.effects).
function senders(p) {
  return p.page.evaluate(() => {
    const fx = window.huddle.effects;
    const out = {};
    for (const s of window.huddle.pc.getSenders()) {
      const tr = s.track;
      if (!tr || (tr.kind === 'video' && s !== window.huddle.call.publishing.video)) continue;
      out[tr.kind] = {
        id: tr.id,
        label: tr.label,
        state: tr.readyState,
        deviceId: tr.getSettings().deviceId || null,
        rawId: fx.raw[tr.kind]?.id || null,
        rawLabel: fx.raw[tr.kind]?.label || null,
        procId: fx.proc[tr.kind]?.track.id || null,
      };
    }
    return { senders: out, state: { ...fx.state }, frames: { ...fx.frames }, masks: fx.proc.video ? fx.proc.video.masks() : null };
  });
}

const processed = (s) => !!s && s.id === s.procId && s.id !== s.rawId && s.label !== s.rawLabel && s.state === 'live';

// Inbound RTP at `p`: audio bytes and video frames decoded, summed over the streams.
function inbound(p) {
  return p.page.evaluate(async () => {
    let audioBytes = 0;
    let framesDecoded = 0;
    (await window.huddle.pc.getStats()).forEach((r) => {
      if (r.type !== 'inbound-rtp') return;
      if (r.kind === 'audio') audioBytes += r.bytesReceived || 0;
      if (r.kind === 'video') framesDecoded += r.framesDecoded || 0;
    });
    return { audioBytes, framesDecoded };
  });
}

// The sharpness of a picture at `p`: how steep its edges are, as the mean of the steepest 1 %
// of the differences of each pixel to its right and lower neighbours (luma), drawn at most
// 640 px wide. Chromium's fake camera is mostly smooth colour with a few sharp edges (its
// moving disc, its frame counter), which a blur turns into ramps. `id`: a remote
// participant's tile; null: this page's own camera (the device's track, before any effect).
function sharpness(p, id) {
  return p.page.evaluate(async (id) => {
    let v;
    if (id) {
      v = document.querySelector(`[data-participant-id="${id}"] video[data-remote="1"]`);
    } else {
      if (!window.__rawVideo) {
        window.__rawVideo = document.createElement('video');
        window.__rawVideo.muted = true;
        window.__rawVideo.srcObject = new MediaStream([window.huddle.effects.raw.video]);
        await window.__rawVideo.play();
      }
      v = window.__rawVideo;
    }
    if (!v || !v.videoWidth) return null;
    const w = Math.min(640, v.videoWidth);
    const h = Math.round((w * v.videoHeight) / v.videoWidth);
    const c = document.createElement('canvas');
    c.width = w;
    c.height = h;
    const g = c.getContext('2d', { willReadFrequently: true });
    g.drawImage(v, 0, 0, w, h);
    const d = g.getImageData(0, 0, w, h).data;
    const luma = (i) => 0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2];
    const grads = new Float32Array((w - 1) * (h - 1));
    let n = 0;
    for (let y = 0; y < h - 1; y++) {
      for (let x = 0; x < w - 1; x++) {
        const i = (y * w + x) * 4;
        const l = luma(i);
        grads[n++] = Math.abs(l - luma(i + 4)) + Math.abs(l - luma(i + w * 4));
      }
    }
    grads.sort();
    const top = grads.subarray(Math.floor(n * 0.99));
    let sum = 0;
    for (const x of top) sum += x;
    return { sharpness: sum / top.length, width: v.videoWidth, height: v.videoHeight };
  }, id);
}

// Median of a few samples (the fake camera's picture moves).
async function medianSharpness(p, id) {
  const xs = [];
  let size = null;
  for (let i = 0; i < 5; i++) {
    const s = await sharpness(p, id);
    if (s) {
      xs.push(s.sharpness);
      size = `${s.width}x${s.height}`;
    }
    await sleep(300);
  }
  xs.sort((a, b) => a - b);
  return { median: xs.length ? xs[Math.floor(xs.length / 2)] : null, size };
}

// What `viewer` receives of `sender`'s camera against the sender's own camera, side by side:
// {received, own, ratio}.
async function compareSharpness(viewer, sender) {
  const [received, own] = await Promise.all([medianSharpness(viewer, sender.participantId), medianSharpness(sender, null)]);
  return { received, own, ratio: received.median !== null && own.median ? received.median / own.median : null };
}
const sharpText = (c) => `${c.received.median?.toFixed(1)} at ${c.received.size} against ${c.own.median?.toFixed(1)} at the camera (${c.ratio?.toFixed(2)})`;

// Audio bytes and video frames keep arriving at `p` over three seconds (at least 2 frames a
// second: the blur runs on software WebGL here, on two shared cores).
async function stillArriving(p, what) {
  const a = await inbound(p);
  await sleep(3000);
  const b = await inbound(p);
  assert.ok(b.audioBytes > a.audioBytes + 1000, `${what}: audio bytes must keep arriving: ${JSON.stringify({ a, b })}`);
  assert.ok(b.framesDecoded >= a.framesDecoded + 6, `${what}: video frames must keep decoding: ${JSON.stringify({ a, b })}`);
  return { audio: b.audioBytes - a.audioBytes, frames: b.framesDecoded - a.framesDecoded };
}

test('the vendored effect files are served by the binary, with their types', { timeout: 60_000 }, async () => {
  const base = await ensureServer();
  const files = [
    ['vendor/rnnoise/rnnoise.js', /javascript/],
    ['vendor/rnnoise/rnnoise.wasm', /^application\/wasm$/],
    ['vendor/rnnoise/LICENSE', /./],
    ['vendor/rnnoise/COPYING-rnnoise', /./],
    ['vendor/selfie_segmentation/selfie_segmentation.js', /javascript/],
    ['vendor/selfie_segmentation/selfie_segmentation_solution_simd_wasm_bin.js', /javascript/],
    ['vendor/selfie_segmentation/selfie_segmentation_solution_simd_wasm_bin.wasm', /^application\/wasm$/],
    ['vendor/selfie_segmentation/selfie_segmentation_landscape.tflite', /./],
    ['vendor/selfie_segmentation/selfie_segmentation.binarypb', /./],
    ['vendor/selfie_segmentation/LICENSE', /./],
    ['noise-worklet.js', /javascript/],
    ['effects.js', /javascript/],
  ];
  let total = 0;
  for (const [file, type] of files) {
    const res = await fetch(`${base}/assets/${file}`);
    assert.equal(res.status, 200, `${file}: HTTP ${res.status}`);
    assert.match(res.headers.get('content-type') || '', type, `${file}: content type`);
    const body = Buffer.from(await res.arrayBuffer());
    const size = statSync(path.join(ROOT, 'web', file)).size;
    assert.equal(body.length, size, `${file}: ${body.length} bytes served, ${size} on disk`);
    total += size;
  }
  // gzip for the big wasm, when asked for.
  const gz = await fetch(`${base}/assets/vendor/selfie_segmentation/selfie_segmentation_solution_simd_wasm_bin.wasm`, { headers: { 'accept-encoding': 'gzip' } });
  assert.equal(gz.headers.get('content-encoding'), 'gzip');
  const csp = (await fetch(`${base}/r/some-room`)).headers.get('content-security-policy');
  assert.match(csp, /script-src 'self' 'wasm-unsafe-eval'/, csp);
  assert.doesNotMatch(csp, /'unsafe-eval'|'unsafe-inline'/, csp);
  note(`${files.length} files, ${total} bytes, served as they are on disk`);
});

test('noise suppression and background blur publish processed tracks that still arrive', { timeout: 360_000 }, async () => {
  const base = await ensureServer();
  const room = `fx-${Math.random().toString(36).slice(2, 10)}`;
  const url = `${base}/r/${room}`;
  const alice = await openParticipant('Alice');
  const bob = await openParticipant('Bob');
  try {
    // Alice: both effects on at the join screen; the choice outlives a reload.
    await alice.page.goto(url, { waitUntil: 'load' });
    await alice.page.waitForSelector('[data-testid="join-noise"]', { state: 'attached' });
    assert.equal(await alice.page.isChecked('[data-testid="join-noise"]'), false, 'noise suppression is off by default');
    assert.equal(await alice.page.isChecked('[data-testid="join-blur"]'), false, 'blur is off by default');
    await alice.page.click('label[for="join-noise"]');
    await alice.page.click('label[for="join-blur"]');
    await alice.page.reload({ waitUntil: 'load' });
    await alice.page.waitForSelector('[data-testid="join-noise"]', { state: 'attached' });
    assert.equal(await alice.page.isChecked('[data-testid="join-noise"]'), true, 'noise suppression remembered');
    assert.equal(await alice.page.isChecked('[data-testid="join-blur"]'), true, 'blur remembered');
    const started = await waitFor('both effects to start on the join screen',
      () => alice.page.evaluate(() => ({ ...window.huddle.effects.state, errors: window.huddle.effects.errors, startMs: window.huddle.effects.startMs })),
      (s) => (s.audio === 'on' || s.audio === 'unavailable') && (s.video === 'on' || s.video === 'unavailable'),
      { timeout: 90_000, interval: 500 });
    assert.ok(started.audio === 'on' && started.video === 'on', `both effects must start on the join screen: ${JSON.stringify(started)}`);
    note(`join screen: ${JSON.stringify(started)}`);
    await alice.page.fill('[data-testid="name"]', 'Alice');
    await alice.page.click('[data-testid="join"]');
    await waitFor('Alice to join', () => alice.page.evaluate(() => window.huddle.state), (s) => s === 'joined', { timeout: 15_000 });
    alice.participantId = await alice.page.evaluate(() => window.huddle.participantId);

    await bob.page.goto(url, { waitUntil: 'load' });
    await bob.page.fill('[data-testid="name"]', 'Bob');
    await bob.page.click('[data-testid="join"]');
    await waitFor('Bob to join', () => bob.page.evaluate(() => window.huddle.state), (s) => s === 'joined', { timeout: 15_000 });
    bob.participantId = await bob.page.evaluate(() => window.huddle.participantId);
    await waitFor('each to play the other\'s video', async () => [await remoteVideos(alice), await remoteVideos(bob)],
      ([a, b]) => a.filter(isPlaying).length === 1 && b.filter(isPlaying).length === 1, { timeout: MEDIA_TIMEOUT_MS, interval: 300 });

    // Alice publishes the processed tracks, and the processors keep working.
    const a0 = await senders(alice);
    assert.ok(processed(a0.senders.audio), `Alice's audio sender must carry the RNNoise track: ${JSON.stringify(a0)}`);
    assert.ok(processed(a0.senders.video), `Alice's video sender must carry the blurred track: ${JSON.stringify(a0)}`);
    await sleep(2000);
    const a1 = await senders(alice);
    assert.ok(a1.frames.audio > a0.frames.audio, `RNNoise must keep processing frames: ${JSON.stringify([a0.frames, a1.frames])}`);
    assert.ok(a1.frames.video > a0.frames.video, `the blur must keep drawing frames: ${JSON.stringify([a0.frames, a1.frames])}`);
    assert.ok(a1.masks > a0.masks, `the segmenter must keep making masks: ${a0.masks} then ${a1.masks}`);
    note(`Alice publishes ${a0.senders.audio.label || '(no label)'} and ${a0.senders.video.label || '(no label)'} (devices: ${a0.senders.audio.rawLabel}, ${a0.senders.video.rawLabel}); frames ${JSON.stringify(a1.frames)}, masks ${a1.masks} (in 2 s: ${a1.masks - a0.masks})`);

    // They arrive at Bob, blurred: Bob's picture of Alice is much less sharp than her camera's
    // own picture.
    const atBob = await stillArriving(bob, 'Alice at Bob');
    const aliceAtBob = await compareSharpness(bob, alice);
    note(`at Bob: ${JSON.stringify(atBob)}; Alice's sharpness ${sharpText(aliceAtBob)}`);
    assert.ok(aliceAtBob.own.median > 5, `a picture to measure: ${sharpText(aliceAtBob)}`);
    assert.ok(aliceAtBob.ratio < 0.5, `Alice's picture must arrive blurred: ${sharpText(aliceAtBob)}`);

    // Bob turns blur on in the meeting: replaceTrack on his video sender.
    const b0 = await senders(bob);
    assert.equal(b0.senders.video.id, b0.senders.video.rawId, `Bob starts with his camera's own track: ${JSON.stringify(b0)}`);
    await bob.page.click('[data-testid="effects"]');
    await bob.page.waitForSelector('[data-testid="effects-popover"]', { state: 'visible', timeout: 3000 });
    await bob.page.click('label[for="fx-blur"]');
    const b1 = await waitFor("Bob's video sender to carry the blurred track", () => senders(bob), (s) => processed(s.senders.video), { timeout: 90_000, interval: 500 });
    assert.equal(b1.senders.audio.id, b1.senders.audio.rawId, 'his audio stays the microphone\'s (noise suppression off)');
    await bob.page.keyboard.press('Escape');
    await bob.page.waitForSelector('[data-testid="effects-popover"]', { state: 'hidden', timeout: 2000 });
    const atAlice = await stillArriving(alice, 'Bob at Alice');
    const bobBlurred = await waitFor("Bob's picture at Alice to be blurred", () => compareSharpness(alice, bob), (c) => c.ratio !== null && c.ratio < 0.5, { timeout: 15_000, interval: 500 });
    note(`Bob's blur on in the meeting: at Alice ${JSON.stringify(atAlice)}, sharpness ${sharpText(bobBlurred)}`);

    // Off again: the camera's own track goes back on the sender.
    await bob.page.click('[data-testid="effects"]');
    await bob.page.click('label[for="fx-blur"]');
    const b2 = await waitFor("Bob's camera back on his sender", () => senders(bob), (s) => s.senders.video && s.senders.video.id === s.senders.video.rawId, { timeout: 10_000 });
    assert.equal(b2.state.video, 'off');
    await stillArriving(alice, 'Bob at Alice, blur off');
    const sharpAgain = await waitFor("Bob's picture at Alice sharp again", () => compareSharpness(alice, bob), (c) => c.ratio !== null && c.ratio > 0.6, { timeout: 30_000, interval: 500 });
    note(`blur off: sharpness ${sharpText(sharpAgain)}`);

    for (const p of participants) {
      assert.deepEqual(p.pageErrors, [], `${p.name}: uncaught errors in the page`);
      const csp = p.consoleErrors.filter((e) => /Content Security Policy|Refused to/.test(e));
      assert.deepEqual(csp, [], `${p.name}: content security policy refusals`);
    }
  } catch (err) {
    console.log(`--- server log ---\n${serverLogTail()}`);
    for (const p of participants) console.log(`${p.name} page errors: ${JSON.stringify(p.pageErrors)}; console errors: ${JSON.stringify(p.consoleErrors.slice(-10))}`);
    throw err;
  }
});
