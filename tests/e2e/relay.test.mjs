// Media through the bundled TURN server: a participant whose browser may only use relay
// candidates (the client's test-only `?relay=1` sets iceTransportPolicy 'relay') still sees and
// hears the other, and getStats shows the selected candidate pair going through a relay.
//
//   HUDDLE_BIN=target/release/huddle node --test tests/e2e/relay.test.mjs
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { MEDIA_TIMEOUT_MS, note, waitFor, startServer, openParticipant, remoteVideos, isPlaying, cleanup } from './harness.mjs';

after(cleanup);

async function join(p, url) {
  await p.page.goto(url, { waitUntil: 'load', timeout: 15_000 });
  await p.page.fill('[data-testid="name"]', p.name);
  await p.page.click('[data-testid="join"]');
  await waitFor(`${p.name} to be joined with a peer connection`, () => p.page.evaluate(() => window.huddle?.state === 'joined' && !!window.huddle.pc), Boolean, { timeout: 15_000 });
}

// The selected ICE candidate pair of the page's peer connection, with both candidates' types.
async function selectedPair(p) {
  return p.page.evaluate(async () => {
    const stats = await window.huddle.pc.getStats();
    const byId = new Map();
    stats.forEach((r) => byId.set(r.id, r));
    let pair = null;
    stats.forEach((r) => {
      if (r.type === 'transport' && r.selectedCandidatePairId) pair = byId.get(r.selectedCandidatePairId);
    });
    if (!pair) return null;
    const local = byId.get(pair.localCandidateId) || {};
    const remote = byId.get(pair.remoteCandidateId) || {};
    // Every pair that carried bytes, with its local candidate's type.
    const carrying = [];
    stats.forEach((r) => {
      if (r.type === 'candidate-pair' && r.bytesReceived > 0) carrying.push((byId.get(r.localCandidateId) || {}).candidateType);
    });
    return { state: pair.state, local: local.candidateType, relayProtocol: local.relayProtocol, localAddress: local.address, remote: remote.candidateType, carrying };
  });
}

test('a relay-only browser gets media through the bundled TURN server', { timeout: 90_000 }, async () => {
  const base = await startServer();
  const room = `relay-${Math.random().toString(36).slice(2, 8)}`;
  const [alice, bob] = await Promise.all([openParticipant('Alice'), openParticipant('Bob')]);
  await join(alice, `${base}/r/${room}`);
  await join(bob, `${base}/r/${room}?relay=1`);

  const ice = await bob.page.evaluate(() => window.huddle.pc.getConfiguration());
  assert.equal(ice.iceTransportPolicy, 'relay', 'the ?relay=1 switch sets the relay-only policy');
  const turnUrls = ice.iceServers.flatMap((s) => s.urls).filter((u) => u.startsWith('turn:'));
  assert.ok(turnUrls.length >= 2, `joined hands out TURN URLs (UDP and TCP): ${JSON.stringify(ice.iceServers)}`);

  await waitFor(
    "Bob (relay only) to show Alice's video playing",
    () => remoteVideos(bob),
    (vs) => vs.length === 1 && isPlaying(vs[0]),
    { timeout: MEDIA_TIMEOUT_MS, interval: 200 },
  );
  await waitFor(
    "Alice to show Bob's video playing",
    () => remoteVideos(alice),
    (vs) => vs.length === 1 && isPlaying(vs[0]),
    { timeout: MEDIA_TIMEOUT_MS, interval: 200 },
  );
  const pair = await waitFor(
    "Bob's selected candidate pair, and every pair that carried media, to use a local relay candidate",
    () => selectedPair(bob),
    (p) => p && p.state === 'succeeded' && p.local === 'relay' && p.carrying.length > 0 && p.carrying.every((t) => t === 'relay'),
    { timeout: 10_000 },
  );
  note('Bob selected pair:', JSON.stringify(pair));
});
