// Browser end-to-end test: m-lines are reused. When someone leaves, the next person's tracks
// take their m-lines with no new offer (the server says so with `media_slots`), and the page
// shows the newcomer's video in the newcomer's tile, not the departed one's.
//
//   HUDDLE_BIN=target/release/huddle node --test tests/e2e/slots.test.mjs
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  MEDIA_TIMEOUT_MS, note, waitFor, startServer, openParticipant, remoteVideos, isPlaying,
  joinRoom, closeParticipant, cleanup,
} from './harness.mjs';

after(cleanup);

const transceivers = (p) => p.page.evaluate(() => window.huddle.pc.getTransceivers().length);
const mLines = (p) => p.page.evaluate(() => window.huddle.pc.currentRemoteDescription?.sdp.split('\nm=').length - 1);

test('a newcomer takes the m-lines of someone who left: no new m-line, the right tile plays', { timeout: 120_000 }, async () => {
  const base = await startServer();
  const room = `slots-${Math.random().toString(36).slice(2, 10)}`;
  const [alice, bob] = await Promise.all(['Alice', 'Bob'].map((n) => openParticipant(n)));
  for (const p of [alice, bob]) await joinRoom(p, `${base}/r/${room}`);
  const playsFor = (viewer, who) => async () => (await remoteVideos(viewer)).filter((v) => v.participantId === who.participantId);
  await waitFor("Alice to see Bob's video play", playsFor(alice, bob), (vs) => vs.some(isPlaying), { timeout: MEDIA_TIMEOUT_MS });
  const before = { transceivers: await transceivers(alice), mlines: await mLines(alice) };
  note(`with Bob: Alice has ${before.transceivers} transceivers, ${before.mlines} m-lines`);

  await closeParticipant(bob);
  await waitFor("Bob's tile to leave Alice's page", playsFor(alice, bob), (vs) => vs.length === 0, { timeout: 30_000 });

  const carol = await openParticipant('Carol');
  await joinRoom(carol, `${base}/r/${room}`);
  const carolAtAlice = await waitFor("Alice to see Carol's video play in Carol's tile", playsFor(alice, carol), (vs) => vs.some(isPlaying), { timeout: MEDIA_TIMEOUT_MS });
  note(`Carol at Alice: ${JSON.stringify(carolAtAlice)}`);
  const now = { transceivers: await transceivers(alice), mlines: await mLines(alice) };
  note(`with Carol: Alice has ${now.transceivers} transceivers, ${now.mlines} m-lines`);
  assert.equal(now.transceivers, before.transceivers, "Carol's tracks reused Bob's m-lines: no new transceiver at Alice");
  assert.equal(now.mlines, before.mlines, 'no m-line was added to Alice\'s session');
  // Alice's tiles: Carol's plays, and nothing is left under Bob's id.
  const videos = await remoteVideos(alice);
  assert.ok(!videos.some((v) => v.participantId === bob.participantId), `no tile for Bob: ${JSON.stringify(videos)}`);
  assert.deepEqual(alice.pageErrors, [], 'no page errors at Alice');
  // And Carol sees Alice (her own m-lines are new: she just came).
  await waitFor("Carol to see Alice's video play", playsFor(carol, alice), (vs) => vs.some(isPlaying), { timeout: MEDIA_TIMEOUT_MS });
  await Promise.all([alice, carol].map(closeParticipant));
});
