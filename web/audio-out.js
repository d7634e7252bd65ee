// Sound out and in: the speaker (output device) picker with a test sound on the join screen,
// its choice applied to every remote audio element in the meeting, and the microphone level
// shown on the meeting's microphone button. See docs/web-client.md.

import { $, el } from './ui.js';
import { t } from './i18n.js';
import { LevelMeter } from './devices.js';

const KEY = 'huddle.speaker';
const canChoose = () => typeof HTMLMediaElement !== 'undefined' && typeof HTMLMediaElement.prototype.setSinkId === 'function';

export function chosenSpeaker() {
  try {
    return localStorage.getItem(KEY) || '';
  } catch {
    return '';
  }
}

// Plays the room's sound on the chosen speaker (a no-op where the browser cannot choose).
export function applySpeaker(audio) {
  const id = chosenSpeaker();
  if (id && canChoose() && audio) audio.setSinkId(id).catch(() => {});
}

// A short two-tone chime as a WAV file (no asset to ship).
function chime() {
  const rate = 16000;
  const n = Math.round(rate * 0.7);
  const buf = new ArrayBuffer(44 + n * 2);
  const v = new DataView(buf);
  const w = (o, s) => [...s].forEach((c, i) => v.setUint8(o + i, c.charCodeAt(0)));
  w(0, 'RIFF'); v.setUint32(4, 36 + n * 2, true); w(8, 'WAVE'); w(12, 'fmt ');
  v.setUint32(16, 16, true); v.setUint16(20, 1, true); v.setUint16(22, 1, true);
  v.setUint32(24, rate, true); v.setUint32(28, rate * 2, true); v.setUint16(32, 2, true); v.setUint16(34, 16, true);
  w(36, 'data'); v.setUint32(40, n * 2, true);
  for (let i = 0; i < n; i++) {
    const f = i < n / 2 ? 660 : 880;
    const env = Math.min(1, i / 400) * Math.min(1, (n - i) / 1600);
    v.setInt16(44 + i * 2, Math.round(Math.sin((2 * Math.PI * f * i) / rate) * 0.3 * env * 32767), true);
  }
  return URL.createObjectURL(new Blob([buf], { type: 'audio/wav' }));
}

// The join screen's speaker field, after the camera picker.
export async function speakerPicker() {
  $('#speaker-field')?.remove();
  const select = el('select', { id: 'speaker-select', class: 'select-input', dataset: { testid: 'speaker-select' } });
  const test = el('button', { type: 'button', class: 'secondary-button speaker-test', text: t('join.speaker_test'), dataset: { testid: 'speaker-test' } });
  const field = el('div', { id: 'speaker-field', class: 'speaker-field' },
    el('label', { class: 'field-label', for: 'speaker-select', text: t('join.speaker_label') }),
    el('div', { class: 'speaker-row' }, select, test));
  $('#camera-select').after(field);
  let devices = [];
  try {
    devices = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === 'audiooutput');
  } catch {
    devices = [];
  }
  const options = devices.length ? devices : [{ deviceId: '', label: '' }];
  select.replaceChildren(...options.map((d, i) => el('option', { value: d.deviceId, text: d.label || t('join.speaker_fallback', { n: i + 1 }) })));
  if ([...select.options].some((o) => o.value === chosenSpeaker())) select.value = chosenSpeaker();
  // Without setSinkId the browser plays on its default output: no choice, the test stays.
  select.disabled = !canChoose() || devices.length < 2;
  select.addEventListener('change', () => {
    try {
      localStorage.setItem(KEY, select.value);
    } catch {
      /* private mode: the choice lasts for this page */
    }
  });
  const audio = el('audio', { class: 'speaker-test-audio', dataset: { testid: 'speaker-test-audio' } });
  field.append(audio);
  test.addEventListener('click', async () => {
    audio.src = audio.src || chime();
    if (canChoose() && select.value) await audio.setSinkId(select.value).catch(() => {});
    audio.currentTime = 0;
    audio.play().catch(() => {});
  });
}

// The microphone's level on the meeting's microphone button (a growing ring).
export class MicLevel {
  constructor(stream) {
    this.button = $('#mic-button');
    this.meter = new LevelMeter((level) => {
      if (level !== null) this.button?.style.setProperty('--level', level.toFixed(2));
    });
    this.meter.attach(stream.getAudioTracks()[0]);
  }

  destroy() {
    this.meter.close();
    this.button?.style.removeProperty('--level');
  }
}
