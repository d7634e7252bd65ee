// Noise suppression in the audio thread: RNNoise (the vendored @jitsi/rnnoise-wasm build) on
// the microphone, in 480-sample frames (10 ms at 48 kHz). The worklet renders 128 samples at a
// time, so input is gathered into frames and the output runs one frame (10 ms) behind. The
// wasm bytes come from the page (processorOptions.wasm): a worklet has no fetch. Until RNNoise
// is ready the microphone passes through. See docs/web-client.md.
import createRNNWasmModule from './vendor/rnnoise/rnnoise.js';

const FRAME = 480;
// RNNoise works on 16-bit sample values.
const SCALE = 32768;

class RnnoiseProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.ready = false;
    this.closed = false;
    this.frames = 0;
    this.inBuf = new Float32Array(FRAME);
    this.inLen = 0;
    // Output FIFO, primed with one frame of silence (the 10 ms of latency).
    this.out = new Float32Array(FRAME * 4);
    this.readAt = 0;
    this.available = FRAME;
    this.writeAt = FRAME;
    this.port.onmessage = (e) => {
      if (e.data && e.data.type === 'close') this.close();
    };
    const wasm = options && options.processorOptions && options.processorOptions.wasm;
    createRNNWasmModule({ wasmBinary: wasm, locateFile: (p) => p }).then(
      (m) => {
        if (this.closed) return;
        this.m = m;
        this.state = m._rnnoise_create();
        this.ptr = m._malloc(FRAME * 4);
        this.ready = true;
        this.port.postMessage({ type: 'ready' });
      },
      (err) => this.port.postMessage({ type: 'error', message: String(err && err.message ? err.message : err) }),
    );
    this.lastReport = 0;
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    if (this.ready) {
      this.m._rnnoise_destroy(this.state);
      this.m._free(this.ptr);
    }
    this.ready = false;
  }

  // One 480-sample frame through RNNoise, in place. Returns the voice probability.
  denoise(frame) {
    const heap = this.m.HEAPF32;
    const at = this.ptr >> 2;
    for (let i = 0; i < FRAME; i++) heap[at + i] = frame[i] * SCALE;
    const vad = this.m._rnnoise_process_frame(this.state, this.ptr, this.ptr);
    // HEAPF32 may be a new view if the memory grew.
    const h = this.m.HEAPF32;
    for (let i = 0; i < FRAME; i++) frame[i] = h[at + i] / SCALE;
    return vad;
  }

  push(samples) {
    const cap = this.out.length;
    for (let i = 0; i < samples.length; i++) {
      this.out[this.writeAt] = samples[i];
      this.writeAt = (this.writeAt + 1) % cap;
    }
    this.available = Math.min(cap, this.available + samples.length);
  }

  process(inputs, outputs) {
    if (this.closed) return false;
    const input = inputs[0] && inputs[0][0];
    const output = outputs[0] && outputs[0][0];
    if (!output) return true;
    const n = output.length;
    const src = input || new Float32Array(n);
    for (let i = 0; i < n; i++) {
      this.inBuf[this.inLen++] = src[i];
      if (this.inLen === FRAME) {
        const frame = this.inBuf.slice();
        if (this.ready) {
          this.denoise(frame);
          this.frames += 1;
        }
        this.push(frame);
        this.inLen = 0;
      }
    }
    const cap = this.out.length;
    for (let i = 0; i < n; i++) {
      if (this.available > 0) {
        output[i] = this.out[this.readAt];
        this.readAt = (this.readAt + 1) % cap;
        this.available -= 1;
      } else {
        output[i] = 0;
      }
    }
    // The page shows (and the browser test checks) that frames go through RNNoise.
    if (this.frames - this.lastReport >= 100) {
      this.lastReport = this.frames;
      this.port.postMessage({ type: 'frames', frames: this.frames });
    }
    return true;
  }
}

registerProcessor('huddle-rnnoise', RnnoiseProcessor);
