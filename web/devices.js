// Local camera and microphone: acquisition with graceful fallbacks, and the
// device lists for the pickers.

const VIDEO_SHAPE = { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30 } };
const AUDIO_SHAPE = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };

function audioConstraint(deviceId) {
  return deviceId ? { ...AUDIO_SHAPE, deviceId: { exact: deviceId } } : { ...AUDIO_SHAPE };
}

function videoConstraint(deviceId) {
  return deviceId ? { ...VIDEO_SHAPE, deviceId: { exact: deviceId } } : { ...VIDEO_SHAPE };
}

// Map a getUserMedia failure to one of our error codes.
function mediaErrorCode(err) {
  if (!err) return null;
  switch (err.name) {
    case 'NotAllowedError':
    case 'SecurityError':
      return 'media_denied';
    case 'NotFoundError':
    case 'OverconstrainedError':
      return 'media_not_found';
    case 'NotReadableError':
    case 'AbortError':
      return 'media_busy';
    default:
      return 'media_unavailable';
  }
}

async function tryGet(constraints) {
  try {
    return { stream: await navigator.mediaDevices.getUserMedia(constraints), error: null };
  } catch (error) {
    return { stream: null, error };
  }
}

// Get one track of a kind. A remembered device that vanished falls back to the default.
export async function getTrack(kind, deviceId) {
  const make = (id) => (kind === 'audio' ? { audio: audioConstraint(id) } : { video: videoConstraint(id) });
  let r = await tryGet(make(deviceId));
  if (!r.stream && deviceId && r.error && (r.error.name === 'OverconstrainedError' || r.error.name === 'NotFoundError')) {
    r = await tryGet(make(null));
  }
  if (!r.stream) return { track: null, error: mediaErrorCode(r.error) };
  const track = kind === 'audio' ? r.stream.getAudioTracks()[0] : r.stream.getVideoTracks()[0];
  return { track: track || null, error: track ? null : 'media_not_found' };
}

// Open microphone and camera. Returns {stream, error}: stream holds whatever
// could be had (possibly nothing), error names the first problem met.
export async function openLocalMedia({ micId, cameraId } = {}) {
  const stream = new MediaStream();
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    return { stream, error: 'media_insecure' };
  }
  const both = await tryGet({ audio: audioConstraint(micId), video: videoConstraint(cameraId) });
  if (both.stream) {
    for (const tr of both.stream.getTracks()) stream.addTrack(tr);
    return { stream, error: null };
  }
  // One of the two may still work on its own (no camera, camera busy, ...).
  const [a, v] = [await getTrack('audio', micId), await getTrack('video', cameraId)];
  if (a.track) stream.addTrack(a.track);
  if (v.track) stream.addTrack(v.track);
  const error = a.error === 'media_denied' || v.error === 'media_denied' ? 'media_denied' : a.error || v.error;
  return { stream, error };
}

export async function listDevices() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return { mics: [], cameras: [] };
  let devices = [];
  try {
    devices = await navigator.mediaDevices.enumerateDevices();
  } catch {
    devices = [];
  }
  const real = (d) => d.deviceId && d.deviceId !== 'communications';
  return {
    mics: devices.filter((d) => d.kind === 'audioinput' && real(d)),
    cameras: devices.filter((d) => d.kind === 'videoinput' && real(d)),
  };
}

// Microphone level meter (0..1) for the join preview.
export class LevelMeter {
  constructor(onLevel) {
    this.onLevel = onLevel;
    this.ctx = null;
    this.source = null;
    this.timer = 0;
  }

  attach(track) {
    this.detach();
    if (!track || typeof AudioContext === 'undefined') return;
    try {
      this.ctx = this.ctx || new AudioContext();
      this.source = this.ctx.createMediaStreamSource(new MediaStream([track]));
      const analyser = this.ctx.createAnalyser();
      analyser.fftSize = 512;
      this.source.connect(analyser);
      const data = new Uint8Array(analyser.fftSize);
      this.timer = setInterval(() => {
        if (this.ctx.state === 'suspended') this.ctx.resume().catch(() => {});
        this.onLevel(null, this.ctx.state === 'running');
        analyser.getByteTimeDomainData(data);
        let sum = 0;
        for (const x of data) {
          const v = (x - 128) / 128;
          sum += v * v;
        }
        const rms = Math.sqrt(sum / data.length);
        this.onLevel(Math.min(1, rms * 4));
      }, 100);
    } catch {
      this.detach();
    }
  }

  detach() {
    clearInterval(this.timer);
    this.timer = 0;
    if (this.source) {
      try {
        this.source.disconnect();
      } catch {
        /* already gone */
      }
    }
    this.source = null;
    this.onLevel(0);
  }

  close() {
    this.detach();
    if (this.ctx) this.ctx.close().catch(() => {});
    this.ctx = null;
  }
}
