// Encrypts and decrypts encoded media frames for web/e2ee.js (AES-GCM, SFrame-style framing).
//
// A frame on the wire:  clear prefix ‖ ciphertext+tag ‖ IV (12 bytes) ‖ key id (1 byte)
// - clear prefix: what the SFU reads: VP8 10 bytes (keyframe) or 3 (delta), audio 1 (Opus TOC);
//   it is authenticated as additional data, so it cannot be changed either.
// - IV: 8 random bytes per transform (each sender's own) ‖ a 32-bit frame counter: unique
//   under the room key however many senders share it.
// Frames that do not decrypt (another passphrase) are dropped and counted.

const KEY_ID = 1;
const TRAILER = 13;
let key = null;
const stats = { encrypted: 0, decrypted: 0, failed: 0 };
let dirty = false;

setInterval(() => {
  if (!dirty) return;
  dirty = false;
  self.postMessage({ type: 'stats', ...stats });
}, 500);

function clearBytes(frame, kind) {
  if (kind === 'audio') return 1;
  return frame.type === 'key' ? 10 : 3;
}

function encryptor(kind) {
  const salt = crypto.getRandomValues(new Uint8Array(8));
  let counter = 0;
  return async (frame, controller) => {
    const data = new Uint8Array(frame.data);
    if (!key || data.length === 0) return; // never send media in the clear
    const n = Math.min(clearBytes(frame, kind), data.length);
    const iv = new Uint8Array(12);
    iv.set(salt);
    new DataView(iv.buffer).setUint32(8, counter >>> 0);
    counter = (counter + 1) >>> 0;
    const ct = new Uint8Array(await crypto.subtle.encrypt({ name: 'AES-GCM', iv, additionalData: data.subarray(0, n) }, key, data.subarray(n)));
    const out = new Uint8Array(n + ct.length + TRAILER);
    out.set(data.subarray(0, n));
    out.set(ct, n);
    out.set(iv, n + ct.length);
    out[out.length - 1] = KEY_ID;
    frame.data = out.buffer;
    stats.encrypted += 1;
    dirty = true;
    controller.enqueue(frame);
  };
}

function decryptor(kind) {
  return async (frame, controller) => {
    const data = new Uint8Array(frame.data);
    if (data.length === 0) return;
    const n = Math.min(clearBytes(frame, kind), data.length);
    try {
      if (!key || data.length < n + 16 + TRAILER || data[data.length - 1] !== KEY_ID) throw new Error('not ours');
      const iv = data.subarray(data.length - TRAILER, data.length - 1);
      const pt = new Uint8Array(
        await crypto.subtle.decrypt({ name: 'AES-GCM', iv, additionalData: data.subarray(0, n) }, key, data.subarray(n, data.length - TRAILER)),
      );
      const out = new Uint8Array(n + pt.length);
      out.set(data.subarray(0, n));
      out.set(pt, n);
      frame.data = out.buffer;
      stats.decrypted += 1;
      dirty = true;
      controller.enqueue(frame);
    } catch {
      stats.failed += 1;
      dirty = true;
    }
  };
}

function pipe(readable, writable, operation, kind) {
  const transform = operation === 'encrypt' ? encryptor(kind) : decryptor(kind);
  readable
    .pipeThrough(new TransformStream({ transform }))
    .pipeTo(writable)
    .catch(() => {});
}

self.onmessage = async (e) => {
  const m = e.data;
  if (!m) return;
  if (m.type === 'key') {
    key = await crypto.subtle.importKey('raw', m.key, 'AES-GCM', false, ['encrypt', 'decrypt']);
  } else if (m.type === 'stream') {
    pipe(m.readable, m.writable, m.operation, m.kind);
  }
};

self.onrtctransform = (event) => {
  const t = event.transformer;
  pipe(t.readable, t.writable, t.options.operation, t.options.kind);
};
