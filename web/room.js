// The meeting view: video grid, tiles, chat panel and control bar.
import { t, tn, setLabel, lang } from './i18n.js';
import { icon } from './icons.js';
import { $, el, initials, hueFor } from './ui.js';
import { roomTitle } from './roomname.js';
import { applySpeaker } from './audio-out.js';

const GAP = 12;
// Tile shapes tried: wide ones on a landscape stage, taller ones on a portrait (phone) stage.
const LANDSCAPE_ASPECTS = [16 / 9, 4 / 3];
const PORTRAIT_ASPECTS = [16 / 9, 4 / 3, 1, 3 / 4];
const CHAT_GROUP_MS = 2 * 60 * 1000;
const URL_RE = /\bhttps?:\/\/[^\s<>"']+/g;

// The column count that gives the largest tiles for n tiles in a W x H stage.
// For a landscape stage this gives 1, 2, 2 (3-4), 3 (5-9), 4 (10-16), ... columns.
export function bestLayout(n, W, H, gap = GAP) {
  let best = { cols: 1, rows: Math.max(1, n), w: 0, h: 0 };
  if (n < 1 || W <= 0 || H <= 0) return best;
  for (const aspect of W >= H ? LANDSCAPE_ASPECTS : PORTRAIT_ASPECTS) {
    for (let cols = 1; cols <= n; cols++) {
      const rows = Math.ceil(n / cols);
      let w = (W - gap * (cols - 1)) / cols;
      let h = (H - gap * (rows - 1)) / rows;
      if (w <= 0 || h <= 0) continue;
      if (w / h > aspect) w = h * aspect;
      else h = w / aspect;
      // Prefer the wide tile shape unless another one is clearly bigger.
      const area = w * h * (aspect === 16 / 9 ? 1.15 : 1);
      if (area > best.w * best.h * (best.aspect === 16 / 9 ? 1.15 : 1)) best = { cols, rows, w, h, aspect };
    }
  }
  return best;
}

export class RoomView {
  // opts: {room, selfId, selfName, stream, audioMuted, videoMuted, canPublish, canChat,
  //        getPeer, onToggleMic, onToggleCamera, onLeave, onInvite, onSendChat, onRemoteFrame}
  constructor(opts) {
    this.opts = opts;
    this.selfId = opts.selfId;
    this.tiles = new Map();
    this.gone = new Set();
    this.unread = 0;
    this.lastChat = null;
    this.root = $('#room');
    this.grid = $('#grid');
    this.stage = $('#stage');
    this.chatLog = $('#chat-log');
    this.audioBlocked = false;

    $('#room-name').textContent = roomTitle(opts.room);
    $('#room-name').title = opts.room;
    this.grid.replaceChildren();
    this.chatLog.replaceChildren($('#chat-empty') || el('p', { id: 'chat-empty', class: 'chat-empty' }));
    $('#chat-empty').textContent = t('chat.empty');

    this.selfTile = this.makeSelfTile(opts);
    this.grid.append(this.selfTile.el);

    this.wireControls();
    this.setChatOpen(window.matchMedia('(min-width: 900px)').matches);
    this.setChatAllowed(opts.canChat !== false);
    this.renderMic(opts.audioMuted, !opts.stream.getAudioTracks().length || !opts.canPublish);
    this.renderCamera(opts.videoMuted, !opts.stream.getVideoTracks().length || !opts.canPublish);

    this.resizeObserver = new ResizeObserver(() => this.layout());
    this.resizeObserver.observe(this.stage);
    this.screens = new Map(); // participant id -> screen tile
    this.trackSources = new Map(); // track_id -> 'camera' | 'microphone' | 'screen'
    this.parkedTracks = new Map(); // track_id -> {streamId, track, receiver}: source not known yet
    this.speakerView = false;
    this.focusId = null;
    this.pinnedId = null; // a pinned tile is large whatever the view and the speaker
    this.lastSizes = '';
    this.sizeTimer = setInterval(() => this.reportSizes(), 500);
    this.updateCount();
  }

  destroy() {
    this.resizeObserver.disconnect();
    clearInterval(this.sizeTimer);
    for (const s of this.screens.values()) s.video.srcObject = null;
    this.screens.clear();
    for (const tile of this.tiles.values()) this.stopTileMedia(tile);
    this.tiles.clear();
  }

  // ---- tiles ----

  makeTileShell(id, name, { self = false } = {}) {
    const video = el('video', { class: 'tile-video', autoplay: true, playsInline: true, muted: true });
    video.muted = true; // the property, not only the attribute: video elements never carry sound here
    const avatar = el('div', { class: 'tile-avatar' }, el('span', { class: 'avatar', text: initials(name) }));
    avatar.style.setProperty('--hue', String(hueFor(id)));
    const micBadge = el('span', { class: 'tile-badge mic-badge', hidden: true, title: t('tile.muted') }, icon('mic-off'));
    const camBadge = el('span', { class: 'tile-badge cam-badge', hidden: true, title: t('tile.camera_off') }, icon('video-off'));
    const nameEl = el('span', { class: 'tile-name', text: self ? t('tile.you', { name }) : name });
    // A button: it opens the connection popover (stats.js).
    const qualityEl = el('button', { type: 'button', class: 'tile-quality', hidden: true, dataset: { testid: 'quality' } });
    const label = el('div', { class: 'tile-label' }, qualityEl, micBadge, camBadge, nameEl);
    const root = el('div', { class: self ? 'tile self' : 'tile', dataset: { participantId: id } }, video, avatar, label);
    // role="img": an aria-label needs a role that takes one (axe: aria-prohibited-attr).
    micBadge.setAttribute('role', 'img');
    camBadge.setAttribute('role', 'img');
    micBadge.setAttribute('aria-label', t('tile.muted'));
    camBadge.setAttribute('aria-label', t('tile.camera_off'));
    return { id, el: root, video, avatar, micBadge, camBadge, nameEl, qualityEl, name, audioMuted: false, videoMuted: false };
  }

  makeSelfTile(opts) {
    const tile = this.makeTileShell(opts.selfId, opts.selfName, { self: true });
    tile.el.dataset.testid = 'self-tile';
    tile.video.classList.add('mirrored');
    tile.video.srcObject = opts.stream.getVideoTracks().length ? new MediaStream(opts.stream.getVideoTracks()) : null;
    tile.video.play().catch(() => {});
    tile.hasVideo = opts.stream.getVideoTracks().length > 0;
    tile.audioMuted = !!opts.audioMuted || !opts.stream.getAudioTracks().length;
    tile.videoMuted = !!opts.videoMuted;
    this.renderTile(tile);
    return tile;
  }

  ensureTile(id, info) {
    if (id === this.selfId) return null;
    let tile = this.tiles.get(id);
    if (!tile) {
      if (this.gone.has(id)) return null;
      const name = (info && info.name) || '…';
      tile = this.makeTileShell(id, name);
      tile.el.dataset.testid = 'tile';
      tile.video.dataset.remote = '1';
      tile.audio = el('audio', { class: 'tile-audio', autoplay: true });
      tile.el.append(tile.audio);
      tile.videoTrack = null;
      tile.audioTrack = null;
      tile.audioReceiver = null;
      tile.tracks = new Map(); // track_id -> kind, from the server's Track objects
      tile.pinButton = el('button', { type: 'button', class: 'tile-pin', 'aria-pressed': 'false', dataset: { testid: 'pin' } }, icon('pin'));
      tile.pinButton.setAttribute('aria-label', t('tile.pin', { name }));
      tile.pinButton.title = t('tile.pin', { name });
      tile.pinButton.addEventListener('click', () => this.pin(this.pinnedId === id ? null : id));
      tile.el.append(tile.pinButton);
      this.watchFrames(tile.video);
      tile.video.addEventListener('resize', () => this.renderTile(tile));
      this.grid.insertBefore(tile.el, this.selfTile.el);
      this.tiles.set(id, tile);
      this.updateCount();
      this.layout();
    }
    if (info) {
      if (typeof info.name === 'string' && info.name !== tile.name) {
        tile.name = info.name;
        tile.nameEl.textContent = info.name;
        $('.avatar', tile.avatar).textContent = initials(info.name);
      }
      if (typeof info.audio_muted === 'boolean') tile.audioMuted = info.audio_muted;
      if (typeof info.video_muted === 'boolean') tile.videoMuted = info.video_muted;
      if (Array.isArray(info.tracks)) for (const tr of info.tracks) if (tr && tr.track_id) this.noteTrack(tile, tr);
      if (typeof info.screen_sharing === 'boolean') this.setScreenSharing(id, info.screen_sharing);
      this.renderTile(tile);
    }
    return tile;
  }

  // Record when the first remote video frame is shown (test hook).
  watchFrames(video) {
    const mark = () => this.opts.onRemoteFrame?.();
    video.addEventListener('playing', mark);
    if (typeof video.requestVideoFrameCallback === 'function') {
      const loop = () => {
        if (video.videoWidth > 0) mark();
        else video.requestVideoFrameCallback(loop);
      };
      video.requestVideoFrameCallback(loop);
    }
  }

  renderTile(tile) {
    const liveVideo = tile.el.classList.contains('self')
      ? tile.hasVideo && !tile.videoMuted
      : !!tile.videoTrack &&
        tile.videoTrack.readyState === 'live' &&
        !tile.videoTrack.muted &&
        !tile.videoMuted &&
        tile.video.videoWidth > 0;
    tile.el.classList.toggle('video-on', liveVideo);
    tile.micBadge.hidden = !tile.audioMuted;
    tile.camBadge.hidden = !tile.videoMuted;
    tile.el.classList.toggle('audio-muted', !!tile.audioMuted);
    tile.el.classList.toggle('video-muted', !!tile.videoMuted);
  }

  participantJoined(p) {
    if (!p || !p.participant_id) return;
    this.gone.delete(p.participant_id);
    this.ensureTile(p.participant_id, p);
  }

  participantLeft(id) {
    const tile = this.tiles.get(id);
    this.gone.add(id);
    if (this.pinnedId === id) this.pinnedId = null;
    if (!tile) return;
    this.stopTileMedia(tile);
    tile.el.remove();
    this.tiles.delete(id);
    this.updateCount();
    this.layout();
  }

  stopTileMedia(tile) {
    if (tile.video) tile.video.srcObject = null;
    if (tile.audio) tile.audio.srcObject = null;
  }

  setRemoteMute(id, kind, muted) {
    const tile = this.tiles.get(id);
    if (!tile) return;
    if (kind === 'audio') tile.audioMuted = muted;
    else if (kind === 'video') tile.videoMuted = muted;
    this.renderTile(tile);
  }

  // The server's id of a remote track (m-lines are reused: not always its msid).
  tid(track) {
    return this.opts.trackId ? this.opts.trackId(track) : track && track.id;
  }

  trackPublished(id, track) {
    const tile = this.ensureTile(id);
    if (tile && track && track.track_id) this.noteTrack(tile, track);
  }

  noteTrack(tile, track) {
    tile.tracks.set(track.track_id, track.kind);
    if (track.source) this.trackSources.set(track.track_id, track.source);
    // A video track that arrived before its track_published (the offer and the event race):
    // now its source is known, put it where it belongs.
    const parked = this.parkedTracks.get(track.track_id);
    if (parked) {
      this.parkedTracks.delete(track.track_id);
      this.attachTrack(parked.streamId, parked.track, parked.receiver);
    } else if (track.source === 'screen' && tile.videoTrack && this.tid(tile.videoTrack) === track.track_id) {
      const screen = tile.videoTrack;
      const camera = tile.prevVideoTrack;
      this.detachKind(tile, 'video');
      if (camera && camera.readyState === 'live') this.attachTrack(tile.id, camera);
      this.attachScreen(tile.id, screen);
    }
  }

  // A remote track arrived (RTCTrackEvent); streamId is the publisher's participant id.
  attachTrack(streamId, track, receiver) {
    const tile = this.ensureTile(streamId);
    if (!tile) return;
    const onGone = () => {
      if (track.kind === 'video' && tile.videoTrack === track) this.detachKind(tile, 'video');
      if (track.kind === 'audio' && tile.audioTrack === track) this.detachKind(tile, 'audio');
    };
    if (track.kind === 'video' && this.trackSources.get(this.tid(track)) === 'screen') {
      this.attachScreen(streamId, track);
      return;
    }
    if (track.kind === 'video' && !this.trackSources.has(this.tid(track))) {
      const cur = tile.videoTrack;
      if (cur && cur !== track && this.trackSources.get(this.tid(cur)) === 'camera') {
        // Keep the camera until track_published says what this one is (often a screen).
        this.parkedTracks.set(this.tid(track), { streamId, track, receiver });
        return;
      }
    }
    if (track.kind === 'video' && tile.videoTrack && tile.videoTrack !== track) tile.prevVideoTrack = tile.videoTrack;
    track.addEventListener('ended', onGone);
    track.addEventListener('mute', () => this.renderTile(tile));
    track.addEventListener('unmute', () => this.renderTile(tile));
    if (track.kind === 'video') {
      tile.videoTrack = track;
      tile.video.srcObject = new MediaStream([track]);
      tile.video.play().catch(() => {});
    } else if (track.kind === 'audio') {
      tile.audioTrack = track;
      tile.audioReceiver = receiver;
      tile.audio.srcObject = new MediaStream([track]);
      applySpeaker(tile.audio);
      tile.audio.play().catch((err) => {
        if (err && err.name === 'NotAllowedError') this.opts.onAudioBlocked?.();
      });
    }
    this.renderTile(tile);
  }

  // Removes a remote track whose m-line was stopped.
  removeTrack(streamId, track) {
    const screen = this.screens.get(streamId);
    if (screen && screen.track === track) this.removeScreen(streamId);
    const tile = this.tiles.get(streamId);
    if (!tile) return;
    if (tile.videoTrack === track) this.detachKind(tile, 'video');
    if (tile.audioTrack === track) this.detachKind(tile, 'audio');
  }

  detachKind(tile, kind) {
    if (kind === 'video') {
      tile.videoTrack = null;
      tile.video.srcObject = null;
    } else {
      tile.audioTrack = null;
      tile.audioReceiver = null;
      tile.audio.srcObject = null;
    }
    this.renderTile(tile);
  }

  resumeAudio() {
    for (const tile of this.tiles.values()) {
      if (tile.audio && tile.audio.srcObject && tile.audio.paused) tile.audio.play().catch(() => {});
    }
  }

  // ---- server-driven quality: speakers, connection quality, screens, layer sizes ----

  // The server's speaker list (loudest first), from the RTP audio-level extension.
  setSpeakers(list) {
    const ids = new Set(list.map((x) => x && x.participant_id));
    for (const tile of [...this.tiles.values(), this.selfTile]) tile.el.classList.toggle('speaking', ids.has(tile.id));
    const top = list.find((x) => x && x.participant_id !== this.selfId && this.tiles.has(x.participant_id));
    if (top && this.speakerView && this.focusId !== top.participant_id) {
      this.focusId = top.participant_id;
      this.layout();
    }
  }

  setQuality(list) {
    for (const q of list) {
      if (!q || !q.participant_id) continue;
      const tile = q.participant_id === this.selfId ? this.selfTile : this.tiles.get(q.participant_id);
      if (!tile || !['good', 'fair', 'poor'].includes(q.quality)) continue;
      tile.qualityEl.hidden = false;
      tile.qualityEl.dataset.quality = q.quality;
      tile.qualityEl.title = t(`quality.${q.quality}`);
      tile.qualityEl.setAttribute('aria-label', t(`quality.${q.quality}`));
    }
  }

  screenTile(id) {
    let s = this.screens.get(id);
    if (!s) {
      const owner = id === this.selfId ? this.selfTile : this.tiles.get(id);
      const name = owner ? owner.name : '…';
      const video = el('video', { class: 'tile-video', autoplay: true, playsInline: true, muted: true });
      video.muted = true;
      const label = el('div', { class: 'tile-label' }, el('span', { class: 'tile-name', text: t('tile.screen', { name }) }));
      const root = el('div', { class: 'tile screen video-on', hidden: true, dataset: { participantId: id, testid: 'screen-tile' } }, video, label);
      s = { id, el: root, video, track: null, sharing: false };
      this.screens.set(id, s);
      this.grid.prepend(root);
    }
    return s;
  }

  attachScreen(id, track) {
    const s = this.screenTile(id);
    s.track = track;
    s.video.srcObject = new MediaStream([track]);
    s.video.play().catch(() => {});
    track.addEventListener('ended', () => this.removeScreen(id));
    this.renderScreen(s);
  }

  // Our own share, shown to ourselves too.
  setLocalScreen(track) {
    if (track) {
      this.attachScreen(this.selfId, track);
      this.setScreenSharing(this.selfId, true);
    } else {
      this.removeScreen(this.selfId);
    }
    this.renderScreenButton(!!track);
  }

  setScreenSharing(id, sharing) {
    const s = this.screenTile(id);
    s.sharing = sharing;
    this.renderScreen(s);
  }

  removeScreen(id) {
    const s = this.screens.get(id);
    if (!s) return;
    s.video.srcObject = null;
    s.el.remove();
    this.screens.delete(id);
    this.layout();
  }

  renderScreen(s) {
    const show = s.sharing && !!s.track;
    if (s.el.hidden === !show) return;
    s.el.hidden = !show;
    s.el.classList.toggle('focused', show);
    this.layout();
  }

  // Pins a remote tile (null: unpins): it is shown large, beside any shared screen, until
  // unpinned or its participant leaves.
  pin(id) {
    this.pinnedId = id && this.tiles.has(id) ? id : null;
    for (const tile of this.tiles.values()) {
      const on = tile.id === this.pinnedId;
      tile.el.classList.toggle('pinned', on);
      tile.pinButton?.setAttribute('aria-pressed', String(on));
      const label = on ? t('tile.unpin', { name: tile.name }) : t('tile.pin', { name: tile.name });
      tile.pinButton?.setAttribute('aria-label', label);
      if (tile.pinButton) tile.pinButton.title = label;
    }
    this.layout();
  }

  toggleSpeakerView() {
    this.speakerView = !this.speakerView;
    if (this.speakerView && !this.tiles.has(this.focusId)) this.focusId = this.tiles.keys().next().value || null;
    this.renderViewButton();
    this.layout();
  }

  renderViewButton() {
    const b = $('#view-button');
    if (!b) return;
    b.setAttribute('aria-pressed', String(this.speakerView));
    setLabel(b, this.speakerView ? t('controls.grid_view') : t('controls.speaker_view'));
  }

  renderScreenButton(sharing) {
    const b = $('#screen-button');
    if (!b) return;
    b.setAttribute('aria-pressed', String(!!sharing));
    b.classList.toggle('active', !!sharing);
    setLabel(b, sharing ? t('controls.screen_stop') : t('controls.screen_share'));
  }

  // Tells the server the size (device pixels) of each remote video, 0 x 0 when it is not
  // shown, so that it forwards the simulcast layer that fits, or nothing.
  reportSizes() {
    const send = this.opts.onVideoSizes;
    if (!send) return;
    const dpr = window.devicePixelRatio || 1;
    const stage = this.stage.getBoundingClientRect();
    const visible = (elem) => {
      if (document.hidden || elem.hidden || !elem.isConnected) return false;
      const r = elem.getBoundingClientRect();
      return r.width > 0 && r.right > stage.left && r.left < stage.right && r.bottom > stage.top && r.top < stage.bottom;
    };
    const tracks = [];
    const add = (track, elem, shown) => {
      if (!track || !this.tid(track)) return;
      const ok = shown && visible(elem);
      tracks.push({
        track_id: this.tid(track),
        width: ok ? Math.round(elem.clientWidth * dpr) : 0,
        height: ok ? Math.round(elem.clientHeight * dpr) : 0,
      });
    };
    for (const tile of this.tiles.values()) add(tile.videoTrack, tile.el, !tile.videoMuted);
    for (const s of this.screens.values()) if (s.id !== this.selfId) add(s.track, s.el, s.sharing);
    const key = JSON.stringify(tracks);
    if (key === this.lastSizes || !tracks.length) return;
    this.lastSizes = key;
    send(tracks);
  }

  updateCount() {
    const n = this.tiles.size + 1;
    $('#participant-count-text').textContent = tn('room.participants', n);
    this.grid.dataset.count = String(n);
  }

  layout() {
    const big = this.pinnedId || (this.speakerView ? this.focusId : null);
    for (const tile of this.tiles.values()) tile.el.classList.toggle('focused', tile.id === big);
    const focused = [...this.grid.children].filter((c) => !c.hidden && c.classList.contains('focused'));
    this.grid.classList.toggle('focus', focused.length > 0);
    if (focused.length) return this.layoutFocus(focused);
    const tiles = [...this.grid.children].filter((c) => !c.hidden);
    const n = tiles.length;
    const rect = this.stage.getBoundingClientRect();
    const style = getComputedStyle(this.stage);
    const W = rect.width - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    const H = rect.height - parseFloat(style.paddingTop) - parseFloat(style.paddingBottom);
    const { cols, rows, w, h } = bestLayout(n, W, H);
    const gs = this.grid.style;
    gs.setProperty('--cols', String(cols));
    gs.setProperty('--rows', String(rows));
    gs.setProperty('--tile-w', `${Math.floor(w)}px`);
    gs.setProperty('--tile-h', `${Math.floor(h)}px`);
    this.grid.dataset.cols = String(cols);
    // Centre a short last row: every tile spans two half-columns, and the
    // first tile of the last row starts further in.
    const rest = n % cols;
    tiles.forEach((tile, i) => {
      tile.style.gridColumn = rest && i === n - rest ? `${cols - rest + 1} / span 2` : '';
    });
  }

  // Screens and the speaker big, side by side; everyone else in a strip below. The strip is
  // laid out like a small grid (bestLayout) in at most a quarter of the stage's height, so it
  // holds any count in its rows and the big tiles get what is left: nothing leaves the stage.
  layoutFocus(focused) {
    const rect = this.stage.getBoundingClientRect();
    const style = getComputedStyle(this.stage);
    const W = Math.floor(rect.width - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight));
    const H = Math.floor(rect.height - parseFloat(style.paddingTop) - parseFloat(style.paddingBottom));
    const others = [...this.grid.children].filter((c) => !c.hidden).length - focused.length;
    let stripW = 0;
    let stripH = 0;
    let stripTotal = 0;
    if (others) {
      const budget = Math.max(48, Math.min(140 * Math.ceil(others / 8), H * 0.25));
      const fit = bestLayout(others, W, budget);
      stripW = Math.floor(fit.w);
      stripH = Math.floor(fit.h);
      stripTotal = fit.rows * stripH + (fit.rows - 1) * GAP;
    }
    // Side by side on a wide stage, one above the other on a tall one.
    const n = focused.length;
    const rows = n > 1 && W < H - stripTotal ? n : 1;
    const cols = Math.ceil(n / rows);
    const focusH = Math.max(0, Math.floor((H - stripTotal - (others ? GAP : 0) - GAP * (rows - 1)) / rows));
    const gs = this.grid.style;
    gs.setProperty('--strip-h', `${stripH}px`);
    gs.setProperty('--strip-w', `${stripW}px`);
    gs.setProperty('--focus-w', `${Math.floor((W - GAP * (cols - 1)) / cols)}px`);
    gs.setProperty('--focus-h', `${focusH}px`);
    for (const c of this.grid.children) c.style.gridColumn = '';
  }

  // ---- local state ----

  renderMic(muted, unavailable) {
    const b = $('#mic-button');
    b.setAttribute('aria-pressed', String(!!muted || !!unavailable));
    b.classList.toggle('off', !!muted || !!unavailable);
    b.disabled = !!unavailable;
    setLabel(b, unavailable ? t('controls.mic_unavailable') : muted ? t('controls.mic_unmute') : t('controls.mic_mute'));
    this.selfTile.audioMuted = !!muted || !!unavailable;
    this.renderTile(this.selfTile);
  }

  renderCamera(off, unavailable) {
    const b = $('#camera-button');
    b.setAttribute('aria-pressed', String(!!off || !!unavailable));
    b.classList.toggle('off', !!off || !!unavailable);
    b.disabled = !!unavailable;
    setLabel(b, unavailable ? t('controls.camera_unavailable') : off ? t('controls.camera_on') : t('controls.camera_off'));
    this.selfTile.videoMuted = !!off || !!unavailable;
    this.renderTile(this.selfTile);
  }

  wireControls() {
    // Replace the buttons' listeners from an earlier session in this page.
    for (const id of ['mic-button', 'camera-button', 'screen-button', 'view-button', 'invite-button', 'chat-button', 'leave-button', 'chat-close']) {
      const old = $(`#${id}`);
      const fresh = old.cloneNode(true);
      old.replaceWith(fresh);
    }
    const form = $('#chat-form');
    const freshForm = form.cloneNode(true);
    form.replaceWith(freshForm);

    $('#mic-button').addEventListener('click', () => this.opts.onToggleMic());
    $('#camera-button').addEventListener('click', () => this.opts.onToggleCamera());
    $('#screen-button')?.addEventListener('click', () => this.opts.onToggleScreen?.());
    $('#view-button')?.addEventListener('click', () => this.toggleSpeakerView());
    const screenButton = $('#screen-button');
    if (screenButton) screenButton.hidden = !this.opts.canShareScreen;
    this.renderScreenButton(false);
    this.renderViewButton();
    $('#invite-button').addEventListener('click', () => this.opts.onInvite());
    $('#leave-button').addEventListener('click', () => this.opts.onLeave());
    $('#chat-button').addEventListener('click', () => this.setChatOpen(!this.chatOpen));
    $('#chat-close').addEventListener('click', () => this.setChatOpen(false));
    const input = $('#chat-input');
    const send = $('#chat-send');
    const sync = () => {
      send.disabled = !input.value.trim() || !this.chatAllowed;
    };
    input.addEventListener('input', sync);
    $('#chat-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const text = input.value.trim();
      if (!text || !this.chatAllowed) return;
      if (this.opts.onSendChat(text)) input.value = '';
      sync();
      input.focus();
    });
    sync();
  }

  // ---- chat ----

  setChatAllowed(allowed) {
    this.chatAllowed = allowed;
    const input = $('#chat-input');
    input.disabled = !allowed;
    // The reason is a line of its own over the box (it would not fit in the box as a
    // placeholder).
    input.placeholder = allowed ? t('chat.placeholder') : '';
    let note = $('#chat-note');
    if (!note) {
      note = el('p', { id: 'chat-note', class: 'chat-note', dataset: { testid: 'chat-note' } });
      $('#chat-form').before(note);
    }
    note.textContent = allowed ? '' : t('chat.not_allowed');
    note.hidden = allowed;
    $('#chat-send').disabled = true;
  }

  setChatOpen(open) {
    this.chatOpen = open;
    this.root.classList.toggle('chat-open', open);
    const b = $('#chat-button');
    b.setAttribute('aria-pressed', String(open));
    b.classList.toggle('active', open);
    if (open) {
      this.unread = 0;
      this.renderUnread();
      this.scrollChat(true);
    }
    // The stage changes size on wide screens.
    requestAnimationFrame(() => this.layout());
  }

  renderUnread() {
    const badge = $('#chat-badge');
    badge.hidden = this.unread === 0;
    badge.textContent = this.unread > 9 ? '9+' : String(this.unread);
  }

  chatHistory(list) {
    if (!Array.isArray(list)) return;
    for (const m of list) this.addChat(m, { history: true });
    this.scrollChat(true);
  }

  // A message changed (chat_update): rebuild its item in place.
  updateChat(m) {
    if (!m || m.id === undefined) return;
    const old = this.chatLog.querySelector(`.chat-message[data-id="${CSS.escape(String(m.id))}"]`);
    if (old) this.addChat(m, { history: true, replaceEl: old });
  }

  addChat(m, { history = false, replaceEl = null } = {}) {
    if (!m || typeof m.text !== 'string') return;
    const empty = $('#chat-empty');
    if (empty) empty.remove();
    const log = this.chatLog;
    const nearBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 80;
    const own = m.participant_id === this.selfId;
    const ts = typeof m.ts === 'number' ? m.ts : Date.now();
    const prev = this.lastChat;
    const continued = prev && prev.participant_id === m.participant_id && ts - prev.ts < CHAT_GROUP_MS;
    const time = new Date(ts);
    let timeText;
    try {
      timeText = new Intl.DateTimeFormat(lang(), { hour: '2-digit', minute: '2-digit' }).format(time);
    } catch {
      timeText = time.toLocaleTimeString();
    }
    const header = el(
      'div',
      { class: 'chat-meta' },
      el('span', { class: 'chat-name', text: own ? t('chat.you') : String(m.name || m.identity || '?') }),
      el('time', { class: 'chat-time', datetime: time.toISOString(), text: timeText }),
    );
    const body = el('p', { class: 'chat-text' });
    appendLinkified(body, m.text);
    const item = el('div', { class: `chat-message${own ? ' own' : ''}${continued ? ' continued' : ''}` }, header, body);
    item.dataset.testid = 'chat-message';
    if (m.id !== undefined) item.dataset.id = String(m.id);
    item.title = timeText;
    this.opts.decorateChat?.(item, m);
    if (replaceEl) {
      if (replaceEl.classList.contains('continued')) item.classList.add('continued');
      else item.classList.remove('continued');
      replaceEl.replaceWith(item);
      return;
    }
    log.append(item);
    this.lastChat = { participant_id: m.participant_id, ts };
    if (!history && !this.chatOpen && !own) {
      this.unread += 1;
      this.renderUnread();
    }
    if (own || nearBottom || history) this.scrollChat();
  }

  scrollChat() {
    this.chatLog.scrollTop = this.chatLog.scrollHeight;
  }
}

// Text with http(s) links made clickable, built from text nodes only.
function appendLinkified(parent, text) {
  let last = 0;
  for (const match of text.matchAll(URL_RE)) {
    let url = match[0].replace(/[.,;:!?)\]]+$/, '');
    const start = match.index;
    if (start > last) parent.append(document.createTextNode(text.slice(last, start)));
    const a = el('a', { href: url, target: '_blank', rel: 'noopener noreferrer nofollow', text: url });
    parent.append(a);
    last = start + url.length;
  }
  if (last < text.length) parent.append(document.createTextNode(text.slice(last)));
}
