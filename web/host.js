// Hosts in the page (docs/protocol.md, "Hosts"; docs/web-client.md): who hosts, and for a host
// the room's controls (lobby, lock, end for all) and per-person actions (mute, stop video,
// remove, make host, spotlight for everyone) in the participants panel. Invite links made by a host carry a signed,
// time-limited invite, so that they admit people on a server with open joining off.

import { $, el } from './ui.js';
import { t } from './i18n.js';

const INVITE_WAIT_MS = 5000;

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

  // Our own `joined`: whether we host, and the room's lobby and lock.
  fromJoined(msg) {
    this.flags = { lobby: !!msg.lobby, locked: !!msg.locked };
    // Shown by the page once the tiles exist (app.js).
    this.spotlightId = msg.spotlight || null;
    if (msg.host) {
      this.setHost(this.selfId, true);
      this.mod.announce?.(t('host.you_are_host'));
    } else {
      this.render();
    }
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

  // The room's controls, for hosts.
  render() {
    this.panel.hidden = !this.myHost;
    if (!this.myHost) {
      this.panel.replaceChildren();
      return;
    }
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
    this.panel.replaceChildren(
      toggle('lobby', 'host-lobby', t('host.lobby')),
      toggle('locked', 'host-lock', t('host.lock')),
      end,
    );
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
