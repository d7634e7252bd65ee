// A plain link into an end-to-end encrypted room: the chat holds `e2ee1:` ciphertext that this
// page (joined without #e2ee) cannot read, and the others' media does not decode. Say so once,
// and offer to come back with the passphrase field (the same room with #e2ee).

import { $, el } from './ui.js';
import { t } from './i18n.js';
import { e2eeRequested } from './e2ee.js';
import { showDialog } from './popover.js';

let shown = false;

// A chat message as it arrived (history or live).
export function noteMessage(m, onLeave) {
  if (shown || e2eeRequested() || !m || typeof m.text !== 'string' || !m.text.startsWith('e2ee1:')) return;
  shown = true;
  $('#e2ee-plain')?.remove();
  const go = el('button', { type: 'button', class: 'primary-button', text: t('e2ee.plain_action'), dataset: { testid: 'e2ee-plain-go' } });
  const stay = el('button', { type: 'button', class: 'secondary-button', text: t('shortcuts.close') });
  const dialog = el('dialog', { id: 'e2ee-plain', class: 'shortcuts-dialog', dataset: { testid: 'e2ee-plain' } },
    el('h2', { id: 'e2ee-plain-title', text: t('e2ee.plain_title') }),
    el('p', { text: t('e2ee.plain_text') }),
    el('div', { class: 'password-actions' }, stay, go));
  dialog.setAttribute('aria-labelledby', 'e2ee-plain-title');
  go.addEventListener('click', () => {
    onLeave?.();
    location.hash = 'e2ee';
    location.reload();
  });
  stay.addEventListener('click', () => dialog.close());
  document.body.append(dialog);
  showDialog(dialog);
}
