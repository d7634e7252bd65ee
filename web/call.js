// Signaling and media for one session, following docs/protocol.md:
// WebSocket /ws, join -> joined, one client offer, then only server offers.

export const PROTOCOL_VERSION = 1;
// The client pings every 5 s; with no server message (pongs included) for 15 s the socket is
// taken for dead and replaced (docs/protocol.md, "Reconnecting").
const PING_INTERVAL_MS = 5000;
const SILENCE_MS = 15000;
// Reconnect backoff (each delay ±25 %), and when to give up: the server keeps a dropped
// participant for 20 s (signaling.resume_window_secs); after that a resume fails and the client
// joins afresh, which it keeps trying for a minute.
const RECONNECT_DELAYS_MS = [250, 500, 1000, 2000, 3000, 5000];
const RECONNECT_GIVE_UP_MS = 60000;

// Camera simulcast: three layers, lowest first (the server ranks them in this order). Always
// offered: the client offers once, at join, and the server pauses the layers nobody watches
// (dynacast, the `layers` message), so a small meeting costs little more than one layer.
// Browsers send only the layers the capture size allows.
export const SIMULCAST_ENCODINGS = [
  { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150000 },
  { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500000 },
  { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 1500000 },
];

// Error codes after which the server closes the socket.
export const FATAL_ERRORS = new Set(['unsupported_protocol', 'invalid_token', 'token_expired', 'wrong_room', 'room_full', 'password_required', 'wrong_password', 'room_locked']);

function iceServersFrom(list) {
  if (!Array.isArray(list)) return [];
  const out = [];
  for (const s of list) {
    if (!s || !s.urls) continue;
    const entry = { urls: Array.isArray(s.urls) ? s.urls.map(String) : [String(s.urls)] };
    if (typeof s.username === 'string') entry.username = s.username;
    if (typeof s.credential === 'string') entry.credential = s.credential;
    out.push(entry);
  }
  return out;
}

// Opus DTX: the browser's encoder follows the remote description's `usedtx`, so asking for
// it here makes a silent or muted microphone send a comfort-noise packet every 400 ms instead
// of 50 packets a second (the SFU forwards what arrives and never decodes).
export function withDtx(sdp) {
  if (typeof sdp !== 'string') return sdp;
  const opus = new Set([...sdp.matchAll(/^a=rtpmap:(\d+) opus\/48000/gim)].map((m) => m[1]));
  return sdp.replace(/^a=fmtp:(\d+) ([^\r\n]*)/gm, (line, pt, params) =>
    opus.has(pt) && !/usedtx=/.test(params) ? `a=fmtp:${pt} ${params};usedtx=1` : line,
  );
}

export class Call {
  // opts: {room, token, stream (local MediaStream), relay (bool), log, on: {...handlers}}
  constructor(opts) {
    this.room = opts.room;
    this.token = opts.token;
    this.password = opts.password || null; // for a room with a password
    this.stream = opts.stream || new MediaStream();
    this.relay = !!opts.relay;
    this.e2ee = opts.e2ee || null; // E2EE (web/e2ee.js) in an end-to-end encrypted room
    this.on = opts.on;
    this.log = opts.log || (() => {});
    this.ws = null;
    this.pc = null;
    this.dc = null;
    this.participantId = null;
    this.joined = false;
    this.ended = false;
    this.lastError = null;
    this.serverLeaveReason = null;
    this.queue = Promise.resolve();
    this.offerSent = false;
    this.pendingCandidates = [];
    this.endOfCandidatesSent = false;
    this.pingTimer = 0;
    this.publishing = { audio: null, video: null, screen: null };
    this.resetSlots();
    this.screenTrack = null;
    this.resumeToken = null;
    this.reconnecting = false;
    this.reconnectAttempt = 0;
    this.reconnectStarted = 0;
    this.reconnectTimer = 0;
    this.lastHeard = 0;
    this.roomBase = null; // cluster mode: the room's node, after a redirect
    // The server said `leave` with action `reconnect` (a restart): join again after this many
    // milliseconds instead of ending.
    this.reconnectAfterMs = null;
    // A rejoin after a restart: keep trying to join (the server may not answer yet) until
    // this time (ms since the epoch).
    this.retryJoinUntil = opts.retryJoinUntil || 0;
  }

  connect() {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    // Cluster mode: a `redirect` names the room's node for this connection. A later resume goes
    // first to that node (the session is there); after three failed tries, to the front
    // address, which places the room afresh if that node is gone.
    const resumeBase = this.reconnecting && this.reconnectAttempt <= 3 ? this.roomBase : null;
    const target = this.redirectBase || resumeBase;
    const base = target ? target.replace(/^http/, 'ws') : `${proto}//${location.host}`;
    this.redirectBase = null;
    const url = `${base}/ws?room=${encodeURIComponent(this.room)}`;
    const ws = new WebSocket(url);
    this.ws = ws;
    ws.onopen = () => {
      this.lastHeard = Date.now();
      if (this.reconnecting && this.resumeToken) {
        this.send({ type: 'resume', protocol: PROTOCOL_VERSION, token: this.token, resume_token: this.resumeToken });
        return;
      }
      const join = { type: 'join', protocol: PROTOCOL_VERSION, token: this.token };
      if (this.password) join.password = this.password;
      this.send(join);
    };
    ws.onmessage = (ev) => {
      if (ws !== this.ws) return;
      this.lastHeard = Date.now();
      if (typeof ev.data !== 'string') return;
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        this.log('unparseable server frame', ev.data);
        return;
      }
      if (!msg || typeof msg !== 'object' || typeof msg.type !== 'string') return;
      if (msg.type === 'error') this.lastError = msg;
      this.trace('in', msg);
      // Strictly one message at a time, in arrival order.
      this.queue = this.queue
        .then(() => (this.ended ? undefined : this.handle(msg)))
        .catch((err) => {
          this.log('handling', msg.type, 'failed:', err);
          this.on.failure?.(msg.type, err);
        });
    };
    ws.onclose = (ev) => this.socketLost(ws, ev);
    ws.onerror = () => {
      /* onclose follows and reports */
    };
  }

  // The socket closed (or was taken for dead): resume when the session may be resumed,
  // otherwise report the end.
  socketLost(ws, ev) {
    if (ws !== this.ws) return; // an old socket
    this.stopTimers();
    if (this.ended) return; // we left: nothing to report
    // Decide after the messages that arrived before the close are handled.
    this.queue = this.queue.then(() => {
      if (this.ended || ws !== this.ws) return;
      if (this.reconnectAfterMs !== null) {
        // The server is restarting: its sessions go with it, so join afresh when it is back.
        return this.rejoin({ delayMs: this.reconnectAfterMs, restart: true });
      }
      if (this.mayRetryJoin()) {
        this.scheduleReconnect();
        return;
      }
      if (this.mayResume()) {
        this.scheduleReconnect();
        return;
      }
      this.ended = true;
      this.closePeer();
      this.on.closed?.({
        code: ev.code,
        reason: ev.reason,
        joined: this.joined,
        lastError: this.lastError,
        serverLeaveReason: this.serverLeaveReason,
        reconnecting: this.reconnecting,
      });
    });
  }

  // A dropped socket is resumed unless the server ended the session or refused us for good.
  mayResume() {
    if (!this.joined || !this.resumeToken || this.serverLeaveReason) return false;
    const code = this.lastError && this.lastError.code;
    if (code && (FATAL_ERRORS.has(code) || code === 'rate_limited')) return false;
    return !this.reconnecting || Date.now() - this.reconnectStarted < RECONNECT_GIVE_UP_MS;
  }

  // A rejoin whose join did not get through yet (the restarted server is not up, or still
  // draining) tries again, unless it was refused for good.
  mayRetryJoin() {
    if (this.joined || this.serverLeaveReason || Date.now() > this.retryJoinUntil) return false;
    const code = this.lastError && this.lastError.code;
    return !(code && FATAL_ERRORS.has(code));
  }

  scheduleReconnect() {
    if (!this.reconnecting) {
      this.reconnecting = true;
      this.reconnectStarted = Date.now();
      this.reconnectAttempt = 0;
      this.trace('local', { type: 'reconnecting' });
      this.on.reconnecting?.();
    }
    const base = RECONNECT_DELAYS_MS[Math.min(this.reconnectAttempt, RECONNECT_DELAYS_MS.length - 1)];
    this.reconnectAttempt += 1;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => {
      if (!this.ended) this.connect();
    }, base * (0.75 + Math.random() * 0.5));
  }

  // No word from the server for too long: the network is gone even if the socket says open.
  checkSilence() {
    if (!this.ws || Date.now() - this.lastHeard < SILENCE_MS) return;
    const ws = this.ws;
    ws.onclose = null;
    ws.onmessage = null;
    ws.onerror = null;
    try {
      ws.close(4000, 'silent');
    } catch {
      /* closing anyway */
    }
    this.socketLost(ws, { code: 4000, reason: 'silent' });
  }

  startPinging() {
    clearInterval(this.pingTimer);
    this.pingTimer = setInterval(() => {
      this.checkSilence();
      this.send({ type: 'ping', ts: Date.now() });
    }, PING_INTERVAL_MS);
  }

  // The server took us back: same participant, same media; an ICE-restart offer follows.
  onResumed(msg) {
    this.reconnecting = false;
    this.lastError = null;
    this.startPinging();
    this.on.resumed?.(msg);
  }

  // The resume window had passed (or the server restarted): join afresh. `opts` (for the
  // page): {delayMs: wait this long first, restart: the server said it is restarting}.
  rejoin(opts = {}) {
    this.ended = true;
    this.stopTimers();
    this.closePeer();
    try {
      this.ws.close(1000, 'rejoining');
    } catch {
      /* closing anyway */
    }
    this.on.rejoin?.(opts);
  }

  send(obj) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(obj));
    this.trace('out', obj);
    return true;
  }

  // A short record of the conversation with the server (types and small fields, no SDP).
  trace(dir, msg) {
    const list = this.on.traceList;
    if (!list) return;
    const entry = { at: Math.round(performance.now()), dir, type: msg.type };
    for (const k of ['active', 'code', 'kind', 'muted', 'participant_id', 'reason', 'track_id']) if (k in msg) entry[k] = msg[k];
    if (msg.type === 'candidate') entry.candidate = String(msg.candidate).slice(0, 60);
    if (msg.track) entry.track = msg.track;
    if (msg.type === 'video_sizes') entry.tracks = msg.tracks;
    if (msg.participant) entry.participant_id = msg.participant.participant_id;
    list.push(entry);
    if (list.length > 500) list.splice(0, list.length - 500);
  }

  async handle(msg) {
    switch (msg.type) {
      case 'joined':
        return this.onJoined(msg);
      case 'resumed':
        return this.onResumed(msg);
      case 'answer':
        if (!this.pc) throw new Error('answer before our offer');
        await this.pc.setRemoteDescription({ type: 'answer', sdp: withDtx(msg.sdp) });
        return;
      case 'offer': {
        if (!this.pc) throw new Error('offer before joined');
        await this.pc.setRemoteDescription({ type: 'offer', sdp: withDtx(msg.sdp) });
        const answer = await this.pc.createAnswer();
        await this.pc.setLocalDescription(answer);
        this.send({ type: 'answer', sdp: this.pc.localDescription.sdp });
        return;
      }
      case 'media_slots':
        for (const slot of Array.isArray(msg.slots) ? msg.slots : []) {
          if (!slot || typeof slot.mid !== 'string') continue;
          this.slots.set(slot.mid, slot);
          if (this.receivers.has(slot.mid)) this.applySlot(slot.mid);
        }
        return;
      case 'layers':
        return this.setLayers(msg.track_id, Array.isArray(msg.active) ? msg.active : []);
      case 'speakers':
        return this.on.speakers?.(Array.isArray(msg.speakers) ? msg.speakers : []);
      case 'quality':
        return this.on.quality?.(Array.isArray(msg.participants) ? msg.participants : []);
      case 'screen':
        return this.on.screen?.(msg.participant_id, !!msg.sharing);
      case 'participant_joined':
        return this.on.participantJoined?.(msg.participant);
      case 'participant_left':
        return this.on.participantLeft?.(msg.participant_id, msg.reason);
      case 'track_published':
        return this.on.trackPublished?.(msg.participant_id, msg.track);
      case 'mute':
        return this.on.mute?.(msg.participant_id, msg.kind, !!msg.muted, !!msg.by_server);
      case 'chat':
        if (this.e2ee) msg.message = await this.e2ee.openMessage(msg.message);
        return this.on.chat?.(msg.message, typeof msg.client_msg_id === 'string' ? msg.client_msg_id : null);
      case 'chat_update':
        if (this.e2ee) msg.message = await this.e2ee.openMessage(msg.message);
        return this.on.chatUpdate?.(msg.message);
      case 'tile_reaction':
        return this.on.tileReaction?.(msg.participant_id, msg.emoji);
      case 'hand':
        return this.on.hand?.(msg.participant_id, !!msg.raised);
      case 'typing':
        return this.on.typing?.(msg.participant_id, msg.active !== false);
      case 'lobby':
        return this.on.lobby?.();
      case 'knock':
        return this.on.knock?.(msg);
      case 'knock_ended':
        return this.on.knockEnded?.(msg.participant_id, msg.outcome);
      case 'pong':
        if (typeof msg.ts === 'number') this.on.rtt?.(Date.now() - msg.ts);
        return;
      case 'leave':
        if (msg.action === 'reconnect') {
          const hint = Number(msg.reconnect_after_ms);
          this.reconnectAfterMs = Number.isFinite(hint) ? Math.min(Math.max(hint, 0), 30000) : 1000;
          return;
        }
        this.serverLeaveReason = msg.reason || 'removed';
        return;
      case 'redirect':
        return this.followRedirect(msg);
      case 'error':
        if (msg.code === 'resume_failed' && this.reconnecting) return this.rejoin();
        this.lastError = msg;
        return this.on.error?.(msg, FATAL_ERRORS.has(msg.code));
      default:
        if (this.on.other?.(msg)) return;
        this.log('ignoring unknown server message', msg.type);
    }
  }

  // Cluster mode: the room lives on another node; join there (at most 3 hops per connect).
  followRedirect(msg) {
    this.redirects = (this.redirects || 0) + 1;
    if (this.joined || this.redirects > 3 || typeof msg.url !== 'string' || !/^https?:\/\/[^/]+/.test(msg.url)) {
      this.log('redirect ignored', msg.url);
      return;
    }
    const old = this.ws;
    old.onclose = null;
    old.onmessage = null;
    old.onerror = null;
    old.close(1000, 'redirected');
    this.redirectBase = msg.url.replace(/\/+$/, '');
    this.roomBase = this.redirectBase;
    this.connect();
  }

  async onJoined(msg) {
    this.redirects = 0;
    this.joined = true;
    this.participantId = msg.participant_id;
    this.resumeToken = typeof msg.resume_token === 'string' ? msg.resume_token : null;
    if (this.e2ee && Array.isArray(msg.chat_history)) {
      msg.chat_history = await Promise.all(msg.chat_history.map((m) => this.e2ee.openMessage(m)));
    }
    this.on.joined?.(msg);
    this.startPinging();

    const config = { iceServers: iceServersFrom(msg.ice_servers), bundlePolicy: 'max-bundle' };
    if (this.relay) config.iceTransportPolicy = 'relay';
    if (this.e2ee) this.e2ee.peerConfig(config);
    this.resetSlots();
    const pc = new RTCPeerConnection(config);
    this.pc = pc;
    this.on.peer?.(pc);

    pc.onicecandidate = (e) => this.onLocalCandidate(e.candidate);
    pc.ontrack = (e) => {
      if (this.e2ee) this.e2ee.setupReceiver(e.receiver, e.track.kind);
      const mid = e.transceiver && e.transceiver.mid;
      // The server reuses m-lines: `media_slots` says what each one carries now.
      if (mid != null && this.slots.has(mid)) {
        this.receivers.set(mid, e.receiver);
        this.applySlot(mid);
        return;
      }
      const stream = e.streams && e.streams[0];
      if (!stream) {
        this.log('remote track without a stream id; cannot tell whose it is');
        return;
      }
      this.on.track?.(stream.id, e.track, e.receiver, stream);
    };
    pc.onconnectionstatechange = () => {
      this.trace('pc', { type: `connection:${pc.connectionState}` });
      this.on.connectionState?.(pc.connectionState);
    };

    const mayPublish = !msg.grants || msg.grants.publish !== false;
    const transceivers = [];
    if (mayPublish) {
      for (const kind of ['audio', 'video']) {
        const track = kind === 'audio' ? this.stream.getAudioTracks()[0] : this.stream.getVideoTracks()[0];
        if (!track) continue;
        const init = { direction: 'sendonly', streams: [this.stream] };
        if (kind === 'video') init.sendEncodings = SIMULCAST_ENCODINGS.map((e) => ({ ...e }));
        const tr = pc.addTransceiver(track, init);
        if (this.e2ee) {
          if (kind === 'video') this.e2ee.preferVp8(tr);
          this.e2ee.setupSender(tr.sender, kind);
        }
        this.publishing[kind] = tr.sender;
        transceivers.push([tr, kind === 'audio' ? 'microphone' : 'camera']);
      }
      // The screen m-line is negotiated now, without a track: sharing later is a
      // replaceTrack, with no new offer (the client offers only once).
      if (navigator.mediaDevices && typeof navigator.mediaDevices.getDisplayMedia === 'function') {
        const tr = pc.addTransceiver('video', { direction: 'sendonly', streams: [this.stream] });
        if (this.e2ee) {
          this.e2ee.preferVp8(tr);
          this.e2ee.setupSender(tr.sender, 'video');
        }
        this.publishing.screen = tr.sender;
        transceivers.push([tr, 'screen']);
      }
    }
    // Nothing goes over a data channel: one is opened only so that an offer without any
    // track of its own (a viewer) still has an m-line to carry ICE and DTLS.
    if (!transceivers.length) this.dc = pc.createDataChannel('huddle');

    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    const sources = {};
    for (const [tr, source] of transceivers) if (tr.mid != null) sources[tr.mid] = source;
    this.send({ type: 'offer', sdp: pc.localDescription.sdp, sources });
    this.offerSent = true;
    for (const c of this.pendingCandidates.splice(0)) this.send(c);
    this.on.offered?.();
  }

  // What each receiving m-line carries (mid -> media_slots entry), its receiver once ontrack
  // gave it, and which participant's tile has its track now.
  resetSlots() {
    this.slots = new Map();
    this.receivers = new Map();
    this.attached = new Map();
    this.trackIds = new WeakMap();
  }

  // The server's track id of a remote track: what its m-line carries now (see media_slots),
  // else the msid it was negotiated with.
  trackId(track) {
    return (track && this.trackIds.get(track)) || (track && track.id);
  }

  // Shows what m-line `mid` carries now: the previous track's tile lets go of it, the new
  // publisher's tile takes it.
  applySlot(mid) {
    const receiver = this.receivers.get(mid);
    const slot = this.slots.get(mid);
    if (!receiver || !slot) return;
    const track = receiver.track;
    const cur = this.attached.get(mid);
    if (cur && cur.participantId === slot.participant_id && cur.trackId === slot.track_id) return;
    if (cur) {
      this.attached.delete(mid);
      this.on.untrack?.(cur.participantId, track);
    }
    if (!slot.participant_id || !slot.track_id) return;
    this.trackIds.set(track, slot.track_id);
    this.attached.set(mid, { participantId: slot.participant_id, trackId: slot.track_id });
    this.on.track?.(slot.participant_id, track, receiver, new MediaStream([track]));
  }

  onLocalCandidate(candidate) {
    let msg;
    // mDNS host candidates (<uuid>.local, used when camera/microphone access was not
    // granted) cannot be resolved by the server; it finds that address as peer-reflexive.
    if (candidate && candidate.candidate && /\.local$/i.test(candidate.candidate.split(' ')[4] || '')) return;
    if (candidate && candidate.candidate) {
      msg = {
        type: 'candidate',
        candidate: candidate.candidate,
        sdp_mid: candidate.sdpMid ?? null,
        sdp_m_line_index: candidate.sdpMLineIndex ?? null,
      };
    } else {
      if (this.endOfCandidatesSent) return;
      this.endOfCandidatesSent = true;
      msg = { type: 'candidate', candidate: '', sdp_mid: null, sdp_m_line_index: null };
    }
    if (this.offerSent) this.send(msg);
    else this.pendingCandidates.push(msg);
  }

  setMuted(kind, muted) {
    const tracks = kind === 'audio' ? this.stream.getAudioTracks() : this.stream.getVideoTracks();
    for (const tr of tracks) tr.enabled = !muted;
    if (this.joined) this.send({ type: 'mute', kind, muted });
  }

  // Dynacast: keep only the camera layers someone watches.
  async setLayers(trackId, active) {
    const sender = this.publishing.video;
    if (!sender) return;
    const params = sender.getParameters();
    if (!params.encodings || params.encodings.length < 2) return;
    let changed = false;
    for (const enc of params.encodings) {
      if (!enc.rid) continue;
      const want = active.includes(enc.rid);
      if (enc.active !== want) {
        enc.active = want;
        changed = true;
      }
    }
    this.activeLayers = active.slice();
    if (changed) await sender.setParameters(params);
  }

  // Sizes (device pixels) at which remote video tracks are shown; 0 x 0 = hidden.
  sendVideoSizes(tracks) {
    return this.send({ type: 'video_sizes', tracks });
  }

  canShareScreen() {
    return !!this.publishing.screen;
  }

  async startScreen(track) {
    if (!this.publishing.screen) throw new Error('screen sharing was not negotiated');
    if ('contentHint' in track) track.contentHint = 'detail';
    await this.publishing.screen.replaceTrack(track);
    this.screenTrack = track;
    this.send({ type: 'screen', sharing: true });
  }

  async stopScreen() {
    const track = this.screenTrack;
    this.screenTrack = null;
    if (track) track.stop();
    if (this.publishing.screen) await this.publishing.screen.replaceTrack(null).catch(() => {});
    this.send({ type: 'screen', sharing: false });
  }

  // Returns the message's client_msg_id (the server's echo carries it back), or false.
  // `extra`: more fields, e.g. {attachment_id}. In an end-to-end encrypted room the text is
  // encrypted first (in order: one chain of sends).
  sendChat(text, extra = {}) {
    const id = `c${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
    const msg = { type: 'chat', text, client_msg_id: id, ...extra };
    if (!this.e2ee) return this.send(msg) ? id : false;
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.sendSealed(msg);
    return id;
  }

  sendChatEdit(messageId, text) {
    const msg = { type: 'chat_edit', message_id: messageId, text };
    if (this.e2ee) this.sendSealed(msg);
    else this.send(msg);
  }

  sendSealed(msg) {
    this.sealChain = (this.sealChain || Promise.resolve())
      .then(async () => {
        if (msg.text) msg.text = await this.e2ee.sealText(msg.text);
        this.send(msg);
      })
      .catch((err) => this.log('chat encryption failed', err));
  }

  stopTimers() {
    clearInterval(this.pingTimer);
    this.pingTimer = 0;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = 0;
  }

  closePeer() {
    if (this.pc) {
      try {
        this.pc.close();
      } catch {
        /* already closed */
      }
    }
  }

  // The user leaves.
  leave() {
    if (this.ended) return;
    this.ended = true;
    this.stopTimers();
    this.send({ type: 'leave' });
    this.closePeer();
    try {
      this.ws.close(1000, 'left');
    } catch {
      /* closing anyway */
    }
  }
}
