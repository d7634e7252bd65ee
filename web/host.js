// Hosts in the page (docs/protocol.md, "Hosts"; docs/web-client.md): who hosts, and for a host
// the room's controls (lobby, lock, recording, end for all) and per-person actions (mute, stop
// video, remove, make host, spotlight for everyone) in the participants panel. Invite links made by a host carry a signed,
// time-limited invite, so that they admit people on a server with open joining off. Whether the
// room is being recorded (`joined.recording`, `recording` messages) is shown to everyone by the
// header's indicator, and said by the toast when it changes.

import { $, el } from './ui.js';
import { t } from './i18n.js';

const INVITE_WAIT_MS = 5000;
// A host's start or stop waits this long for the server's `recording` before another click counts.
const RECORD_WAIT_MS = 5000;

export class HostUI {
  // opts: {call, mod (ModerationUI), selfId, onSpotlight(id, previous)}
  constructor(opts) {
    this.call = opts.call;
    this.mod = opts.mod;
    this.selfId = opts.selfId;
    this.onSpotlight = opts.onSpotlight || (() => {});
    // Whom a host put in the spotlight (shown large for everyone, as a pin).
    this.spotlightId = null;
    this.hosts = new Set();
    this.flags = { lobby: false, locked: false };
    this.recording = false;
    this.recordTimer = 0; // a start or stop sent, its `recording` not back yet
    this.inviteWaiters = [];
    $('#host-controls')?.remove();
    this.panel = el('section', { id: 'host-controls', class: 'host-controls', hidden: true, dataset: { testid: 'host-controls' } });
    this.panel.setAttribute('aria-label', t('host.controls'));
    const title = this.mod.peoplePanel.querySelector('.people-title');
    title.after(this.panel);
    this.mod.decoratePerson = (li, p) => this.decoratePerson(li, p);
    this.mod.peopleKey = () => `${[...this.hosts].sort().join(',')}|${this.isHost(this.selfId)}|${this.spotlightId}`;
    this.render();
  }

  destroy() {
    clearTimeout(this.recordTimer);
    this.renderIndicator(false);
    this.panel.remove();
    this.mod.decoratePerson = null;
    this.mod.peopleKey = null;
    for (const w of this.inviteWaiters) w(null);
    this.inviteWaiters = [];
  }

  get myHost() {
    return this.hosts.has(this.selfId);
  }

  isHost(id) {
    return this.hosts.has(id);
  }

  // Our own `joined`: whether we host, the room's lobby and lock, and whether it is being
  // recorded (said first: one toast says both).
  fromJoined(msg) {
    this.flags = { lobby: !!msg.lobby, locked: !!msg.locked };
    // Shown by the page once the tiles exist (app.js).
    this.spotlightId = msg.spotlight || null;
    this.setRecording(!!msg.recording, { announce: false });
    const notice = [this.recording ? t('recording.started') : '', msg.host ? t('host.you_are_host') : ''].filter(Boolean).join(' ');
    if (msg.host) this.setHost(this.selfId, true);
    else this.render();
    if (notice) this.mod.announce?.(notice);
  }

  // A Participant object (joined, participant_joined): its `host` flag.
  note(p) {
    if (p && p.participant_id && p.host) this.setHost(p.participant_id, true);
  }

  participantLeft(id) {
    if (this.spotlightId === id) this.spotlightId = null;
    if (this.hosts.delete(id)) this.mod.renderPeople();
  }

  setHost(id, host) {
    if (host) this.hosts.add(id);
    else this.hosts.delete(id);
    document.querySelector('#room')?.classList.toggle('is-host', this.myHost);
    this.render();
    this.mod.renderPeople();
  }

  // Server messages this module owns; true when handled.
  onMessage(msg) {
    switch (msg.type) {
      case 'host':
        if (msg.participant_id === this.selfId && msg.host !== false && !this.myHost) this.mod.announce?.(t('host.you_are_host'));
        this.setHost(msg.participant_id, msg.host !== false);
        return true;
      case 'room_settings':
        this.flags = { lobby: !!msg.lobby, locked: !!msg.locked };
        this.render();
        return true;
      case 'spotlight': {
        const previous = this.spotlightId;
        this.spotlightId = msg.participant_id || null;
        this.onSpotlight(this.spotlightId, previous);
        const who = this.spotlightId && this.mod.view?.tiles.get(this.spotlightId)?.name;
        if (who) this.mod.announce?.(t('host.spotlight_notice', { name: who }));
        this.mod.renderPeople();
        return true;
      }
      case 'invite':
        for (const w of this.inviteWaiters.splice(0)) w(msg);
        return true;
      case 'recording':
        this.setRecording(!!msg.active);
        return true;
      default:
        return false;
    }
  }

  // A signed invite for this room (null when the server did not answer in time).
  requestInvite() {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.inviteWaiters = this.inviteWaiters.filter((w) => w !== done);
        resolve(null);
      }, INVITE_WAIT_MS);
      const done = (msg) => {
        clearTimeout(timer);
        resolve(msg);
      };
      this.inviteWaiters.push(done);
      this.call.send({ type: 'invite' });
    });
  }

  // The room is being recorded, or no longer: the indicator, the host's button, and a notice
  // when it changed.
  setRecording(on, { announce = true } = {}) {
    const changed = on !== this.recording;
    this.recording = on;
    clearTimeout(this.recordTimer);
    this.recordTimer = 0;
    this.renderIndicator(on);
    if (changed) this.render();
    if (changed && announce) this.mod.announce?.(t(on ? 'recording.started' : 'recording.stopped'));
  }

  // The header's indicator (index.html), for everyone.
  renderIndicator(on) {
    const pill = $('#recording-indicator');
    if (!pill) return;
    pill.hidden = !on;
    pill.title = t('recording.started');
  }

  // A host starts or stops the recording; the server's `recording` (to everyone) confirms it.
  toggleRecording() {
    if (this.recordTimer) return;
    if (!this.call.send({ type: 'recording', active: !this.recording })) return;
    this.recordTimer = setTimeout(() => {
      this.recordTimer = 0;
    }, RECORD_WAIT_MS);
  }

  // The room's controls, for hosts.
  render() {
    this.panel.hidden = !this.myHost;
    if (!this.myHost) {
      this.panel.replaceChildren();
      return;
    }
    // The controls are made anew: the one that had the focus gets it back.
    const focused = this.panel.contains(document.activeElement) ? document.activeElement.dataset.testid : null;
    const toggle = (key, testid, label) => {
      const input = el('input', { type: 'checkbox', dataset: { testid } });
      input.checked = this.flags[key];
      input.addEventListener('change', () => this.call.send({ type: 'room_settings', [key]: input.checked }));
      return el('label', { class: 'switch host-switch' }, input, el('span', { class: 'switch-track', 'aria-hidden': 'true' }), el('span', { text: label }));
    };
    const end = el('button', { type: 'button', class: 'secondary-button danger-text', text: t('host.end_all'), dataset: { testid: 'host-end' } });
    end.addEventListener('click', () => {
      if (window.confirm(t('host.end_confirm'))) this.call.send({ type: 'end_room' });
    });
    const record = el('button', { type: 'button', id: 'record-button', class: 'secondary-button record-button', dataset: { testid: 'host-record' } },
      el('span', { class: 'record-dot', 'aria-hidden': 'true' }),
      el('span', { text: this.recording ? t('host.record_stop') : t('host.record_start') }));
    record.classList.toggle('active', this.recording);
    record.addEventListener('click', () => this.toggleRecording());
    this.panel.replaceChildren(
      toggle('lobby', 'host-lobby', t('host.lobby')),
      toggle('locked', 'host-lock', t('host.lock')),
      record,
      end,
    );
    if (focused) this.panel.querySelector(`[data-testid="${focused}"]`)?.focus();
  }

  // Per-person actions in the participants list, for hosts.
  decoratePerson(li, p) {
    const name = li.querySelector('.people-name');
    if (this.isHost(p.id) && name) name.append(el('span', { class: 'host-badge', text: t('host.badge'), dataset: { testid: 'host-badge' } }));
    if (!this.myHost || p.id === this.selfId) return;
    const action = (act, label, testid) => {
      const b = el('button', { type: 'button', class: 'person-action', text: label, dataset: { testid, participantId: p.id } });
      b.setAttribute('aria-label', `${label}: ${p.name}`);
      b.addEventListener('click', () => {
        this.call.send({ type: 'moderate', participant_id: p.id, action: act });
      });
      return b;
    };
    const actions = el('div', { class: 'person-actions' });
    if (!(p.tile && p.tile.audioMuted)) actions.append(action('mute_audio', t('host.mute'), 'host-mute'));
    if (!(p.tile && p.tile.videoMuted)) actions.append(action('mute_video', t('host.stop_video'), 'host-stop-video'));
    if (!this.isHost(p.id)) actions.append(action('make_host', t('host.make_host'), 'host-make-host'));
    if (this.spotlightId === p.id) actions.append(action('unspotlight', t('host.unspotlight'), 'host-unspotlight'));
    else actions.append(action('spotlight', t('host.spotlight'), 'host-spotlight'));
    actions.append(action('remove', t('host.remove'), 'host-remove'));
    li.append(actions);
  }
}
