// End-to-end encryption for a room opened with #e2ee in its URL (the fragment never reaches
// the server). A key is derived from the passphrase typed on the join screen and the room name
// (PBKDF2-SHA-256, 200 000 rounds); the passphrase and the key never leave the browser.
//
// Media: every encoded frame is encrypted in a worker (web/e2ee-worker.js) with AES-GCM,
// SFrame-style, through RTCRtpScriptTransform (or, on older browsers, createEncodedStreams).
// The first bytes the SFU reads stay in the clear (VP8 payload header: 10 bytes of a keyframe,
// 3 of a delta frame; Opus: the TOC byte). Video is VP8 only in such a room.
// Chat: message text is AES-GCM ciphertext ("e2ee1:" + base64(iv ‖ ciphertext)); the server
// stores it as it is.

const ROUNDS = 200000;
const CHAT_PREFIX = 'e2ee1:';
const enc = new TextEncoder();
const dec = new TextDecoder();

function b64(bytes) {
  let s = '';
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}

function unb64(text) {
  const s = atob(text);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

export function e2eeRequested() {
  return /(^|[#&])e2ee(=|&|$)/.test(location.hash.slice(1) ? `#${location.hash.slice(1)}` : '');
}

export function scriptTransformSupported() {
  return typeof window.RTCRtpScriptTransform === 'function';
}

export class E2EE {
  static async create(passphrase, room) {
    const base = await crypto.subtle.importKey('raw', enc.encode(passphrase), 'PBKDF2', false, ['deriveBits']);
    const bits = new Uint8Array(
      await crypto.subtle.deriveBits({ name: 'PBKDF2', hash: 'SHA-256', salt: enc.encode(`huddle-e2ee/v1/${room}`), iterations: ROUNDS }, base, 512),
    );
    const mediaKey = bits.slice(0, 32);
    const chatKey = await crypto.subtle.importKey('raw', bits.slice(32, 64), 'AES-GCM', false, ['encrypt', 'decrypt']);
    return new E2EE(mediaKey, chatKey);
  }

  constructor(mediaKey, chatKey) {
    this.chatKey = chatKey;
    this.stats = { encrypted: 0, decrypted: 0, failed: 0, chatFailed: 0 };
    this.onStats = null;
    this.worker = new Worker('/assets/e2ee-worker.js', { name: 'huddle-e2ee' });
    this.worker.postMessage({ type: 'key', key: mediaKey });
    this.worker.onmessage = (e) => {
      const m = e.data;
      if (m && m.type === 'stats') {
        Object.assign(this.stats, { encrypted: m.encrypted, decrypted: m.decrypted, failed: m.failed });
        this.onStats?.(this.stats);
      }
    };
  }

  // RTCPeerConnection settings the chosen transform needs.
  peerConfig(config) {
    if (!scriptTransformSupported()) config.encodedInsertableStreams = true;
    return config;
  }

  attach(senderOrReceiver, operation, kind) {
    this.attached = this.attached || new WeakSet();
    if (this.attached.has(senderOrReceiver)) return;
    this.attached.add(senderOrReceiver);
    if (scriptTransformSupported()) {
      senderOrReceiver.transform = new RTCRtpScriptTransform(this.worker, { operation, kind });
      return;
    }
    const { readable, writable } = senderOrReceiver.createEncodedStreams();
    this.worker.postMessage({ type: 'stream', operation, kind, readable, writable }, [readable, writable]);
  }

  setupSender(sender, kind) {
    this.attach(sender, 'encrypt', kind);
  }

  setupReceiver(receiver, kind) {
    this.attach(receiver, 'decrypt', kind);
  }

  // Video transceivers: VP8 only (H.264's packetizer reads NAL units inside the frame).
  preferVp8(transceiver) {
    if (typeof transceiver.setCodecPreferences !== 'function' || !RTCRtpSender.getCapabilities) return;
    const caps = RTCRtpSender.getCapabilities('video');
    if (!caps) return;
    const codecs = caps.codecs.filter((c) => /\/(vp8|rtx|red|ulpfec)$/i.test(c.mimeType));
    if (codecs.some((c) => /vp8$/i.test(c.mimeType))) transceiver.setCodecPreferences(codecs);
  }

  async sealText(text) {
    const iv = crypto.getRandomValues(new Uint8Array(12));
    const ct = new Uint8Array(await crypto.subtle.encrypt({ name: 'AES-GCM', iv }, this.chatKey, enc.encode(text)));
    const out = new Uint8Array(12 + ct.length);
    out.set(iv);
    out.set(ct, 12);
    return CHAT_PREFIX + b64(out);
  }

  // The message with its text decrypted; `undecryptable` when it is ciphertext under another
  // key, `unencrypted` when it was sent in the clear.
  async openMessage(m) {
    if (!m || typeof m.text !== 'string' || !m.text) return m;
    if (!m.text.startsWith(CHAT_PREFIX)) return { ...m, unencrypted: true };
    try {
      const raw = unb64(m.text.slice(CHAT_PREFIX.length));
      const pt = await crypto.subtle.decrypt({ name: 'AES-GCM', iv: raw.subarray(0, 12) }, this.chatKey, raw.subarray(12));
      return { ...m, text: dec.decode(pt) };
    } catch {
      this.stats.chatFailed += 1;
      this.onStats?.(this.stats);
      return { ...m, text: '', undecryptable: true };
    }
  }

  close() {
    this.worker.terminate();
  }
}
