// The connection popover: a click on a tile's quality dot shows what this page measures for
// that tile (WebRTC getStats, once a second while open): round trip, loss and jitter per kind,
// bitrate, resolution and frame rate. The dot's colour is the server's verdict (`quality`,
// judged from loss, round trip and per-kind jitter; see docs/web-client.md).

import { $, el } from './ui.js';
import { t } from './i18n.js';
import { openLayer, closeLayer } from './popover.js';

export class StatsPopover {
  // opts: {view (RoomView), getPeer: () => RTCPeerConnection}
  constructor(opts) {
    this.view = opts.view;
    this.getPeer = opts.getPeer;
    this.prev = new Map(); // stats id -> previous sample
    this.tile = null;
    $('#stats-popover')?.remove();
    this.el = el('div', { id: 'stats-popover', class: 'stats-popover', role: 'dialog', hidden: true, dataset: { testid: 'stats-popover' } });
    this.el.setAttribute('aria-label', t('stats.title'));
    document.body.append(this.el);
    this.onClick = (e) => {
      const dot = e.target.closest?.('.tile-quality');
      if (dot && this.view.grid.contains(dot)) {
        const tile = this.tileFor(dot.closest('.tile')?.dataset.participantId);
        if (tile) return this.open(tile, dot);
      }
      if (!this.el.hidden && !this.el.contains(e.target)) this.close();
    };
    document.addEventListener('click', this.onClick);
  }

  destroy() {
    this.close();
    document.removeEventListener('click', this.onClick);
    this.el.remove();
  }

  tileFor(id) {
    if (!id) return null;
    return id === this.view.selfId ? this.view.selfTile : this.view.tiles.get(id);
  }

  open(tile, anchor) {
    this.tile = tile;
    this.el.hidden = false;
    const r = anchor.getBoundingClientRect();
    const w = Math.min(260, window.innerWidth - 16);
    this.el.style.width = `${w}px`;
    this.el.style.left = `${Math.max(8, Math.min(r.left, window.innerWidth - w - 8))}px`;
    this.el.style.bottom = `${Math.max(8, window.innerHeight - r.top + 8)}px`;
    this.el.replaceChildren(el('p', { class: 'stats-title', text: t('stats.loading') }));
    clearInterval(this.timer);
    this.timer = setInterval(() => this.refresh(), 1000);
    this.refresh();
    // Esc closes it, the focus goes back to the dot (popover.js).
    openLayer(this.el, { close: () => this.close(), opener: anchor, focus: this.el });
  }

  close() {
    clearInterval(this.timer);
    this.timer = null;
    this.tile = null;
    this.el.hidden = true;
    closeLayer(this.el);
  }

  async refresh() {
    const tile = this.tile;
    const pc = this.getPeer();
    if (!tile || !pc) return;
    const s = await measure(pc, tile, tile === this.view.selfTile, this.prev);
    if (tile !== this.tile) return;
    this.stats = s;
    const row = (key, value, testid) =>
      el('div', { class: 'stats-row', dataset: { testid } }, el('dt', { text: t(key) }), el('dd', { text: value }));
    const ms = (x) => (x === null ? '–' : `${Math.round(x * 1000)} ms`);
    const pct = (x) => (x === null ? '–' : `${(x * 100).toFixed(1)} %`);
    const q = tile.qualityEl.dataset.quality;
    this.el.replaceChildren(
      el('p', { class: 'stats-title', text: `${tile.name}: ${q ? t(`quality.${q}`) : t('stats.no_verdict')}` }),
      el('dl', { class: 'stats-list' },
        row('stats.rtt', ms(s.rtt), 'stats-rtt'),
        row('stats.loss_audio', pct(s.audio.loss), 'stats-loss-audio'),
        row('stats.loss_video', pct(s.video.loss), 'stats-loss-video'),
        row('stats.jitter_audio', ms(s.audio.jitter), 'stats-jitter-audio'),
        row('stats.jitter_video', ms(s.video.jitter), 'stats-jitter-video'),
        row('stats.bitrate', s.kbps === null ? '–' : `${Math.round(s.kbps)} kbit/s`, 'stats-bitrate'),
        row('stats.resolution', s.video.width ? `${s.video.width}×${s.video.height}` : '–', 'stats-resolution'),
        row('stats.fps', s.video.fps === null ? '–' : String(Math.round(s.video.fps)), 'stats-fps')),
    );
  }
}

// What this page sees of one tile: inbound streams for a remote tile, outbound (with the far
// end's reports) for one's own.
export async function measure(pc, tile, self, prev) {
  const out = { rtt: null, kbps: null, audio: { loss: null, jitter: null }, video: { loss: null, jitter: null, width: 0, height: 0, fps: null } };
  const report = await pc.getStats();
  for (const s of report.values()) {
    if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded' && typeof s.currentRoundTripTime === 'number') out.rtt = s.currentRoundTripTime;
  }
  let bits = 0;
  let seconds = 0;
  const senders = self ? pc.getSenders() : pc.getReceivers();
  for (const kind of ['audio', 'video']) {
    const track = self ? null : kind === 'video' ? tile.videoTrack : tile.audioTrack;
    const parts = self
      ? senders.filter((x) => x.track && x.track.kind === kind && x.track.readyState === 'live')
      : senders.filter((x) => x.track && x.track === track);
    for (const part of parts) {
      const rs = await part.getStats();
      for (const s of rs.values()) {
        if (s.type === (self ? 'outbound-rtp' : 'inbound-rtp')) {
          const p = prev.get(s.id);
          prev.set(s.id, s);
          const bytes = self ? s.bytesSent : s.bytesReceived;
          if (p) {
            const dt = (s.timestamp - p.timestamp) / 1000;
            if (dt > 0) {
              bits += ((bytes - (self ? p.bytesSent : p.bytesReceived)) * 8) / 1000;
              seconds = Math.max(seconds, dt);
            }
            if (!self) {
              const got = s.packetsReceived - p.packetsReceived;
              const lost = Math.max(0, (s.packetsLost || 0) - (p.packetsLost || 0));
              if (got + lost > 0) out[kind].loss = Math.max(out[kind].loss || 0, lost / (got + lost));
            }
          }
          if (!self && typeof s.jitter === 'number') out[kind].jitter = Math.max(out[kind].jitter || 0, s.jitter);
          if (kind === 'video' && (s.frameWidth || 0) > out.video.width) {
            out.video.width = s.frameWidth;
            out.video.height = s.frameHeight;
            out.video.fps = typeof s.framesPerSecond === 'number' ? s.framesPerSecond : out.video.fps;
          }
        } else if (self && s.type === 'remote-inbound-rtp') {
          if (typeof s.fractionLost === 'number') out[kind].loss = Math.max(out[kind].loss || 0, s.fractionLost);
          if (typeof s.jitter === 'number') out[kind].jitter = Math.max(out[kind].jitter || 0, s.jitter);
        }
      }
    }
  }
  if (seconds > 0) out.kbps = bits / seconds;
  return out;
}
