// The participant side of moderation (docs/protocol.md, "Moderation"): raised hands and the
// participant list, typing indicators, chat delivery marks, lobby knocks with admit/deny, the
// lobby waiting screen and the password prompt. Its elements are built here so that the room
// markup stays as it is.

import { $, el, showScreen, toast } from './ui.js';
import { icon } from './icons.js';
import { t, setLabel } from './i18n.js';
import { openLayer, closeLayer, showDialog } from './popover.js';

const TYPING_SEND_MS = 3000; // at most one `typing` per this while typing
const TYPING_SHOW_MS = 5000; // an indicator without a fresh `typing` goes away after this

// The waiting screen of a lobby room. `onLeave` runs when the user gives up.
export function showLobby(room, onLeave) {
  let screen = $('#lobby');
  if (!screen) {
    screen = el(
      'section',
      { id: 'lobby', class: 'screen lobby-screen', dataset: { testid: 'lobby' } },
      el('div', { class: 'lobby-card' },
        el('div', { class: 'lobby-spinner', 'aria-hidden': 'true' }),
        el('h1', { id: 'lobby-title' }),
        el('p', { id: 'lobby-text' }),
        el('button', { type: 'button', id: 'lobby-leave', class: 'secondary-button' })),
    );
    document.body.append(screen);
  }
  $('#lobby-title').textContent = t('lobby.title');
  $('#lobby-text').textContent = t('lobby.text', { room });
  const leave = $('#lobby-leave');
  leave.textContent = t('lobby.leave');
  const fresh = leave.cloneNode(true);
  leave.replaceWith(fresh);
  fresh.addEventListener('click', () => onLeave(), { once: true });
  showScreen('lobby');
}

// Asks for a room's password; resolves to it, or null when the user cancels.
export function askPassword(room, wrong) {
  return new Promise((resolve) => {
    $('#password-dialog')?.remove();
    const input = el('input', { type: 'password', id: 'password-input', autocomplete: 'off', required: true, dataset: { testid: 'room-password' } });
    const error = el('p', { class: 'password-error', text: wrong ? t('password.wrong') : '', hidden: !wrong });
    const cancel = el('button', { type: 'button', class: 'secondary-button', text: t('password.cancel') });
    const ok = el('button', { type: 'submit', class: 'primary-button', text: t('password.join'), dataset: { testid: 'room-password-join' } });
    const form = el('form', { method: 'dialog', class: 'password-form' },
      el('h2', { text: t('password.title') }),
      el('p', { text: t('password.text', { room }) }),
      el('label', { for: 'password-input', text: t('password.label') }),
      input, error,
      el('div', { class: 'password-actions' }, cancel, ok));
    const dialog = el('dialog', { id: 'password-dialog', class: 'password-dialog' }, form);
    document.body.append(dialog);
    let done = false;
    const finish = (value) => {
      if (done) return;
      done = true;
      dialog.close();
      dialog.remove();
      resolve(value);
    };
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      if (input.value) finish(input.value);
    });
    cancel.addEventListener('click', () => finish(null));
    dialog.addEventListener('cancel', () => finish(null));
    showDialog(dialog, { close: () => finish(null), focus: input });
  });
}

export class ModerationUI {
  // opts: {view (RoomView), call (Call), selfId, selfName, canChat}
  constructor(opts) {
    this.view = opts.view;
    this.call = opts.call;
    this.selfId = opts.selfId;
    this.selfName = opts.selfName;
    this.hands = new Set();
    this.myHand = false;
    this.typists = new Map(); // participant id -> timer
    this.lastTypingSent = 0;
    this.pending = new Map(); // client_msg_id -> chat item
    this.peopleOpen = false;

    // Controls: raise hand and the participant list, before the chat button.
    for (const id of ['hand-button', 'people-button', 'people-panel', 'typing-indicator', 'knocks']) $(`#${id}`)?.remove();
    const chatButton = $('#chat-button');
    this.handButton = el('button', { type: 'button', id: 'hand-button', class: 'control-button', 'aria-pressed': 'false', dataset: { testid: 'hand-raise' } }, icon('hand'));
    this.peopleButton = el('button', { type: 'button', id: 'people-button', class: 'control-button', 'aria-pressed': 'false', dataset: { testid: 'people-toggle' } }, icon('users'));
    chatButton.before(this.handButton, this.peopleButton);
    this.handButton.addEventListener('click', () => this.toggleHand());
    this.peopleButton.addEventListener('click', () => this.setPeopleOpen(!this.peopleOpen));
    this.renderHandButton();
    setLabel(this.peopleButton, t('controls.people'));

    this.peopleList = el('ul', { class: 'people-list', dataset: { testid: 'people-list' } });
    this.peoplePanel = el('aside', { id: 'people-panel', class: 'people-panel', hidden: true, tabindex: '-1', 'aria-label': t('people.title'), dataset: { testid: 'people-panel' } },
      el('h2', { class: 'people-title', text: t('people.title') }), this.peopleList);
    $('#room').append(this.peoplePanel);

    // Typing indicator, under the chat log.
    this.typingEl = el('p', { id: 'typing-indicator', class: 'typing-indicator', 'aria-live': 'polite', dataset: { testid: 'typing' } });
    $('#chat-log').after(this.typingEl);
    const input = $('#chat-input');
    if (input && opts.canChat !== false) {
      input.addEventListener('input', () => this.onChatInput(input.value));
    }

    this.knocks = el('div', { id: 'knocks', class: 'knocks', 'aria-live': 'polite' });
    document.body.append(this.knocks);
    this.renderTimer = setInterval(() => this.peopleOpen && this.renderPeople(), 1000);
  }

  destroy() {
    clearInterval(this.renderTimer);
    closeLayer(this.peoplePanel);
    for (const timer of this.typists.values()) clearTimeout(timer);
    this.typists.clear();
    this.handButton.remove();
    this.peopleButton.remove();
    this.peoplePanel.remove();
    this.typingEl.remove();
    this.knocks.remove();
  }

  // ---- hands ----

  toggleHand() {
    this.call.send({ type: 'hand', raised: !this.myHand });
  }

  renderHandButton() {
    this.handButton.classList.toggle('active', this.myHand);
    this.handButton.setAttribute('aria-pressed', String(this.myHand));
    setLabel(this.handButton, this.myHand ? t('controls.hand_lower') : t('controls.hand_raise'));
  }

  // A notice for everyone (the toast is a polite live region).
  announce(text) {
    toast(text, 4000);
  }

  setHand(id, raised) {
    if (raised && !this.hands.has(id) && id !== this.selfId) {
      const who = this.view.tiles.get(id)?.name || '?';
      this.announce(t('hand.notice', { name: who, position: this.hands.size + 1 }));
    }
    if (raised) this.hands.add(id);
    else this.hands.delete(id);
    if (id === this.selfId) {
      this.myHand = raised;
      this.renderHandButton();
    }
    const tile = id === this.selfId ? this.view.selfTile : this.view.tiles.get(id);
    if (tile) {
      let badge = tile.el.querySelector('.hand-badge');
      if (!badge) {
        badge = el('span', { class: 'tile-badge hand-badge', dataset: { testid: 'hand-badge' }, title: t('tile.hand_raised'), text: '✋' });
        badge.setAttribute('role', 'img');
        badge.setAttribute('aria-label', t('tile.hand_raised'));
        tile.el.querySelector('.tile-label')?.prepend(badge);
      }
      badge.hidden = !raised;
      tile.el.classList.toggle('hand-raised', raised);
    }
    this.renderPeople();
  }

  participantLeft(id) {
    this.hands.delete(id);
    this.typing(id, false);
    this.renderPeople();
  }

  // ---- participant list ----

  setPeopleOpen(open) {
    this.peopleOpen = open;
    this.lastPeopleKey = null;
    this.peoplePanel.hidden = !open;
    this.peopleButton.classList.toggle('active', open);
    this.peopleButton.setAttribute('aria-pressed', String(open));
    $('#room').classList.toggle('people-open', open);
    this.renderPeople();
    // A popover (popover.js): Esc closes it, Tab stays in it while the focus is there, and the
    // focus goes back to its button. Opening it moves the focus to it.
    if (open) openLayer(this.peoplePanel, { close: () => this.setPeopleOpen(false), opener: this.peopleButton, focus: this.peoplePanel });
    else closeLayer(this.peoplePanel);
  }

  renderPeople() {
    if (!this.peopleOpen) return;
    const people = [{ id: this.selfId, name: t('tile.you', { name: this.selfName }), tile: this.view.selfTile }];
    for (const [id, tile] of this.view.tiles) people.push({ id, name: tile.name, tile });
    // Raised hands first, in the order they were raised (a Set keeps insertion order).
    const order = [...this.hands];
    const rank = (id) => (order.includes(id) ? order.indexOf(id) : order.length);
    people.sort((a, b) => rank(a.id) - rank(b.id));
    // Rebuilt only when something shown changed, so that a button is never replaced under
    // the pointer.
    const key = JSON.stringify(people.map((p) => [p.id, p.name, rank(p.id), !!p.tile?.audioMuted, !!p.tile?.videoMuted])) + (this.peopleKey?.() || '');
    if (key === this.lastPeopleKey) return;
    this.lastPeopleKey = key;
    this.peopleList.replaceChildren(
      ...people.map((p) => {
        const li = el('li', { class: 'people-item', dataset: { participantId: p.id, testid: 'person' } },
          el('span', { class: 'people-name', text: p.name }),
          el('span', { class: 'people-state' },
            this.hands.has(p.id) ? el('span', { title: t('tile.hand_raised'), text: `✋ ${rank(p.id) + 1}` }) : '',
            p.tile && p.tile.audioMuted ? el('span', { title: t('tile.muted'), text: '🔇' }) : '',
            p.tile && p.tile.videoMuted ? el('span', { title: t('tile.camera_off'), text: '📷' }) : ''));
        this.decoratePerson?.(li, p);
        return li;
      }),
    );
  }

  // ---- typing ----

  onChatInput(value) {
    const now = Date.now();
    if (!value.trim()) {
      if (this.lastTypingSent) this.call.send({ type: 'typing', active: false });
      this.lastTypingSent = 0;
      return;
    }
    if (now - this.lastTypingSent >= TYPING_SEND_MS) {
      this.lastTypingSent = now;
      this.call.send({ type: 'typing', active: true });
    }
  }

  typing(id, active) {
    clearTimeout(this.typists.get(id));
    this.typists.delete(id);
    if (active) this.typists.set(id, setTimeout(() => this.typing(id, false), TYPING_SHOW_MS));
    const names = [...this.typists.keys()].map((pid) => this.view.tiles.get(pid)?.name || '?');
    this.typingEl.textContent =
      names.length === 0 ? '' : names.length === 1 ? t('chat.typing_one', { name: names[0] }) : t('chat.typing_many', { count: names.length });
  }

  // ---- chat delivery ----

  // Sends a chat message and shows it as sent until the server's echo marks it delivered.
  sendChat(text) {
    const id = this.call.sendChat(text);
    if (!id) return false;
    this.lastTypingSent = 0;
    const log = $('#chat-log');
    $('#chat-empty')?.remove();
    const item = el('div', { class: 'chat-message own pending', dataset: { testid: 'chat-message', clientMsgId: id } },
      el('p', { class: 'chat-text', text }),
      el('span', { class: 'chat-status', dataset: { testid: 'chat-status', status: 'sent' }, text: t('chat.sent') }));
    log.append(item);
    log.scrollTop = log.scrollHeight;
    this.pending.set(id, item);
    return true;
  }

  // The echo of our message: true when it was ours (then it is shown, marked delivered).
  delivered(clientMsgId, message) {
    const item = this.pending.get(clientMsgId);
    if (!item) return false;
    this.pending.delete(clientMsgId);
    item.remove();
    this.view.addChat(message);
    const shown = [...$('#chat-log').querySelectorAll('.chat-message.own')].pop();
    if (shown) shown.append(el('span', { class: 'chat-status', dataset: { testid: 'chat-status', status: 'delivered' }, text: t('chat.delivered') }));
    return true;
  }

  // ---- lobby knocks ----

  knock(msg) {
    if (!msg || !msg.participant_id || this.knocks.querySelector(`[data-participant-id="${CSS.escape(msg.participant_id)}"]`)) return;
    const answer = (type) => {
      this.call.send({ type, participant_id: msg.participant_id });
      card.remove();
    };
    const admit = el('button', { type: 'button', class: 'primary-button', text: t('knock.admit'), dataset: { testid: 'knock-admit' } });
    const deny = el('button', { type: 'button', class: 'secondary-button', text: t('knock.deny'), dataset: { testid: 'knock-deny' } });
    admit.addEventListener('click', () => answer('admit'));
    deny.addEventListener('click', () => answer('deny'));
    const card = el('div', { class: 'knock', role: 'alert', dataset: { participantId: msg.participant_id, testid: 'knock' } },
      el('p', { text: t('knock.text', { name: String(msg.name || msg.identity || '?') }) }),
      el('div', { class: 'knock-actions' }, deny, admit));
    this.knocks.append(card);
  }

  knockEnded(id) {
    this.knocks.querySelector(`[data-participant-id="${CSS.escape(String(id))}"]`)?.remove();
  }
}
