// Keyboard shortcuts in the meeting, and the `?` overlay that lists them. Each shortcut clicks
// the control it stands for (so it works the same when the control sits in the More menu).
// M and V (microphone, camera) are handled in app.js, on the join screen too.

import { $, el, isTypingTarget } from './ui.js';
import { t } from './i18n.js';
import { showDialog } from './popover.js';

// key (as in KeyboardEvent.key, lower case; 'L' = Shift+L) -> [button id, label key]
const KEYS = [
  ['m', null, 'shortcuts.mic'],
  ['v', null, 'shortcuts.camera'],
  ['c', 'chat-button', 'shortcuts.chat'],
  ['h', 'hand-button', 'shortcuts.hand'],
  ['p', 'people-button', 'shortcuts.people'],
  ['s', 'screen-button', 'shortcuts.screen'],
  ['l', 'view-button', 'shortcuts.layout'],
  ['L', 'leave-button', 'shortcuts.leave'],
  ['?', null, 'shortcuts.help'],
];

const LABELS = { L: 'Shift + L', '?': '?' };

export class Shortcuts {
  constructor() {
    $('#shortcuts-dialog')?.remove();
    this.dialog = el('dialog', { id: 'shortcuts-dialog', class: 'shortcuts-dialog', dataset: { testid: 'shortcuts' } });
    this.dialog.setAttribute('aria-labelledby', 'shortcuts-title');
    const close = el('button', { type: 'button', class: 'secondary-button', text: t('shortcuts.close') });
    close.addEventListener('click', () => this.dialog.close());
    this.dialog.append(
      el('h2', { id: 'shortcuts-title', text: t('shortcuts.title') }),
      el('dl', { class: 'shortcuts-list' },
        ...KEYS.map(([key, , label]) => el('div', { class: 'shortcut', dataset: { testid: 'shortcut' } },
          el('dt', {}, el('kbd', { text: LABELS[key] || key.toUpperCase() })), el('dd', { text: t(label) })))),
      close,
    );
    document.body.append(this.dialog);
    this.onKey = (e) => this.key(e);
    document.addEventListener('keydown', this.onKey);
  }

  destroy() {
    document.removeEventListener('keydown', this.onKey);
    if (this.dialog.open) this.dialog.close();
    this.dialog.remove();
  }

  key(e) {
    if (e.defaultPrevented || e.repeat || e.ctrlKey || e.metaKey || e.altKey) return;
    if (isTypingTarget(e.target) || this.dialog.open) return;
    // Shift+L leaves; a capital L without Shift (Caps Lock) is only the layout key.
    const k = e.key === '?' || (e.key === 'L' && e.shiftKey) ? e.key : e.key.toLowerCase();
    if (e.shiftKey && k !== 'L' && k !== '?') return;
    const entry = KEYS.find(([key]) => key === k);
    if (!entry) return;
    if (k === '?') {
      e.preventDefault();
      showDialog(this.dialog);
      return;
    }
    const button = entry[1] && document.getElementById(entry[1]);
    if (!button || button.disabled || button.hidden) return;
    e.preventDefault();
    button.click();
  }
}
