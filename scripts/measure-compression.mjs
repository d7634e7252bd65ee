// Measures what compression saves, with the real server and Chromium (numbers for
// docs/architecture.md, "Compression"): the bytes of one page load of the web client as sent
// (gzip) and as they would be without compression; and, for the WebSocket, which axum cannot
// compress (no permessage-deflate), what deflate would save on the frames a participant
// receives (per message with no shared window, the conservative permessage-deflate setting).
//
//   HUDDLE_BIN=target/release/huddle node scripts/measure-compression.mjs
import { startServer, openParticipant, joinRoom, waitFor, cleanup, server, note } from '../tests/e2e/harness.mjs';

const CHAT_MESSAGES = 100;

try {
  const base = await startServer([], { HUDDLE_LIMITS__CHAT_MESSAGES_PER_MINUTE: '0', HUDDLE_LIMITS__MESSAGES_PER_SECOND: '0' });
  const room = `measure-${Math.random().toString(36).slice(2, 8)}`;
  const alice = await openParticipant('Alice');
  await joinRoom(alice, `${base}/r/${room}`);
  // A room with a full chat history (100 messages are replayed in `joined`).
  for (let i = 0; i < CHAT_MESSAGES; i++) {
    await alice.page.evaluate((i) => window.huddle.call.sendChat(`message ${i}: shall we move the review to Thursday afternoon?`), i);
  }
  await new Promise((r) => setTimeout(r, 1000));

  const bob = await openParticipant('Bob');
  const loads = [];
  bob.page.on('requestfinished', async (req) => {
    const res = await req.response();
    if (!res || !req.url().startsWith(base)) return;
    const sizes = await req.sizes();
    const body = await res.body().catch(() => Buffer.alloc(0));
    loads.push({ url: req.url().slice(base.length), sent: sizes.responseBodySize, plain: body.length, enc: res.headers()['content-encoding'] || '' });
  });
  await bob.page.addInitScript(() => {
    window.__frames = [];
    const Orig = window.WebSocket;
    window.WebSocket = class extends Orig {
      constructor(...a) {
        super(...a);
        this.addEventListener('message', (ev) => typeof ev.data === 'string' && window.__frames.push(ev.data));
      }
    };
  });
  await joinRoom(bob, `${base}/r/${room}`);
  await waitFor('Bob to get the SDP answer', () => bob.page.evaluate(() => window.__frames.filter((f) => f.includes('"sdp"')).length), (n) => n >= 1, { timeout: 15000 });
  await new Promise((r) => setTimeout(r, 3000));

  const ws = await bob.page.evaluate(async () => {
    const deflate = async (text) => {
      const cs = new CompressionStream('deflate-raw');
      const out = new Response(new Blob([text]).stream().pipeThrough(cs));
      return (await out.arrayBuffer()).byteLength;
    };
    const byType = {};
    for (const f of window.__frames) {
      const type = JSON.parse(f).type;
      const t = (byType[type] ||= { frames: 0, bytes: 0, deflated: 0 });
      t.frames += 1;
      t.bytes += new TextEncoder().encode(f).length;
      t.deflated += await deflate(f);
    }
    return byType;
  });
  const pageSent = loads.reduce((a, l) => a + l.sent, 0);
  const pagePlain = loads.reduce((a, l) => a + l.plain, 0);
  note(`page load: ${loads.length} requests, ${pageSent} bytes sent (bodies), ${pagePlain} bytes uncompressed`);
  for (const l of loads) console.log(`  ${l.url} ${l.plain} -> ${l.sent} ${l.enc}`);
  console.log(`page_bytes uncompressed=${pagePlain} sent=${pageSent}`);
  let [all, allDeflated] = [0, 0];
  for (const [type, t] of Object.entries(ws)) {
    console.log(`ws ${type}: ${t.frames} frames, ${t.bytes} bytes, deflated ${t.deflated}`);
    all += t.bytes;
    allDeflated += t.deflated;
  }
  console.log(`ws_bytes received=${all} deflated=${allDeflated}`);
} finally {
  await cleanup();
  void server;
}
