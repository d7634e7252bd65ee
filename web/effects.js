// Noise suppression and background blur of what this page publishes (docs/web-client.md,
// "Noise suppression and background blur"). The page's local MediaStream holds the tracks that
// are published: the device's own track, or, with an effect on, the processed one made from
// it. Turning an effect on or off swaps the stream's track and the RTCRtpSender's track
// (replaceTrack, no new offer); the device track keeps running underneath.
//
// - Noise suppression: RNNoise (vendored @jitsi/rnnoise-wasm) in an AudioWorklet
//   (noise-worklet.js) between a MediaStreamSource of the microphone and a
//   MediaStreamDestination, whose track is published.
// - Background blur: MediaPipe selfie segmentation (vendored @mediapipe/selfie_segmentation,
//   its landscape model) on each camera frame; a canvas draws the person sharp over a blurred
//   copy of the frame, and its captureStream() track is published.
//
// Both are off unless the user turned them on (remembered in localStorage).

import { $, el } from './ui.js';
import { t, setLabel } from './i18n.js';
import { icon } from './icons.js';
import { openLayer, closeLayer } from './popover.js';

const KEYS = { audio: 'huddle.noise_suppression', video: 'huddle.background_blur' };
const BASE = '/assets/vendor';
// How long an effect may take to start before the toggle says it is unavailable. Where WebGL
// runs in software on a busy machine, MediaPipe's first start (compiling its 5.7 MB wasm and
// its shaders) has been seen to take more than 15 s; a later toggle reuses what it loaded.
const READY_TIMEOUT_MS = 60000;

function stored(kind) {
  try {
    return localStorage.getItem(KEYS[kind]) === 'on';
  } catch {
    return false;
  }
}

function store(kind, on) {
  try {
    localStorage.setItem(KEYS[kind], on ? 'on' : 'off');
  } catch {
    /* private mode: the choice lasts for this page */
  }
}

const withTimeout = (p, what) =>
  Promise.race([p, new Promise((_, reject) => setTimeout(() => reject(new Error(`${what} did not start`)), READY_TIMEOUT_MS))]);

// ------------------------------------------------------------------ noise suppression

let rnnoiseWasm = null;

async function startNoise(raw, onFrames) {
  if (typeof AudioWorkletNode === 'undefined' || typeof AudioContext === 'undefined') throw new Error('no AudioWorklet');
  rnnoiseWasm = rnnoiseWasm || fetch(`${BASE}/rnnoise/rnnoise.wasm`).then((r) => {
    if (!r.ok) throw new Error(`rnnoise.wasm: HTTP ${r.status}`);
    return r.arrayBuffer();
  });
  let wasm;
  try {
    wasm = await rnnoiseWasm;
  } catch (err) {
    rnnoiseWasm = null;
    throw err;
  }
  // RNNoise is made for 48 kHz.
  const ctx = new AudioContext({ sampleRate: 48000 });
  try {
    await ctx.audioWorklet.addModule('/assets/noise-worklet.js');
    const node = new AudioWorkletNode(ctx, 'huddle-rnnoise', {
      numberOfInputs: 1,
      numberOfOutputs: 1,
      channelCount: 1,
      channelCountMode: 'explicit',
      outputChannelCount: [1],
      processorOptions: { wasm: wasm.slice(0) },
    });
    const ready = new Promise((resolve, reject) => {
      node.port.onmessage = (e) => {
        const m = e.data || {};
        if (m.type === 'ready') resolve();
        else if (m.type === 'error') reject(new Error(m.message));
        else if (m.type === 'frames') onFrames(m.frames);
      };
    });
    const source = ctx.createMediaStreamSource(new MediaStream([raw]));
    const dest = ctx.createMediaStreamDestination();
    source.connect(node);
    node.connect(dest);
    // An AudioContext made before any click waits for one (autoplay policy).
    const resume = () => ctx.state === 'suspended' && ctx.resume().catch(() => {});
    resume();
    document.addEventListener('pointerdown', resume);
    document.addEventListener('keydown', resume);
    await withTimeout(ready, 'RNNoise');
    const track = dest.stream.getAudioTracks()[0];
    return {
      track,
      stop() {
        document.removeEventListener('pointerdown', resume);
        document.removeEventListener('keydown', resume);
        node.port.postMessage({ type: 'close' });
        track.stop();
        source.disconnect();
        ctx.close().catch(() => {});
      },
    };
  } catch (err) {
    ctx.close().catch(() => {});
    throw err;
  }
}

// ------------------------------------------------------------------ background blur

let segmenter = null; // one MediaPipe instance per page (its wasm is loaded once)
let onSegmented = null; // the running blur's results handler

function webglAvailable() {
  try {
    const c = document.createElement('canvas');
    return !!(c.getContext('webgl2') || c.getContext('webgl'));
  } catch {
    return false;
  }
}

function loadScript(src) {
  return new Promise((resolve, reject) => {
    const s = document.createElement('script');
    s.src = src;
    s.onload = resolve;
    s.onerror = () => reject(new Error(`could not load ${src}`));
    document.head.append(s);
  });
}

async function getSegmenter() {
  if (!segmenter) {
    segmenter = (async () => {
      // MediaPipe alerts when it gets no WebGL context: ask first.
      if (!webglAvailable()) throw new Error('no WebGL');
      if (!window.SelfieSegmentation) await loadScript(`${BASE}/selfie_segmentation/selfie_segmentation.js`);
      const seg = new window.SelfieSegmentation({ locateFile: (file) => `${BASE}/selfie_segmentation/${file}` });
      // 1: the landscape model (256x144), made for video calls.
      seg.setOptions({ modelSelection: 1, selfieMode: false });
      seg.onResults((results) => onSegmented && onSegmented(results));
      await seg.initialize();
      return seg;
    })();
    // A start that failed is tried afresh next time; one that is only slow is kept, so the
    // next toggle gets it when it is ready.
    segmenter.catch(() => {
      segmenter = null;
    });
  }
  return withTimeout(segmenter, 'MediaPipe');
}

// Two loops: the segmenter takes the newest frame whenever it is free (a few times a second
// where WebGL runs in software, every frame on a GPU), and the canvas draws every camera frame
// (at the camera's rate, at most 30 a second) with the newest mask, so that the published video
// keeps its frame rate even when segmentation is slow.
async function startBlur(raw, onFrames) {
  const seg = await getSegmenter();
  const video = document.createElement('video');
  video.muted = true;
  video.playsInline = true;
  video.srcObject = new MediaStream([raw]);
  await video.play().catch(() => {});
  const settings = raw.getSettings ? raw.getSettings() : {};
  const fps = Math.min(30, Math.max(5, Math.round(settings.frameRate || 24)));
  const canvas = document.createElement('canvas');
  canvas.width = video.videoWidth || settings.width || 640;
  canvas.height = video.videoHeight || settings.height || 360;
  const ctx = canvas.getContext('2d');
  // The background is blurred at a quarter of the size (the same look for a fraction of the
  // work), then drawn scaled up.
  const small = document.createElement('canvas');
  const sctx = small.getContext('2d');
  // The segmenter gets a copy of the frame at its model's size (256 wide): MediaPipe would
  // scale the full frame down itself, on the GPU, which costs far more where WebGL runs in
  // software. The mask it returns is copied (MediaPipe reuses its own) and scaled up.
  const input = document.createElement('canvas');
  const ictx = input.getContext('2d');
  const mask = document.createElement('canvas');
  const mctx = mask.getContext('2d');
  let haveMask = false;
  let frames = 0;
  let masks = 0;
  let stopped = false;
  let published = null;
  let drawTimer = 0;
  let segTimer = 0;
  const live = () => video.readyState >= 2 && video.videoWidth > 0;
  // Camera off (the published track disabled): nothing to do.
  const idle = () => !!published && !published.enabled;

  const gotMask = (results) => {
    const m = results.segmentationMask;
    if (mask.width !== m.width || mask.height !== m.height) {
      mask.width = m.width;
      mask.height = m.height;
    }
    mctx.clearRect(0, 0, mask.width, mask.height);
    mctx.drawImage(m, 0, 0);
    haveMask = true;
    masks += 1;
  };

  const draw = () => {
    if (canvas.width !== video.videoWidth || canvas.height !== video.videoHeight) {
      canvas.width = video.videoWidth;
      canvas.height = video.videoHeight;
    }
    const w = canvas.width;
    const h = canvas.height;
    if (small.width !== Math.ceil(w / 4) || small.height !== Math.ceil(h / 4)) {
      small.width = Math.ceil(w / 4);
      small.height = Math.ceil(h / 4);
    }
    sctx.filter = 'blur(4px)';
    sctx.drawImage(video, 0, 0, small.width, small.height);
    ctx.save();
    ctx.clearRect(0, 0, w, h);
    ctx.drawImage(mask, 0, 0, w, h);
    // The person: the frame where the mask is.
    ctx.globalCompositeOperation = 'source-in';
    ctx.drawImage(video, 0, 0, w, h);
    // Everything else: the blurred frame behind.
    ctx.globalCompositeOperation = 'destination-over';
    ctx.drawImage(small, 0, 0, w, h);
    ctx.restore();
    frames += 1;
    onFrames(frames);
  };

  const drawTick = () => {
    if (stopped) return;
    const started = performance.now();
    if (!idle() && live() && haveMask) draw();
    drawTimer = setTimeout(drawTick, Math.max(0, 1000 / fps - (performance.now() - started)));
  };

  const segment = async () => {
    if (!live()) return;
    const iw = 256;
    const ih = Math.max(1, Math.round((256 * video.videoHeight) / video.videoWidth));
    if (input.width !== iw || input.height !== ih) {
      input.width = iw;
      input.height = ih;
    }
    ictx.drawImage(video, 0, 0, iw, ih);
    onSegmented = gotMask;
    try {
      await seg.send({ image: input });
    } catch (err) {
      console.warn('[huddle] background blur frame failed', err);
    }
  };

  // Segmentation holds the main thread while it runs; when it is slow (software WebGL) it waits
  // at least as long as it took before the next frame, so that drawing keeps half the time.
  const segTick = async () => {
    if (stopped) return;
    const started = performance.now();
    if (!idle()) await segment();
    const took = performance.now() - started;
    if (!stopped) segTimer = setTimeout(segTick, Math.max(1000 / fps - took, took));
  };

  // A first mask and frame before the track is published, so that it never starts unblurred.
  for (let i = 0; i < 50 && !haveMask && !stopped; i++) {
    await segment();
    if (!haveMask) await new Promise((r) => setTimeout(r, 100));
  }
  if (!haveMask) throw new Error('no segmentation mask');
  draw();
  const track = canvas.captureStream(fps).getVideoTracks()[0];
  published = track;
  if ('contentHint' in track) track.contentHint = 'motion';
  segTick();
  drawTick();
  return {
    track,
    masks: () => masks,
    stop() {
      stopped = true;
      clearTimeout(drawTimer);
      clearTimeout(segTimer);
      if (onSegmented === gotMask) onSegmented = null;
      track.stop();
      video.srcObject = null;
    },
  };
}

// ------------------------------------------------------------------ the page's effects

export class Effects {
  constructor() {
    this.stream = null;
    this.raw = { audio: null, video: null };
    this.want = { audio: stored('audio'), video: stored('video') };
    this.proc = { audio: null, video: null };
    // off | starting | on | unavailable (what the toggles show)
    this.state = { audio: 'off', video: 'off' };
    this.frames = { audio: 0, video: 0 }; // frames processed so far (the browser test reads them)
    this.errors = { audio: null, video: null };
    this.startMs = { audio: null, video: null }; // how long the last start took (diagnostics)
    this.queue = Promise.resolve();
    this.listeners = new Set();
    // Set by the meeting: the sender of each kind (null before the offer), and what to do
    // when the published track changes (the self tile, the microphone meter).
    this.senderFor = () => null;
    this.onTrack = () => {};
  }

  // Takes over `stream`, whose tracks are the devices' own.
  attach(stream) {
    this.stream = stream;
    this.raw.audio = stream.getAudioTracks()[0] || null;
    this.raw.video = stream.getVideoTracks()[0] || null;
    return Promise.all([this.sync('audio'), this.sync('video')]);
  }

  // Called on every change of state (for the toggles).
  subscribe(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  changed() {
    for (const fn of this.listeners) fn(this);
  }

  published(kind) {
    if (!this.stream) return null;
    return (kind === 'audio' ? this.stream.getAudioTracks() : this.stream.getVideoTracks())[0] || null;
  }

  // Turns an effect on or off (and remembers it).
  set(kind, on) {
    this.want[kind] = !!on;
    store(kind, !!on);
    return this.sync(kind);
  }

  // A new device track of `kind` (a device switch); the caller stopped the old one.
  setRaw(kind, track) {
    this.queue = this.queue.then(() => {
      this.stopProc(kind);
      this.raw[kind] = track || null;
    });
    return this.sync(kind);
  }

  stopProc(kind) {
    const p = this.proc[kind];
    this.proc[kind] = null;
    if (p) p.stop();
  }

  // Makes the published track of `kind` what the toggle asks for. One change at a time.
  sync(kind) {
    this.queue = this.queue.then(() => this.apply(kind)).catch((err) => console.warn('[huddle] effects', err));
    return this.queue;
  }

  async apply(kind) {
    const raw = this.raw[kind];
    if (!this.stream) return;
    let target = raw;
    if (this.want[kind] && raw && raw.readyState === 'live') {
      if (!this.proc[kind]) {
        this.state[kind] = 'starting';
        this.changed();
        try {
          const onFrames = (n) => {
            this.frames[kind] = n;
          };
          const t0 = performance.now();
          this.proc[kind] = kind === 'audio' ? await startNoise(raw, onFrames) : await startBlur(raw, onFrames);
          this.startMs[kind] = Math.round(performance.now() - t0);
          this.errors[kind] = null;
        } catch (err) {
          console.warn(`[huddle] ${kind === 'audio' ? 'noise suppression' : 'background blur'} unavailable:`, err);
          this.errors[kind] = String(err && err.message ? err.message : err);
          this.state[kind] = 'unavailable';
          this.want[kind] = false;
          await this.put(kind, raw);
          this.changed();
          return;
        }
      }
      target = this.proc[kind].track;
      this.state[kind] = 'on';
    } else {
      this.state[kind] = 'off';
    }
    await this.put(kind, target);
    if (target === raw) this.stopProc(kind);
    this.changed();
  }

  // Puts `track` into the stream in place of the current track of its kind, and on the
  // sender. Mute state (track.enabled) moves with it; the device track stays enabled while a
  // processed track made from it is published.
  async put(kind, track) {
    const cur = this.published(kind);
    if (cur === track) return;
    const enabled = cur ? cur.enabled : true;
    if (cur) this.stream.removeTrack(cur);
    if (track) {
      track.enabled = enabled;
      this.stream.addTrack(track);
    }
    const raw = this.raw[kind];
    if (raw && track && raw !== track) raw.enabled = true;
    const sender = this.senderFor(kind);
    if (sender) await sender.replaceTrack(track || null).catch((err) => console.warn('[huddle] replaceTrack', err));
    this.onTrack(kind, track);
  }

  // The meeting is over: every track stops, the devices' too.
  close() {
    for (const kind of ['audio', 'video']) {
      this.stopProc(kind);
      if (this.raw[kind]) this.raw[kind].stop();
      this.state[kind] = 'off';
    }
    this.listeners.clear();
  }
}

// A labelled switch for one effect of `effects`, kept in step with it: {label, input, update}.
function effectSwitch(effects, kind, prefix) {
  const name = kind === 'audio' ? 'noise' : 'blur';
  const id = `${prefix}-${name}`;
  const testid = `${prefix}-${name}`;
  const input = el('input', { type: 'checkbox', id, dataset: { testid } });
  const status = el('span', { class: 'switch-status', dataset: { testid: `${testid}-status` } });
  const label = el('label', { class: 'switch', for: id },
    input, el('span', { class: 'switch-track', 'aria-hidden': 'true' }), el('span', { text: t(`effects.${name}`) }), status);
  input.addEventListener('change', () => {
    effects.set(kind, input.checked);
    update();
  });
  const update = () => {
    const state = effects.state[kind];
    input.checked = effects.want[kind];
    status.dataset.state = state;
    status.textContent = state === 'starting' ? t('effects.starting') : state === 'unavailable' ? t('effects.unavailable') : '';
  };
  update();
  return { label, input, update };
}

// The two switches on the join screen, after "start muted" and "start with camera off".
export function joinSwitches(effects) {
  for (const id of ['join-noise', 'join-blur']) document.getElementById(id)?.closest('.switch')?.remove();
  const box = $('#join .switches');
  const switches = ['audio', 'video'].map((kind) => effectSwitch(effects, kind, 'join'));
  box.append(...switches.map((s) => s.label));
  effects.subscribe(() => switches.forEach((s) => s.update()));
}

// In the meeting: an Effects button in the control bar (in the More menu on a narrow bar) that
// opens a popover with the same two switches.
export class EffectsUI {
  constructor(effects) {
    this.effects = effects;
    for (const id of ['effects-button', 'effects-popover']) $(`#${id}`)?.remove();
    this.button = el('button', {
      type: 'button', id: 'effects-button', class: 'control-button', 'aria-haspopup': 'dialog',
      'aria-expanded': 'false', 'aria-controls': 'effects-popover', dataset: { testid: 'effects' },
    }, icon('sparkles'));
    setLabel(this.button, t('controls.effects'));
    this.switches = ['audio', 'video'].map((kind) => effectSwitch(effects, kind, 'fx'));
    const close = el('button', { type: 'button', class: 'icon-button ghost effects-close', dataset: { testid: 'effects-close' } }, icon('x'));
    setLabel(close, t('effects.close'));
    close.addEventListener('click', () => this.setOpen(false, true));
    this.popover = el('div', { id: 'effects-popover', class: 'effects-popover', role: 'dialog', 'aria-labelledby': 'effects-title', hidden: true, dataset: { testid: 'effects-popover' } },
      el('div', { class: 'effects-head' }, el('h2', { id: 'effects-title', text: t('effects.title') }), close),
      el('div', { class: 'switches' }, ...this.switches.map((s) => s.label)));
    $('#chat-button').before(this.button);
    $('#room').append(this.popover);
    this.button.addEventListener('click', () => this.setOpen(this.popover.hidden));
    this.onDown = (e) => {
      if (!this.popover.hidden && !this.popover.contains(e.target) && !this.button.contains(e.target) && !e.target.closest?.('#more-menu')) this.setOpen(false);
    };
    document.addEventListener('pointerdown', this.onDown);
    this.unsubscribe = effects.subscribe(() => this.update());
    this.update();
  }

  update() {
    for (const s of this.switches) s.update();
    const on = this.effects.want.audio || this.effects.want.video;
    this.button.classList.toggle('active', on);
  }

  setOpen(open, restore = false) {
    this.popover.hidden = !open;
    this.button.setAttribute('aria-expanded', String(open));
    if (open) openLayer(this.popover, { close: () => this.setOpen(false), opener: this.button });
    else closeLayer(this.popover, { restore });
  }

  destroy() {
    this.unsubscribe();
    document.removeEventListener('pointerdown', this.onDown);
    closeLayer(this.popover);
    this.button.remove();
    this.popover.remove();
  }
}
