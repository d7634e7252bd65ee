// The WHEP player at /watch/{room}: a receive-only peer connection to the room, no signaling
// socket and no participant. It offers one video m-line (the server puts the active speaker
// on it, or the one participant of ?participant=) and four audio m-lines (one participant's
// audio each), POSTs the offer to /whep/{room} and plays what comes back.
//
// The access token is the page's #token=… (a private room's viewer link), else a guest token
// from /api/token. Tests read window.watch.

import { fillIcons } from './icons.js';

const AUDIO_LINES = 4;
const GATHER_TIMEOUT_MS = 2000;
const ROOM_NAME = /^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$/;

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

const watch = {
  pc: null,
  errors: [],
  // starting | token | offering | connecting | connected | disconnected | failed | ended | error
  status: 'starting',
  location: null,
  room: null,
  participant: params.get('participant') || null,
  muted: true,
  stop,
};
window.watch = watch;

let token = null;
let resourceUrl = null;
let hasVideo = false;

function setStatus(status, text) {
  watch.status = status;
  const line = $('watch-status');
  line.textContent = text;
  line.classList.toggle('is-error', status === 'error' || status === 'failed');
}

function fail(text, detail = {}) {
  watch.errors.push({ message: text, ...detail });
  setStatus('error', text);
}

function roomFromPath() {
  const parts = location.pathname.split('/').filter(Boolean);
  if (parts.length < 2 || parts[0] !== 'watch') return null;
  let room;
  try {
    room = decodeURIComponent(parts[1]);
  } catch {
    return null;
  }
  return ROOM_NAME.test(room) ? room : null;
}

function tokenFromHash() {
  const hash = new URLSearchParams(location.hash.replace(/^#/, ''));
  return hash.get('token') || null;
}

// The message of an error response: {"error": {"code", "message"}} or {"error": CODE, "message"}.
async function errorOf(res) {
  let code = null;
  let message = null;
  try {
    const body = await res.json();
    if (body && typeof body.error === 'object' && body.error) {
      code = body.error.code ?? null;
      message = body.error.message ?? null;
    } else if (body) {
      code = typeof body.error === 'string' ? body.error : null;
      message = typeof body.message === 'string' ? body.message : null;
    }
  } catch {
    // Not JSON: the status says it.
  }
  return { status: res.status, code, message: message || `HTTP ${res.status} ${res.statusText}`.trim() };
}

async function guestToken(room) {
  const res = await fetch('/api/token', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ room, name: 'Viewer', invite: params.get('invite') || undefined }),
  });
  if (!res.ok) {
    const err = await errorOf(res);
    throw Object.assign(new Error(err.message), err);
  }
  const body = await res.json();
  if (!body || typeof body.token !== 'string') throw new Error('the server sent no token');
  return body.token;
}

function gatheringComplete(pc) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener('icegatheringstatechange', check);
      resolve();
    };
    const check = () => {
      if (pc.iceGatheringState === 'complete') done();
    };
    const timer = setTimeout(done, GATHER_TIMEOUT_MS);
    pc.addEventListener('icegatheringstatechange', check);
  });
}

function play(el) {
  const p = el.play();
  if (p && typeof p.catch === 'function') {
    // Autoplay refused (even muted, under some policies): the sound button's click plays it.
    p.catch(() => {});
  }
}

function onTrack(event) {
  const track = event.track;
  if (track.kind === 'video') {
    const video = $('watch-video');
    video.srcObject = new MediaStream([track]);
    play(video);
    return;
  }
  const audio = document.createElement('audio');
  audio.autoplay = true;
  audio.muted = watch.muted;
  audio.dataset.mid = event.transceiver?.mid ?? '';
  audio.srcObject = new MediaStream([track]);
  $('watch-audio').appendChild(audio);
  play(audio);
}

function audioElements() {
  return [...$('watch-audio').querySelectorAll('audio')];
}

function setSoundButton() {
  const button = $('watch-sound');
  button.textContent = watch.muted ? 'Unmute' : 'Mute';
}

function toggleSound() {
  watch.muted = !watch.muted;
  // This click is the user gesture that lets the page play sound.
  for (const audio of audioElements()) {
    audio.muted = watch.muted;
    play(audio);
  }
  play($('watch-video'));
  setSoundButton();
}

function connectedText() {
  return hasVideo ? 'Live' : 'Connected: waiting for video';
}

function onConnectionState() {
  const pc = watch.pc;
  switch (pc.connectionState) {
    case 'connecting':
      setStatus('connecting', 'Connecting…');
      break;
    case 'connected':
      setStatus('connected', connectedText());
      break;
    case 'disconnected':
      setStatus('disconnected', 'Connection interrupted: trying to recover…');
      break;
    case 'failed':
      watch.errors.push({ message: 'the media connection failed' });
      setStatus('failed', 'The media connection failed. Reload the page to try again.');
      break;
    default:
      break;
  }
}

async function start() {
  fillIcons(document);
  const room = roomFromPath();
  watch.room = room;
  if (!room) {
    fail('This is not a room address: it should be /watch/ROOM.');
    return;
  }
  $('watch-room').textContent = room;
  document.title = `Watching ${room} – Huddle`;
  $('watch-sound').addEventListener('click', toggleSound);
  setSoundButton();

  token = tokenFromHash();
  if (!token) {
    setStatus('token', 'Getting access…');
    try {
      token = await guestToken(room);
    } catch (err) {
      fail(`Could not get access to the room: ${err.message}`, { status: err.status, code: err.code });
      return;
    }
  }

  const pc = new RTCPeerConnection();
  watch.pc = pc;
  pc.addTransceiver('video', { direction: 'recvonly' });
  for (let i = 0; i < AUDIO_LINES; i += 1) pc.addTransceiver('audio', { direction: 'recvonly' });
  pc.addEventListener('track', onTrack);
  pc.addEventListener('connectionstatechange', onConnectionState);

  const video = $('watch-video');
  const videoShown = () => {
    if (hasVideo || !video.videoWidth) return;
    hasVideo = true;
    if (watch.status === 'connected') setStatus('connected', connectedText());
  };
  video.addEventListener('loadeddata', videoShown);
  video.addEventListener('resize', videoShown);

  setStatus('offering', 'Connecting…');
  let answer;
  try {
    await pc.setLocalDescription(await pc.createOffer());
    await gatheringComplete(pc);
    const query = watch.participant ? `?participant=${encodeURIComponent(watch.participant)}` : '';
    const res = await fetch(`/whep/${encodeURIComponent(room)}${query}`, {
      method: 'POST',
      headers: { 'content-type': 'application/sdp', authorization: `Bearer ${token}` },
      body: pc.localDescription.sdp,
    });
    if (res.status !== 201) {
      const err = await errorOf(res);
      pc.close();
      fail(`Could not watch: ${err.message}`, err);
      return;
    }
    watch.location = res.headers.get('location');
    if (watch.location) resourceUrl = new URL(watch.location, location.href).href;
    else watch.errors.push({ message: 'the 201 had no Location: the session cannot be ended' });
    answer = await res.text();
  } catch (err) {
    pc.close();
    fail(`Could not watch: ${err.message}`);
    return;
  }
  try {
    await pc.setRemoteDescription({ type: 'answer', sdp: answer });
  } catch (err) {
    stop();
    fail(`The server's answer was not usable: ${err.message}`);
    return;
  }
  if (watch.status === 'offering') setStatus('connecting', 'Connecting…');
}

// Ends the session: DELETE on its Location (keepalive, so it outlives the page), then close.
function stop() {
  if (resourceUrl) {
    const url = resourceUrl;
    resourceUrl = null;
    fetch(url, {
      method: 'DELETE',
      headers: token ? { authorization: `Bearer ${token}` } : {},
      keepalive: true,
    }).catch(() => {});
  }
  if (watch.pc && watch.pc.signalingState !== 'closed') watch.pc.close();
  if (watch.status !== 'error' && watch.status !== 'failed') setStatus('ended', 'Stopped.');
}

window.addEventListener('pagehide', stop);
// Back from the back/forward cache: the session was ended at pagehide, so start anew.
window.addEventListener('pageshow', (event) => {
  if (event.persisted) location.reload();
});

start().catch((err) => fail(`Something went wrong: ${err.message}`));
