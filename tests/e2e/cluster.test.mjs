// Browser test of cluster mode: two Huddle nodes on a real redis-server and PostgreSQL (started
// here on free loopback ports). Alice opens the room on one node; Bob opens the same room link
// on the node that does not hold the room, is redirected by the server, and his browser follows
// the redirect to the room's node: both see and hear each other and chat.
//
//   HUDDLE_BIN=target/release/huddle node --test tests/e2e/cluster.test.mjs
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  MEDIA_TIMEOUT_MS, note, sleep, waitFor, spawnHuddle, openParticipant, joinRoom, remoteVideos, isPlaying,
  inboundAudio, risingAudio, openChatIfClosed, cleanup, logTail,
} from './harness.mjs';

const children = [];
const dirs = [];
after(async () => {
  await cleanup();
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});
process.on('exit', () => {
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
});

// A tool on PATH or in PostgreSQL's bin directory, or a clear failure naming the package.
function tool(name, pkg) {
  const dirsToTry = (process.env.PATH || '').split(':');
  if (existsSync('/usr/lib/postgresql')) {
    for (const v of readdirSync('/usr/lib/postgresql').sort().reverse()) dirsToTry.push(`/usr/lib/postgresql/${v}/bin`);
  }
  for (const d of dirsToTry) if (d && existsSync(path.join(d, name))) return path.join(d, name);
  throw new Error(`\`${name}\` not found: install it with \`apt-get install -y ${pkg}\` (.ci/run does)`);
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
    srv.on('error', reject);
  });
}

async function waitPort(port, what) {
  await waitFor(`${what} to listen on ${port}`, () => new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.on('connect', () => { s.destroy(); resolve(true); });
    s.on('error', () => resolve(false));
  }), Boolean, { timeout: 20_000, interval: 100 });
}

async function startRedis() {
  const port = await freePort();
  const c = spawn(tool('redis-server', 'redis-server'), ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--loglevel', 'warning'], { stdio: 'ignore' });
  children.push(c);
  await waitPort(port, 'redis-server');
  return `redis://127.0.0.1:${port}/0`;
}

// PostgreSQL refuses to run as root: run it as the `postgres` user (setpriv) when we are root.
function asPostgres(bin, args) {
  if (process.getuid && process.getuid() === 0) return [tool('setpriv', 'util-linux'), ['--reuid=postgres', '--regid=postgres', '--init-groups', '--reset-env', bin, ...args]];
  return [bin, args];
}

async function startPostgres() {
  const dir = mkdtempSync(path.join(tmpdir(), 'huddle-e2e-pg-'));
  dirs.push(dir);
  if (process.getuid && process.getuid() === 0) spawnSync('chown', ['-R', 'postgres:postgres', dir]);
  const data = path.join(dir, 'data');
  const [initCmd, initArgs] = asPostgres(tool('initdb', 'postgresql'), ['-D', data, '-U', 'huddle', '-A', 'trust', '--no-sync', '-E', 'UTF8']);
  const init = spawnSync(initCmd, initArgs, { encoding: 'utf8' });
  assert.equal(init.status, 0, `initdb failed: ${init.stderr}`);
  const port = await freePort();
  const [cmd, args] = asPostgres(tool('postgres', 'postgresql'), ['-D', data, '-p', String(port), '-k', dir, '-c', 'listen_addresses=127.0.0.1', '-c', 'fsync=off']);
  const c = spawn(cmd, args, { stdio: 'ignore' });
  children.push(c);
  await waitPort(port, 'postgres');
  await sleep(300);
  return `postgres://huddle@127.0.0.1:${port}/postgres`;
}

const SECRET = 'e2e-cluster-secret-0123456789abcdef';

test('a participant who opens the room on another node is redirected to the room\'s node and meets the others', { timeout: 150_000 }, async () => {
  const [redisUrl, pgUrl] = await Promise.all([startRedis(), startPostgres()]);
  const ports = [await freePort(), await freePort()];
  const origins = ports.map((p) => `http://127.0.0.1:${p}`);
  const nodes = await Promise.all(
    ['n1', 'n2'].map((id, i) =>
      spawnHuddle(['--bind', `127.0.0.1:${ports[i]}`], {
        HUDDLE_AUTH__SECRET: SECRET,
        HUDDLE_CLUSTER__REDIS_URL: redisUrl,
        HUDDLE_CLUSTER__POSTGRES_URL: pgUrl,
        HUDDLE_CLUSTER__NODE_ID: id,
        // A page served by one node opens its socket on the other after a redirect.
        HUDDLE_SIGNALING__ALLOWED_ORIGINS: JSON.stringify(origins),
      }),
    ),
  );
  const logs = () => nodes.map((n, i) => `--- n${i + 1} ---\n${logTail(n.log, 30)}`).join('\n');
  try {
    note(`nodes ${nodes.map((n) => n.url).join(', ')}`);
    await sleep(2500); // both nodes' first heartbeat
    const room = `cl-${Math.random().toString(36).slice(2, 10)}`;
    const alice = await openParticipant('Alice', { origin: nodes[0].url });
    await joinRoom(alice, `${nodes[0].url}/r/${room}`);
    // Which node holds the room? The one whose log says Alice joined.
    const ownerIdx = nodes.findIndex((n) => n.log.some((l) => l.includes(`room=${room}`) && l.includes('joined')));
    assert.ok(ownerIdx >= 0, `a node logged Alice's join:\n${logs()}`);
    const other = nodes[1 - ownerIdx];
    note(`room on n${ownerIdx + 1}; Bob opens it on n${2 - ownerIdx}`);
    const bob = await openParticipant('Bob', { origin: other.url });
    await joinRoom(bob, `${other.url}/r/${room}`);
    const redirects = await bob.page.evaluate(() => (window.huddle.trace || []).filter((e) => e.type === 'redirect' && e.dir === 'in').length);
    assert.equal(redirects, 1, "Bob's page was redirected once");
    assert.ok(!other.log.some((l) => l.includes(`room=${room}`) && l.includes('joined')), 'nobody joined the room on the other node');
    for (const [p, q] of [[alice, bob], [bob, alice]]) {
      await waitFor(`${p.name} to play ${q.name}'s video`, () => remoteVideos(p), (vs) => vs.some((v) => v.participantId === q.participantId && isPlaying(v)), { timeout: MEDIA_TIMEOUT_MS });
      const a = await inboundAudio(p);
      assert.equal(risingAudio(a).length, 1, `${p.name} hears ${q.name}: ${JSON.stringify(a)}`);
    }
    await openChatIfClosed(bob);
    await bob.page.fill('[data-testid="chat-input"]', 'hello across the cluster');
    await bob.page.click('[data-testid="chat-send"]');
    await waitFor("Alice to read Bob's message", () => alice.page.evaluate(() => [...document.querySelectorAll('[data-testid="chat-message"] .chat-text')].map((e) => e.textContent)), (t) => t.includes('hello across the cluster'));
    note('call and chat across the redirect work');
  } catch (err) {
    err.message += `\n${logs()}`;
    throw err;
  }
});
