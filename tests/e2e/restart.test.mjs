// Browser end-to-end test: a planned restart nobody has to act on. Three people are in a call
// with a chat message; the server gets SIGTERM (as from `systemctl restart` or a deploy) and
// is started again on the same ports and data directory. Without anyone touching a page, every
// page shows "The server is restarting. Reconnecting…" (never "The meeting ended"), joins
// again by itself with its camera and microphone, receives the others' video and audio again
// and still shows the chat history. Prints the time from the restart (the new server's ready
// line) to media back on every page.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  MEDIA_TIMEOUT_MS, note, waitFor, server, spawnHuddle, stopServer, restartServer, freePorts, openParticipant,
  joinRoom, remoteVideos, isPlaying, inboundAudio, risingAudio, openChatIfClosed, cleanup, serverLogTail,
} from './harness.mjs';

after(cleanup);

const state = (p) =>
  p.page.evaluate(() => ({
    state: window.huddle?.state,
    id: window.huddle?.participantId,
    rejoins: window.huddle?.rejoins,
    banner: document.querySelector('#banner')?.hidden ? null : document.querySelector('[data-testid="banner"]')?.textContent,
    leftShown: !document.querySelector('#left')?.hidden,
    leftTitle: document.querySelector('#left-title')?.textContent,
  }));

const chatTexts = (p) =>
  p.page.evaluate(() => [...document.querySelectorAll('[data-testid="chat-log"] [data-testid="chat-message"]')].map((m) => m.textContent));

// Over a short window (200 ms, for timing): which participants' remote videos advance, and
// how many inbound audio streams receive packets.
const flowingNow = (p) =>
  p.page.evaluate(async () => {
    const pc = window.huddle && window.huddle.pc;
    const videos = [...document.querySelectorAll('video[data-remote="1"]')];
    const audio = async () => {
      const out = {};
      if (pc) (await pc.getStats()).forEach((r) => r.type === 'inbound-rtp' && r.kind === 'audio' && (out[r.id] = r.packetsReceived || 0));
      return out;
    };
    const [t0, a0] = [videos.map((v) => v.currentTime), await audio()];
    await new Promise((r) => setTimeout(r, 200));
    const a1 = await audio();
    return {
      video: videos.filter((v, i) => v.videoWidth > 0 && v.currentTime > t0[i]).map((v) => v.closest('[data-participant-id]')?.dataset.participantId).sort(),
      audio: Object.keys(a1).filter((id) => a1[id] > (a0[id] ?? 0)).length,
    };
  });

// Two playing remote videos, from exactly `others`, and two audio streams rising.
async function mediaFromOthers(p, others, timeout) {
  await waitFor(
    `${p.name} to play two remote videos from ${others.join(', ')}`,
    () => remoteVideos(p),
    (vs) => {
      const playing = vs.filter(isPlaying).map((v) => v.participantId).sort();
      return JSON.stringify(playing) === JSON.stringify([...others].sort());
    },
    { timeout, interval: 100 },
  );
  await waitFor(`${p.name} to receive two audio streams`, () => inboundAudio(p), (r) => risingAudio(r).length >= 2, { timeout, interval: 100 });
}

test('a restarted server: every page rejoins by itself with video, audio and chat history', { timeout: 150_000 }, async () => {
  try {
    const ports = await freePorts(2);
    server.ports = { media: ports.media, turn: ports.turn };
    server.keepDataDir = true;
    await spawnHuddle(['--bind', `127.0.0.1:${ports.http}`, '--workers', '2'], {}, server);
    const base = server.url;
    note(`server ready at ${base} (media ${ports.media}+1, TURN ${ports.turn})`);
    const room = `restart-${Math.random().toString(36).slice(2, 10)}`;

    const people = await Promise.all(['Alice', 'Bob', 'Carol'].map((n) => openParticipant(n)));
    for (const p of people) await joinRoom(p, `${base}/r/${room}`);
    const ids = (list) => list.map((p) => p.participantId);
    await Promise.all(people.map((p) => mediaFromOthers(p, ids(people.filter((o) => o !== p)), MEDIA_TIMEOUT_MS)));
    note('before the restart: everyone plays the other two');

    const [alice] = people;
    const text = `before the restart ${Math.random().toString(36).slice(2, 8)}`;
    await openChatIfClosed(alice);
    await alice.page.fill('[data-testid="chat-input"]', text);
    await alice.page.press('[data-testid="chat-input"]', 'Enter');
    for (const p of people) await waitFor(`${p.name} to show the chat message`, () => chatTexts(p), (t) => t.some((m) => m.includes(text)), { timeout: 5000 });

    // SIGTERM; the pages are told to come back and say so calmly.
    const oldIds = new Map(people.map((p) => [p.name, p.participantId]));
    await stopServer(server);
    assert.ok(server.proc.exitCode === 0, `the server must exit 0 after SIGTERM, got code ${server.proc.exitCode} signal ${server.proc.signalCode}:\n${serverLogTail()}`);
    assert.match(server.log.join('\n'), /draining: participants told to leave.*Restart/, 'the drain is a restart');
    for (const p of people) {
      const s = await waitFor(`${p.name} to show the restart banner`, () => state(p), (s) => s.state === 'reconnecting' && !!s.banner, { timeout: 5000 });
      assert.match(s.banner, /restarting.*Reconnecting…/, `${p.name}'s banner`);
      assert.equal(s.leftShown, false, `${p.name} must not be shown "${s.leftTitle}" while the server restarts`);
    }

    // Same ports, same data directory.
    await restartServer(server);
    const restarted = Date.now();
    note(`server restarted at ${server.url}`);
    assert.equal(server.url, base, 'the restarted server is at the same address');

    const back = await Promise.all(
      people.map(async (p) => {
        const s = await waitFor(
          `${p.name} to join again by itself`,
          () => state(p),
          (s) => s.state === 'joined' && s.rejoins >= 1 && !!s.id && s.id !== oldIds.get(p.name),
          { timeout: 30_000, interval: 100 },
        );
        p.participantId = s.id;
        return s;
      }),
    );
    for (const [i, s] of back.entries()) {
      assert.equal(s.leftShown, false, `${people[i].name} was shown "${s.leftTitle}"`);
    }
    // Media back: the others' videos advance and their audio arrives (200 ms windows); then
    // the same over one second, as the call test checks it.
    const times = await Promise.all(
      people.map(async (p) => {
        const others = JSON.stringify(ids(people.filter((o) => o !== p)).sort());
        await waitFor(`${p.name} to get video and audio from the others again`, () => flowingNow(p), (f) => JSON.stringify(f.video) === others && f.audio >= 2, {
          timeout: MEDIA_TIMEOUT_MS,
          interval: 50,
        });
        const ms = Date.now() - restarted;
        await mediaFromOthers(p, ids(people.filter((o) => o !== p)), MEDIA_TIMEOUT_MS);
        return { name: p.name, ms };
      }),
    );
    for (const { name, ms } of times) console.log(`restart_to_media_ms name=${name} ms=${ms}`);
    console.log(`restart_to_media_ms all=${Math.max(...times.map((t) => t.ms))}`);

    for (const p of people) {
      const texts = await chatTexts(p);
      assert.ok(texts.some((m) => m.includes(text)), `${p.name} must still show the chat history after the rejoin: ${JSON.stringify(texts)}`);
      const s = await state(p);
      assert.equal(s.banner, null, `${p.name}'s banner is gone once back: ${s.banner}`);
      assert.deepEqual(p.pageErrors, [], `${p.name}: page errors`);
    }
  } catch (err) {
    console.log(`--- server log ---\n${serverLogTail(80)}`);
    throw err;
  }
});
