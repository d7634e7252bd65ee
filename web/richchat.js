// Rich chat: pictures and files (upload with progress, thumbnails, downloads), reactions,
// editing and deleting one's own messages, and quick emoji reactions on video tiles.
// Peer text is only ever inserted with textContent; images are shown from blob: URLs fetched
// with the access token (img tags cannot send it, and tokens stay out of URLs).
import { t } from './i18n.js';
import { icon } from './icons.js';
import { $, el, toast } from './ui.js';
import { openLayer, closeLayer } from './popover.js';

export const QUICK_EMOJIS = ['👍', '❤️', '😂', '🎉', '👏', '😮'];

export function formatSize(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(n < 10 * 1024 ? 1 : 0)} KB`;
  return `${(n / (1024 * 1024)).toFixed(1)} MB`;
}

export class RichChat {
  // opts: {view, call, room, token, identity}
  constructor(opts) {
    this.view = opts.view;
    this.call = opts.call;
    this.room = opts.room;
    this.token = opts.token;
    this.identity = opts.identity;
    this.policy = null;
    this.blobs = new Map(); // url path -> Promise<blob URL>
    this.base = `/api/rooms/${encodeURIComponent(this.room)}/files`;
    this.fetchPolicy();
    this.wireComposer();
    this.wireTileReactions();
  }

  auth() {
    return { Authorization: `Bearer ${this.token}` };
  }

  async fetchPolicy() {
    try {
      const res = await fetch(this.base, { headers: this.auth() });
      if (res.ok) this.policy = await res.json();
    } catch {
      /* the server checks anyway */
    }
  }

  wireComposer() {
    const form = $('#chat-form');
    if (!form) return;
    // A rejoin in the same page: the old controls belong to the old session.
    for (const id of ['chat-attach', 'chat-file', 'chat-upload']) $(`#${id}`)?.remove();
    const input = el('input', { type: 'file', id: 'chat-file', hidden: true, dataset: { testid: 'chat-file' } });
    const button = el('button', { type: 'button', id: 'chat-attach', class: 'icon-button ghost', title: t('chat.attach'), dataset: { testid: 'chat-attach' } }, icon('paperclip'));
    button.setAttribute('aria-label', t('chat.attach'));
    button.addEventListener('click', () => input.click());
    input.addEventListener('change', () => {
      const file = input.files && input.files[0];
      input.value = '';
      if (file) this.upload(file);
    });
    const progress = el('div', { class: 'chat-upload', id: 'chat-upload', hidden: true, 'aria-live': 'polite', dataset: { testid: 'chat-upload' } },
      el('span', { class: 'chat-upload-name' }),
      el('progress', { class: 'chat-upload-bar', max: 100, value: 0 }));
    form.prepend(button, input);
    form.before(progress);
  }

  // Shown once, in the upload box over the chat box (a live region), where the upload began:
  // not in the banner too.
  uploadError(text) {
    const box = $('#chat-upload');
    box.hidden = false;
    box.classList.add('failed');
    $('.chat-upload-name', box).textContent = text;
    box.dataset.error = text;
    $('.chat-upload-bar', box).hidden = true;
  }

  // Uploads `file` (XMLHttpRequest for its progress events), then sends a chat message with it.
  upload(file) {
    const box = $('#chat-upload');
    box.classList.remove('failed');
    delete box.dataset.error;
    const max = this.policy && this.policy.max_upload_bytes;
    if (max && file.size > max) {
      this.uploadError(t('chat.file_too_large', { name: file.name, max: formatSize(max) }));
      return;
    }
    const bar = $('.chat-upload-bar', box);
    bar.hidden = false;
    bar.value = 0;
    $('.chat-upload-name', box).textContent = t('chat.uploading', { name: file.name });
    box.hidden = false;
    const xhr = new XMLHttpRequest();
    xhr.open('POST', `${this.base}?name=${encodeURIComponent(file.name)}`);
    xhr.setRequestHeader('Authorization', `Bearer ${this.token}`);
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) bar.value = Math.round((100 * e.loaded) / e.total);
    };
    xhr.onerror = () => this.uploadError(t('chat.upload_failed', { name: file.name }));
    xhr.onload = () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        /* not JSON */
      }
      if (xhr.status === 201 && body && body.id) {
        box.hidden = true;
        this.call.sendChat('', { attachment_id: body.id });
        return;
      }
      if (xhr.status === 413) this.uploadError(t('chat.file_too_large', { name: file.name, max: formatSize((this.policy && this.policy.max_upload_bytes) || 0) }));
      else if (xhr.status === 415) this.uploadError(t('chat.file_type_refused', { name: file.name }));
      else this.uploadError(t('chat.upload_failed', { name: file.name }) + (body && body.message ? ` (${body.message})` : ''));
    };
    xhr.send(file);
  }

  // A blob: URL for an authorized GET of `path`.
  blobUrl(path) {
    let p = this.blobs.get(path);
    if (!p) {
      p = fetch(path, { headers: this.auth() }).then((res) => {
        if (!res.ok) throw new Error(`HTTP ${res.status}`);
        return res.blob();
      }).then((b) => URL.createObjectURL(b));
      p.catch(() => this.blobs.delete(path));
      this.blobs.set(path, p);
    }
    return p;
  }

  async download(att) {
    try {
      const url = await this.blobUrl(`${this.base}/${encodeURIComponent(att.id)}`);
      const a = el('a', { href: url, download: String(att.name || 'file') });
      document.body.append(a);
      a.click();
      a.remove();
    } catch {
      toast(t('chat.download_failed'));
    }
  }

  // Adds the attachment, reactions and own-message actions to a chat item built by RoomView.
  decorate(item, m) {
    const own = m.identity === this.identity;
    item.dataset.identity = String(m.identity || '');
    if (m.deleted) {
      item.classList.add('deleted');
      const body = $('.chat-text', item);
      if (body) body.textContent = t('chat.deleted');
      return;
    }
    if (m.undecryptable) {
      item.classList.add('undecryptable');
      const body = $('.chat-text', item);
      if (body) body.textContent = t('e2ee.undecryptable');
    } else if (m.unencrypted) {
      const meta = $('.chat-meta', item);
      if (meta) meta.append(el('span', { class: 'chat-unencrypted', text: t('e2ee.unencrypted') }));
    }
    const att = m.attachment;
    if (att && typeof att.id === 'string') {
      const isPicture = typeof att.thumb === 'string';
      if (isPicture) {
        const img = el('img', { class: 'chat-thumb', alt: String(att.name || ''), dataset: { testid: 'chat-thumb', fileId: att.id } });
        const link = el('button', { type: 'button', class: 'chat-thumb-button', title: t('chat.download') }, img);
        link.addEventListener('click', () => this.download(att));
        this.blobUrl(String(att.thumb).startsWith(this.base) ? att.thumb : `${this.base}/${encodeURIComponent(att.id)}/thumb`)
          .then((u) => {
            img.src = u;
          })
          .catch(() => img.classList.add('broken'));
        item.append(link);
      } else {
        const card = el('button', { type: 'button', class: 'chat-file', dataset: { testid: 'chat-file-card', fileId: att.id } },
          el('span', { class: 'chat-file-icon', text: '📄' }),
          el('span', { class: 'chat-file-name', text: String(att.name || 'file') }),
          el('span', { class: 'chat-file-size', text: formatSize(Number(att.size) || 0) }));
        card.title = t('chat.download');
        card.addEventListener('click', () => this.download(att));
        item.append(card);
      }
      const body = $('.chat-text', item);
      if (body && !m.text) body.remove();
    }
    if (m.edited_ts) {
      const meta = $('.chat-meta', item);
      if (meta) meta.append(el('span', { class: 'chat-edited', text: t('chat.edited') }));
    }
    const reactions = el('div', { class: 'chat-reactions', dataset: { testid: 'chat-reactions' } });
    for (const r of Array.isArray(m.reactions) ? m.reactions : []) {
      const mine = Array.isArray(r.identities) && r.identities.includes(this.identity);
      const b = el('button', { type: 'button', class: `chat-reaction${mine ? ' mine' : ''}`, dataset: { testid: 'chat-reaction', emoji: String(r.emoji) } },
        el('span', { text: String(r.emoji) }), el('span', { class: 'count', text: String(r.count) }));
      b.addEventListener('click', () => this.call.send({ type: 'react', message_id: m.id, emoji: String(r.emoji), active: !mine }));
      reactions.append(b);
    }
    const actions = el('div', { class: 'chat-actions' });
    const react = el('button', { type: 'button', class: 'chat-action', title: t('chat.react'), text: '☺', dataset: { testid: 'chat-react' } });
    react.addEventListener('click', () => this.pickEmoji(item, (emoji) => this.call.send({ type: 'react', message_id: m.id, emoji }), react));
    actions.append(react);
    if (own) {
      if (m.text) {
        const edit = el('button', { type: 'button', class: 'chat-action', title: t('chat.edit'), text: '✎', dataset: { testid: 'chat-edit' } });
        edit.addEventListener('click', () => this.edit(item, m));
        actions.append(edit);
      }
      const del = el('button', { type: 'button', class: 'chat-action', title: t('chat.delete'), text: '🗑', dataset: { testid: 'chat-delete' } });
      del.addEventListener('click', () => {
        if (window.confirm(t('chat.delete_confirm'))) this.call.send({ type: 'chat_delete', message_id: m.id });
      });
      actions.append(del);
    }
    item.append(reactions, actions);
  }

  // A popover (popover.js): Esc or a click outside closes it, Tab stays in it, the focus
  // goes back to the button that opened it.
  pickEmoji(anchor, done, opener = document.activeElement) {
    const old = $('.emoji-picker', anchor);
    if (old) {
      old.remove();
      closeLayer(old);
      return;
    }
    const picker = el('div', { class: 'emoji-picker', role: 'dialog', 'aria-label': t('chat.react'), dataset: { testid: 'emoji-picker' } });
    const onDown = (e) => {
      if (!picker.contains(e.target) && !(opener instanceof Node && opener.contains(e.target))) close();
    };
    const close = () => {
      picker.remove();
      closeLayer(picker);
      document.removeEventListener('pointerdown', onDown, true);
    };
    for (const e of QUICK_EMOJIS) {
      const b = el('button', { type: 'button', text: e, dataset: { testid: 'emoji' } });
      b.addEventListener('click', () => {
        closeLayer(picker, { restore: true });
        close();
        done(e);
      });
      picker.append(b);
    }
    anchor.append(picker);
    document.addEventListener('pointerdown', onDown, true);
    openLayer(picker, { close, opener });
  }

  edit(item, m) {
    const body = $('.chat-text', item);
    if (!body || $('.chat-edit-form', item)) return;
    const input = el('input', { class: 'text-input chat-edit-input', type: 'text', maxlength: 2000, value: m.text });
    const form = el('form', { class: 'chat-edit-form' }, input);
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      const text = input.value.trim();
      if (text && text !== m.text) this.call.sendChatEdit(m.id, text);
      form.remove();
      body.hidden = false;
    });
    input.addEventListener('keydown', (e) => {
      if (e.key === 'Escape') {
        form.remove();
        body.hidden = false;
      }
    });
    body.hidden = true;
    body.after(form);
    input.focus();
  }

  // ---- tile reactions ----

  wireTileReactions() {
    const group = $('.controls-group');
    if (!group) return;
    $('#react-button')?.closest('.react-wrap')?.remove();
    const button = el('button', { type: 'button', id: 'react-button', class: 'control-button', dataset: { testid: 'tile-react' }, text: '😊' });
    button.setAttribute('aria-label', t('controls.react'));
    button.title = t('controls.react');
    const wrap = el('div', { class: 'react-wrap' }, button);
    button.addEventListener('click', () => this.pickEmoji(wrap, (emoji) => this.call.send({ type: 'tile_reaction', emoji }), button));
    const leave = $('#leave-button');
    group.insertBefore(wrap, leave);
  }

  showTileReaction(participantId, emoji) {
    const tile = participantId === this.view.selfId ? this.view.selfTile : this.view.tiles.get(participantId);
    if (!tile || typeof emoji !== 'string') return;
    const bubble = el('span', { class: 'tile-reaction', text: emoji, dataset: { testid: 'tile-reaction' } });
    tile.el.append(bubble);
    setTimeout(() => bubble.remove(), 3000);
  }
}
