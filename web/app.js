// Huddle web client: landing page, join screen, meeting.
import { loadI18n, applyI18n, t, setLabel } from './i18n.js';
import { fillIcons } from './icons.js';
import { openLocalMedia, getTrack, listDevices, LevelMeter } from './devices.js';
import { Call } from './call.js';
import { RoomView } from './room.js';
import { ModerationUI, showLobby, askPassword } from './moderation.js';
import { ControlBar } from './controlbar.js';
import { ROOM_RE, roomFromTitle, roomTitle } from './roomname.js';
import { HostUI } from './host.js';
import { StatsPopover } from './stats.js';
import { Shortcuts } from './shortcuts.js';
import { noteMessage as noteE2eeHint } from './e2eehint.js';
import { speakerPicker, MicLevel } from './audio-out.js';
import { RichChat } from './richchat.js';
import { E2EE, e2eeRequested } from './e2ee.js';
import { Effects, EffectsUI, joinSwitches } from './effects.js';
import { $, el, showScreen, showError, showBanner, hideBanner, initBanner, toast, errorText, isTypingTarget, copyText } from './ui.js';

const NAME_KEY = 'huddle.name';
const MIC_KEY = 'huddle.mic';
const CAMERA_KEY = 'huddle.camera';
const params = new URLSearchParams(location.search);
// A page that lost its session (the server restarted) keeps trying to join again this long.
const REJOIN_GIVE_UP_MS = 120_000;

// Test hooks and a window into the client's state.
const huddle = {
  state: 'loading', // loading | landing | join | connecting | joined | left
  room: null,
  participantId: null,
  identity: null,
  grants: null,
  pc: null,
  call: null,
  view: null,
  stream: null,
  audioMuted: false,
  videoMuted: false,
  connectionState: 'new',
  reconnecting: false, // the signaling socket dropped and is being resumed
  reconnects: 0, // times it dropped
  resumes: 0, // times the server took us back without a rejoin
  rejoins: 0, // times the page joined afresh (resume too late, or the server restarted)
  restartNoticedAt: 0, // when the server last said it was restarting (ms since the epoch)
  speakers: [], // participant ids the server last named as speaking, loudest first
  rtt: null,
  lang: null,
  joinClickedAt: null,
  firstRemoteFrameAt: null,
  errors: [],
  trace: [], // messages to and from the server, without SDP
};
window.huddle = huddle;

const log = (...args) => console.info('[huddle]', ...args);

function storageGet(key) {
  try {
    return localStorage.getItem(key);
  } catch {
    return null;
  }
}

function storageSet(key, value) {
  try {
    localStorage.setItem(key, value);
  } catch {
    /* private mode: nothing to remember */
  }
}

function reportError(code, message, opts) {
  huddle.errors.push({ code, message, at: Date.now() });
  showError(code, message, opts);
}

// ---------------------------------------------------------------- landing

const ADJECTIVES = ['amber', 'brisk', 'calm', 'clever', 'cosy', 'eager', 'gentle', 'golden', 'happy', 'lucky', 'mellow', 'quiet', 'rapid', 'silver', 'sunny', 'swift', 'tidy', 'vivid', 'warm', 'witty'];
const NOUNS = ['badger', 'canyon', 'comet', 'falcon', 'fjord', 'harbor', 'heron', 'island', 'lagoon', 'maple', 'meadow', 'otter', 'panda', 'pebble', 'river', 'robin', 'summit', 'tiger', 'tulip', 'willow'];

function randomRoomName() {
  const r = new Uint32Array(3);
  crypto.getRandomValues(r);
  return `${ADJECTIVES[r[0] % ADJECTIVES.length]}-${NOUNS[r[1] % NOUNS.length]}-${1000 + (r[2] % 9000)}`;
}

function showLanding(prefill) {
  huddle.state = 'landing';
  showScreen('landing');
  document.title = t('app.name');
  const input = $('#room-input');
  const hint = $('#landing-hint');
  input.value = prefill || '';
  const check = () => {
    const v = input.value.trim();
    const bad = v !== '' && !roomFromTitle(v);
    hint.textContent = bad ? t('landing.invalid_room') : t('landing.room_hint');
    hint.classList.toggle('invalid', bad);
    input.setAttribute('aria-invalid', String(bad));
    return !bad;
  };
  input.addEventListener('input', check);
  $('#random-room').addEventListener('click', () => {
    input.value = randomRoomName();
    check();
    input.focus();
  });
  $('#landing-form').addEventListener('submit', (e) => {
    e.preventDefault();
    if (!check()) {
      input.focus();
      return;
    }
    const room = roomFromTitle(input.value) || randomRoomName();
    location.assign(`/r/${encodeURIComponent(room)}`);
  });
  check();
  input.focus();
}

// ---------------------------------------------------------------- join screen

function decodeJwtClaims(token) {
  try {
    const part = token.split('.')[1];
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(part.length / 4) * 4, '=');
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return null;
  }
}

class JoinScreen {
  constructor(room) {
    this.room = room;
    this.token = params.get('token') || null;
    this.stream = new MediaStream();
    this.busy = false;
    this.video = $('#preview-video');
    this.meterBar = $('#preview-meter-bar');
    this.meter = new LevelMeter((level, running) => {
      if (level === null) this.meterBar.parentElement.classList.toggle('live', running);
      else this.meterBar.style.setProperty('--level', level.toFixed(2));
    });
    this.nameInput = $('#name-input');
    this.micSelect = $('#mic-select');
    this.cameraSelect = $('#camera-select');
    this.mutedBox = $('#start-muted');
    this.cameraOffBox = $('#start-camera-off');
    // Noise suppression and background blur (effects.js): one for the page, the join screen's
    // and the meeting's.
    huddle.effects = huddle.effects || new Effects();
    this.effects = huddle.effects;
    this.effects.onTrack = (kind, track) => publishedTrackChanged(kind, track);
  }

  show() {
    huddle.state = 'join';
    huddle.room = this.room;
    showScreen('join');
    document.title = `${roomTitle(this.room)} · ${t('app.name')}`;
    $('#join-room-name').textContent = roomTitle(this.room);
    $('#e2ee-field').hidden = !e2eeRequested();
    speakerPicker();
    joinSwitches(this.effects);

    const claims = this.token ? decodeJwtClaims(this.token) : null;
    $('#join-token-note').hidden = !this.token;
    this.nameInput.value = (claims && typeof claims.name === 'string' && claims.name) || storageGet(NAME_KEY) || '';
    this.nameInput.readOnly = !!(claims && claims.name);

    this.mutedBox.addEventListener('change', () => this.applyToggles());
    this.cameraOffBox.addEventListener('change', () => this.applyToggles());
    $('#preview-mic').addEventListener('click', () => this.toggle('audio'));
    $('#preview-camera').addEventListener('click', () => this.toggle('video'));
    this.micSelect.addEventListener('change', () => this.switchDevice('audio', this.micSelect.value));
    this.cameraSelect.addEventListener('change', () => this.switchDevice('video', this.cameraSelect.value));
    $('#join-form').addEventListener('submit', (e) => {
      e.preventDefault();
      this.join();
    });
    navigator.mediaDevices?.addEventListener?.('devicechange', () => this.refreshPickers());

    this.applyToggles();
    this.mediaReady = this.openMedia();
    if (!this.nameInput.value) this.nameInput.focus();
  }

  async openMedia() {
    const { stream, error } = await openLocalMedia({ micId: storageGet(MIC_KEY), cameraId: storageGet(CAMERA_KEY) });
    this.stream = stream;
    huddle.stream = stream;
    if (error) reportError(error);
    this.showPreview();
    this.meter.attach(stream.getAudioTracks()[0]);
    this.applyToggles();
    // Effects left on last time start now (the preview shows the blur); joining does not wait
    // for them: a track that is ready later replaces the published one.
    this.effects.attach(stream);
    await this.refreshPickers();
    return stream;
  }

  showPreview() {
    this.video.srcObject = this.stream.getVideoTracks().length ? new MediaStream(this.stream.getVideoTracks()) : null;
    this.video.play().catch(() => {});
  }

  async refreshPickers() {
    const { mics, cameras } = await listDevices();
    // The device's own track (the published one may be a processed copy).
    const current = (kind) => {
      const tr = this.effects.raw[kind];
      return tr ? tr.getSettings().deviceId : null;
    };
    this.fillPicker(this.micSelect, mics, current('audio'), 'join.mic_fallback');
    this.fillPicker(this.cameraSelect, cameras, current('video'), 'join.camera_fallback');
  }

  fillPicker(select, devices, currentId, fallbackKey) {
    select.replaceChildren();
    if (!devices.length) {
      select.append(el('option', { value: '', text: t('join.no_device') }));
      select.disabled = true;
      return;
    }
    devices.forEach((d, i) => {
      const opt = el('option', { value: d.deviceId, text: d.label || t(fallbackKey, { n: i + 1 }) });
      if (d.deviceId === currentId) opt.selected = true;
      select.append(opt);
    });
    select.disabled = this.busy;
  }

  async switchDevice(kind, deviceId) {
    if (this.busy || !deviceId) return;
    this.effects.raw[kind]?.stop();
    const { track, error } = await getTrack(kind, deviceId);
    if (error || !track) reportError(error || 'media_unavailable');
    else storageSet(kind === 'audio' ? MIC_KEY : CAMERA_KEY, deviceId);
    // The stream gets the new device's track, or its processed copy (effects.js).
    await this.effects.setRaw(kind, track || null);
    if (kind === 'video') this.showPreview();
    else this.meter.attach(this.stream.getAudioTracks()[0]);
    this.applyToggles();
  }

  toggle(kind) {
    const box = kind === 'audio' ? this.mutedBox : this.cameraOffBox;
    box.checked = !box.checked;
    this.applyToggles();
  }

  applyToggles() {
    const muted = this.mutedBox.checked;
    const camOff = this.cameraOffBox.checked;
    const hasMic = this.stream.getAudioTracks().length > 0;
    const hasCam = this.stream.getVideoTracks().length > 0;
    for (const tr of this.stream.getAudioTracks()) tr.enabled = !muted;
    for (const tr of this.stream.getVideoTracks()) tr.enabled = !camOff;
    huddle.audioMuted = muted;
    huddle.videoMuted = camOff;

    const micBtn = $('#preview-mic');
    micBtn.setAttribute('aria-pressed', String(muted || !hasMic));
    micBtn.classList.toggle('off', muted || !hasMic);
    setLabel(micBtn, !hasMic ? t('controls.mic_unavailable') : muted ? t('controls.mic_unmute') : t('controls.mic_mute'));
    const camBtn = $('#preview-camera');
    camBtn.setAttribute('aria-pressed', String(camOff || !hasCam));
    camBtn.classList.toggle('off', camOff || !hasCam);
    setLabel(camBtn, !hasCam ? t('controls.camera_unavailable') : camOff ? t('controls.camera_on') : t('controls.camera_off'));

    const showPlaceholder = camOff || !hasCam;
    $('#preview-placeholder').hidden = !showPlaceholder;
    $('#preview-placeholder-text').textContent = hasCam ? t('join.camera_off_preview') : t('join.no_camera');
    this.video.classList.toggle('hidden-video', showPlaceholder);
    this.meterBar.parentElement.hidden = muted || !hasMic;
  }

  setBusy(busy) {
    this.busy = busy;
    const button = $('#join-button');
    button.disabled = busy;
    button.classList.toggle('busy', busy);
    $('#join-button-text').textContent = busy ? t('join.joining') : t('join.join');
    this.micSelect.disabled = busy || this.micSelect.options.length < 1 || !this.micSelect.value;
    this.cameraSelect.disabled = busy || this.cameraSelect.options.length < 1 || !this.cameraSelect.value;
  }

  async join() {
    if (this.busy) return;
    const name = this.nameInput.value.trim();
    if (!this.token && !name) {
      reportError('name_required');
      this.nameInput.focus();
      return;
    }
    hideBanner();
    huddle.joinClickedAt = performance.now();
    huddle.firstRemoteFrameAt = null;
    this.setBusy(true);
    if (name && !this.nameInput.readOnly) storageSet(NAME_KEY, name);

    let token = this.token;
    if (!token) {
      try {
        const res = await fetch('/api/token', {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ room: this.room, name, invite: params.get('invite') || undefined }),
        });
        if (res.status === 403) throw Object.assign(new Error('forbidden'), { code: 'open_join_disabled' });
        if (!res.ok) throw Object.assign(new Error(`HTTP ${res.status}`), { code: 'token_failed' });
        const body = await res.json();
        if (!body || typeof body.token !== 'string') throw Object.assign(new Error('no token'), { code: 'token_failed' });
        token = body.token;
        huddle.identity = body.identity || null;
      } catch (err) {
        reportError(err.code || 'token_failed', null, { sticky: true });
        this.setBusy(false);
        return;
      }
    }

    if (e2eeRequested()) {
      // The passphrase never leaves this page: only a key derived from it is used, here.
      const passphrase = $('#e2ee-passphrase').value;
      if (!passphrase) {
        reportError('e2ee_passphrase_required');
        this.setBusy(false);
        $('#e2ee-passphrase').focus();
        return;
      }
      try {
        huddle.e2ee?.close();
        huddle.e2ee = await E2EE.create(passphrase, this.room);
      } catch (err) {
        reportError('e2ee_unavailable', String(err && err.message), { sticky: true });
        this.setBusy(false);
        return;
      }
    }

    const stream = await this.mediaReady;
    huddle.state = 'connecting';
    startCall({ room: this.room, token, stream, join: this, name });
  }

  // The session ended before `joined`: back to a usable join screen.
  failed() {
    huddle.state = 'join';
    this.setBusy(false);
  }

  // Joined: the preview hands its stream to the meeting.
  done() {
    this.meter.close();
    this.video.srcObject = null;
  }
}

// ---------------------------------------------------------------- meeting

// The published track of `kind` changed (an effect turned on or off, effects.js): what shows
// it follows, in the meeting (the self tile, the microphone ring) or on the join screen.
function publishedTrackChanged(kind, track) {
  const view = huddle.view;
  if (view && huddle.state !== 'join') {
    if (kind === 'video' && view.selfTile) {
      view.selfTile.video.srcObject = track ? new MediaStream([track]) : null;
      view.selfTile.video.play().catch(() => {});
    }
    if (kind === 'audio') huddle.micLevel?.meter.attach(track);
    return;
  }
  if (!joinScreen) return;
  if (kind === 'video') joinScreen.showPreview();
  else joinScreen.meter.attach(track);
}

// Every local track stops, the devices' own under any effect too.
function stopLocal(stream) {
  for (const tr of stream.getTracks()) tr.stop();
  huddle.effects?.close();
}

// Starts or stops sharing the screen on the m-line negotiated at join (no new offer).
async function toggleScreen(call) {
  const view = huddle.view;
  if (call.screenTrack) {
    await call.stopScreen();
    view?.setLocalScreen(null);
    return;
  }
  let track;
  try {
    const display = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: 15 }, audio: false });
    track = display.getVideoTracks()[0];
    if (!track) return;
    await call.startScreen(track);
  } catch (err) {
    if (track) track.stop();
    // The user closing the picker is not an error.
    if (err && err.name !== 'NotAllowedError' && err.name !== 'AbortError') reportError('screen_failed', String(err && err.message));
    return;
  }
  track.addEventListener('ended', () => {
    if (call.screenTrack !== track) return;
    call.stopScreen();
    huddle.view?.setLocalScreen(null);
  });
  view?.setLocalScreen(track);
}

// The header pill of an end-to-end encrypted room, and the warning when what arrives does not
// decrypt (another passphrase).
function setupE2eeIndicators(e2ee) {
  const pill = $('#e2ee-pill');
  pill.hidden = !e2ee;
  if (!e2ee) return;
  delete pill.dataset.state;
  $('span', pill).textContent = t('e2ee.badge');
  huddle.e2eeWarned = false;
  e2ee.onStats = (s) => {
    huddle.e2eeStats = { ...s };
    // Nothing decrypted while frames (Opus: 50 a second) or chat keep failing: another
    // passphrase. One participant with a wrong passphrase does not warn the others.
    const wrong = s.decrypted === 0 && (s.failed >= 100 || s.chatFailed > 0);
    if (wrong && !huddle.e2eeWarned) {
      huddle.e2eeWarned = true;
      pill.dataset.state = 'wrong';
      $('span', pill).textContent = t('e2ee.badge_wrong');
      showBanner(t('e2ee.wrong_passphrase'), { sticky: true, kind: 'warning' });
    }
  };
}

function startCall({ room, token, stream, join, name, password, previous = null, retryJoinUntil = 0 }) {
  let view = null;
  let mod = null;
  let rich = null;
  let host = null;
  const call = new Call({
    room,
    token,
    stream,
    e2ee: huddle.e2ee || null,
    password,
    retryJoinUntil,
    relay: params.get('relay') === '1',
    log: (...a) => console.warn('[huddle]', ...a),
    on: {
      traceList: huddle.trace,
      joined(msg) {
        // A rejoin: the previous session's tiles give way to this one's.
        if (previous) previous();
        previous = null;
        if (huddle.reconnecting) {
          huddle.reconnecting = false;
          hideBanner();
          toast(t('toast.reconnected'));
        }
        huddle.state = 'joined';
        huddle.participantId = msg.participant_id;
        huddle.identity = msg.identity;
        huddle.grants = msg.grants || null;
        join.done();
        const canPublish = !msg.grants || msg.grants.publish !== false;
        view = new RoomView({
          room: msg.room || room,
          selfId: msg.participant_id,
          selfName: msg.name || name,
          stream,
          audioMuted: huddle.audioMuted,
          videoMuted: huddle.videoMuted,
          canPublish,
          canChat: !msg.grants || msg.grants.chat !== false,
          onToggleMic: () => toggleLocal('audio'),
          onToggleCamera: () => toggleLocal('video'),
          onInvite: () => invite(room, host),
          onLeave: () => leave(),
          onSendChat: (text) => (mod ? mod.sendChat(text) : !!call.sendChat(text)),
          onVideoSizes: (tracks) => call.sendVideoSizes(tracks),
          trackId: (track) => call.trackId(track),
          onToggleScreen: () => toggleScreen(call),
          canShareScreen: canPublish && !!navigator.mediaDevices && typeof navigator.mediaDevices.getDisplayMedia === 'function',
          onRemoteFrame: () => {
            if (huddle.firstRemoteFrameAt === null) {
              huddle.firstRemoteFrameAt = performance.now();
              log(`first remote frame ${Math.round(huddle.firstRemoteFrameAt - huddle.joinClickedAt)} ms after Join`);
            }
          },
          onAudioBlocked: () => audioBlocked(),
          getPeer: () => huddle.pc,
        });
        huddle.view = view;
        mod = new ModerationUI({ view, call, selfId: msg.participant_id, selfName: msg.name || name, canChat: !msg.grants || msg.grants.chat !== false });
        huddle.mod = mod;
        host = new HostUI({
          call,
          mod,
          selfId: msg.participant_id,
          // A host's spotlight is a pin for everyone; taking it away unpins only that tile.
          onSpotlight: (id, previous) => {
            if (id) view.pin(id);
            else if (previous && view.pinnedId === previous) view.pin(null);
          },
        });
        huddle.host = host;
        host.fromJoined(msg);
        rich = new RichChat({ view, call, room: msg.room || room, token, identity: msg.identity });
        huddle.rich = rich;
        huddle.effectsUI?.destroy();
        huddle.effectsUI = canPublish ? new EffectsUI(huddle.effects) : null;
        huddle.bar?.destroy();
        huddle.bar = new ControlBar();
        huddle.statsPopover?.destroy();
        huddle.statsPopover = new StatsPopover({ view, getPeer: () => huddle.pc });
        huddle.shortcuts?.destroy();
        huddle.shortcuts = new Shortcuts();
        huddle.micLevel?.destroy();
        huddle.micLevel = new MicLevel(stream);
        view.opts.decorateChat = (item, m) => {
          rich.decorate(item, m);
          // Not our own messages: a page without the passphrase never sends ciphertext.
          if (m && m.participant_id !== huddle.participantId) noteE2eeHint(m, () => call.leave());
        };
        setupE2eeIndicators(huddle.e2ee);
        for (const p of msg.participants || []) {
          view.participantJoined(p);
          host.note(p);
          if (p.hand_raised) mod.setHand(p.participant_id, true);
        }
        if (host.spotlightId) view.pin(host.spotlightId);
        showScreen('room');
        view.chatHistory(msg.chat_history);
        view.layout();
      },
      offered() {
        // Tell the others how we came in.
        if (huddle.audioMuted && stream.getAudioTracks().length) call.setMuted('audio', true);
        if (huddle.videoMuted && stream.getVideoTracks().length) call.setMuted('video', true);
      },
      peer(pc) {
        huddle.pc = pc;
      },
      reconnecting() {
        huddle.reconnecting = true;
        huddle.reconnects += 1;
        // A restart keeps its own (calmer) banner while the join is retried.
        if (!huddle.restartNoticedAt || call.joined) showBanner(t('banner.reconnecting'), { sticky: true, kind: 'warning' });
      },
      resumed(msg) {
        huddle.reconnecting = false;
        huddle.resumes += 1;
        hideBanner();
        toast(t('toast.reconnected'));
        // The participant list now replaces ours: who left or came while we were away.
        if (view && Array.isArray(msg.participants)) {
          const present = new Set(msg.participants.map((p) => p && p.participant_id));
          for (const id of [...view.tiles.keys()]) {
            if (id !== huddle.participantId && !present.has(id)) {
              view.participantLeft(id);
              mod?.participantLeft(id);
            }
          }
          for (const p of msg.participants) if (p && !view.tiles.has(p.participant_id)) view.participantJoined(p);
          mod?.renderPeople();
        }
      },
      rejoin(opts = {}) {
        // Too late to resume, or the server restarted: the same person joins afresh with the
        // same camera and mic. The tiles stay (frozen) under a calm banner until the new
        // session's `joined` replaces them; the join is retried while the server is away.
        huddle.reconnecting = true;
        huddle.rejoins += 1;
        huddle.state = 'reconnecting';
        if (opts.restart) {
          huddle.restartNoticedAt = Date.now();
          showBanner(t('banner.server_restarting'), { sticky: true, kind: 'warning' });
        }
        const delay = (opts.delayMs || 0) * (1 + Math.random() * 0.5);
        const retryJoinUntil = Date.now() + REJOIN_GIVE_UP_MS;
        setTimeout(() => startCall({ room, token, stream, join, name, password, previous: teardown, retryJoinUntil }), delay);
      },
      connectionState(state) {
        huddle.connectionState = state;
        if (state === 'failed') reportError('media_failed', null, { sticky: true });
        if (state === 'connected') hideBanner();
      },
      track(participantId, track, receiver, remoteStream) {
        if (!view) return;
        view.attachTrack(participantId, track, receiver);
        remoteStream.onremovetrack = (ev) => view.removeTrack(participantId, ev.track);
      },
      untrack(participantId, track) {
        view?.removeTrack(participantId, track);
      },
      participantJoined(p) {
        host?.note(p);
        if (!view || !p) return;
        view.participantJoined(p);
        if (p.hand_raised) mod?.setHand(p.participant_id, true);
        mod?.renderPeople();
        toast(t('toast.joined', { name: p.name || '?' }));
      },
      participantLeft(id) {
        if (!view) return;
        const tile = view.tiles.get(id);
        view.participantLeft(id);
        mod?.participantLeft(id);
        host?.participantLeft(id);
        if (tile) toast(t('toast.left', { name: tile.name }));
      },
      trackPublished: (id, track) => view?.trackPublished(id, track),
      mute(id, kind, muted, byServer) {
        if (id === huddle.participantId) {
          if (byServer && muted) forcedMute(kind);
          return;
        }
        view?.setRemoteMute(id, kind, muted);
        mod?.renderPeople();
      },
      hand: (id, raised) => mod?.setHand(id, raised),
      typing: (id, active) => mod?.typing(id, active),
      lobby() {
        huddle.state = 'lobby';
        showLobby(room, () => {
          call.leave();
          stopLocal(stream);
          huddle.state = 'left';
          showLeft(t('left.title'), t('leave_reason.left'));
        });
      },
      knock: (msg) => mod?.knock(msg),
      other: (msg) => !!host?.onMessage(msg),
      knockEnded: (id) => mod?.knockEnded(id),
      speakers(list) {
        huddle.speakers = list.map((s) => s && s.participant_id).filter(Boolean);
        view?.setSpeakers(list);
      },
      quality: (list) => view?.setQuality(list),
      screen: (id, sharing) => view?.setScreenSharing(id, sharing),
      chatUpdate: (m) => view?.updateChat(m),
      tileReaction: (id, emoji) => rich?.showTileReaction(id, emoji),
      chat(m, clientMsgId) {
        mod?.typing(m && m.participant_id, false);
        if (clientMsgId && mod?.delivered(clientMsgId, m)) return;
        view?.addChat(m);
      },
      rtt(ms) {
        huddle.rtt = ms;
      },
      error(msg, fatal) {
        // A password room: the prompt says it.
        if (!call.joined && (msg.code === 'password_required' || msg.code === 'wrong_password')) return;
        reportError(msg.code, msg.message, { sticky: fatal });
      },
      failure(type, err) {
        reportError('negotiation_failed', `${type}: ${err && err.message ? err.message : err}`, { sticky: true });
      },
      closed(info) {
        if (!info.joined && previous) {
          // A rejoin that never got through: the meeting is over for this page.
          previous();
          previous = null;
          huddle.reconnecting = false;
          hideBanner();
          endMeeting();
          const reason = info.serverLeaveReason ? t(`leave_reason.${info.serverLeaveReason}`) : t('error.connection_lost');
          showLeft(t('left.ended_title'), reason);
          return;
        }
        if (!info.joined) {
          const code = info.lastError && info.lastError.code;
          if (code === 'password_required' || code === 'wrong_password') {
            askPassword(room, code === 'wrong_password').then((pw) => {
              if (pw === null) join.failed();
              else startCall({ room, token, stream, join, name, password: pw });
            });
            return;
          }
          if (info.serverLeaveReason) {
            // Turned away from the lobby, or the room ended while waiting.
            stopLocal(stream);
            huddle.state = 'left';
            showLeft(t('left.ended_title'), t(`leave_reason.${info.serverLeaveReason}`), info.serverLeaveReason);
            return;
          }
          if (!info.lastError) reportError('connect_failed', null, { sticky: true });
          join.failed();
          return;
        }
        endMeeting();
        let reason;
        if (info.serverLeaveReason) reason = t(`leave_reason.${info.serverLeaveReason}`);
        else if (info.lastError) reason = errorText(info.lastError.code, info.lastError.message);
        else reason = t('error.connection_lost');
        showLeft(t('left.ended_title'), reason);
      },
    },
  });
  huddle.call = call;
  // An effect turned on or off in the meeting replaces the sender's track (no new offer).
  if (huddle.effects) huddle.effects.senderFor = (kind) => call.publishing[kind] || null;

  function toggleLocal(kind) {
    if (!view) return;
    const tracks = kind === 'audio' ? stream.getAudioTracks() : stream.getVideoTracks();
    if (!tracks.length || (huddle.grants && huddle.grants.publish === false)) return;
    if (kind === 'audio') {
      huddle.audioMuted = !huddle.audioMuted;
      call.setMuted('audio', huddle.audioMuted);
      view.renderMic(huddle.audioMuted, false);
    } else {
      huddle.videoMuted = !huddle.videoMuted;
      call.setMuted('video', huddle.videoMuted);
      view.renderCamera(huddle.videoMuted, false);
    }
  }

  // The room API muted us: the track goes off here too; the user may turn it back on.
  function forcedMute(kind) {
    const tracks = kind === 'audio' ? stream.getAudioTracks() : stream.getVideoTracks();
    for (const tr of tracks) tr.enabled = false;
    if (kind === 'audio') {
      huddle.audioMuted = true;
      view?.renderMic(true, false);
    } else {
      huddle.videoMuted = true;
      view?.renderCamera(true, false);
    }
    toast(t(kind === 'audio' ? 'toast.muted_by_host' : 'toast.camera_off_by_host'), 5000);
  }

  function teardown() {
    huddle.effectsUI?.destroy();
    huddle.effectsUI = null;
    host?.destroy();
    host = null;
    huddle.host = null;
    huddle.bar?.destroy();
    huddle.bar = null;
    huddle.statsPopover?.destroy();
    huddle.statsPopover = null;
    huddle.shortcuts?.destroy();
    huddle.shortcuts = null;
    huddle.micLevel?.destroy();
    huddle.micLevel = null;
    if (mod) mod.destroy();
    mod = null;
    huddle.mod = null;
    if (view) view.destroy();
    view = null;
    huddle.view = null;
  }

  function endMeeting() {
    teardown();
    stopLocal(stream);
    huddle.state = 'left';
  }

  function leave() {
    call.leave();
    endMeeting();
    showLeft(t('left.title'), t('leave_reason.left'));
  }

  huddle.toggleLocal = toggleLocal;
  huddle.leave = leave;
  call.connect();
}

async function invite(room, host) {
  // A host's link carries a signed invite (it admits people where open joining is off); an
  // end-to-end encrypted room's link keeps #e2ee (the passphrase is shared separately).
  let query = '';
  if (host?.myHost) {
    const answer = await host.requestInvite();
    if (answer && typeof answer.invite === 'string') query = `?invite=${encodeURIComponent(answer.invite)}`;
  }
  const url = `${location.origin}/r/${encodeURIComponent(room)}${query}${e2eeRequested() ? '#e2ee' : ''}`;
  huddle.lastInvite = url;
  if (await copyText(url)) toast(t('toast.link_copied'));
  else toast(t('toast.copy_failed', { url }), 6000);
}

let audioUnlockArmed = false;
function audioBlocked() {
  if (audioUnlockArmed) return;
  audioUnlockArmed = true;
  showBanner(t('audio.blocked'), { sticky: true, kind: 'info' });
  const unlock = () => {
    audioUnlockArmed = false;
    huddle.view?.resumeAudio();
    hideBanner();
  };
  document.addEventListener('pointerdown', unlock, { once: true });
  document.addEventListener('keydown', unlock, { once: true });
}

function showLeft(title, reason, code) {
  showScreen('left');
  // Turned away at the lobby: say so, and offer no Rejoin (it would only knock again).
  const denied = code === 'denied';
  $('#left-title').textContent = denied ? t('left.denied_title') : title;
  $('#rejoin-button').hidden = denied;
  $('#left-reason').textContent = reason || '';
  document.title = t('app.name');
}

// ---------------------------------------------------------------- start

function onShortcut(e) {
  if (e.defaultPrevented || e.repeat || e.ctrlKey || e.metaKey || e.altKey) return;
  if (isTypingTarget(e.target)) return;
  const key = e.key.toLowerCase();
  if (key !== 'm' && key !== 'v') return;
  const kind = key === 'm' ? 'audio' : 'video';
  if (huddle.state === 'joined' && huddle.toggleLocal) {
    e.preventDefault();
    huddle.toggleLocal(kind);
  } else if (huddle.state === 'join' && joinScreen) {
    e.preventDefault();
    joinScreen.toggle(kind);
  }
}

let joinScreen = null;

function route() {
  const m = location.pathname.match(/^\/r\/([^/]+)\/?$/);
  if (!m) {
    showLanding();
    // The server answers every unknown path with this page (status 404): say so.
    if (location.pathname !== '/') reportError('not_found', null, { sticky: true });
    return;
  }
  let room = '';
  try {
    room = decodeURIComponent(m[1]);
  } catch {
    room = '';
  }
  if (!ROOM_RE.test(room)) {
    // A name in another script (typed into the address bar): its URL-safe form.
    const safe = roomFromTitle(room);
    if (safe) {
      location.replace(`/r/${safe}${location.search}${location.hash}`);
      return;
    }
    showLanding();
    reportError('invalid_room', null, { sticky: true });
    return;
  }
  joinScreen = new JoinScreen(room);
  joinScreen.show();
}

async function boot() {
  huddle.lang = await loadI18n();
  applyI18n(document);
  fillIcons(document);
  initBanner();
  document.addEventListener('keydown', onShortcut);
  $('#rejoin-button').addEventListener('click', () => location.reload());
  window.addEventListener('pagehide', () => {
    if (huddle.state === 'joined' && huddle.call) huddle.call.leave();
  });
  document.documentElement.classList.remove('is-loading');
  route();
}

boot().catch((err) => {
  console.error(err);
  document.documentElement.classList.remove('is-loading');
  showBanner(`Huddle could not start: ${err && err.message ? err.message : err}`, { sticky: true });
});

