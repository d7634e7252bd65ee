// The control bar at every width: when its buttons do not fit in one row (a phone), the
// secondary ones are hidden from the bar and offered in a "More" menu instead. The menu's items
// stand for the real buttons (a click on an item clicks the button), so the modules that own
// those buttons (room.js, moderation.js, richchat.js) keep them, their ids and listeners as
// they are. See docs/web-client.md.

import { $, el } from './ui.js';
import { icon } from './icons.js';
import { t, setLabel } from './i18n.js';
import { openLayer, closeLayer } from './popover.js';

// Always in the bar.
const PRIMARY = new Set(['mic-button', 'camera-button', 'chat-button', 'leave-button', 'more-button']);

export class ControlBar {
  constructor() {
    this.group = $('.controls-group');
    this.bar = $('.controls');
    $('#more-button')?.remove();
    $('#more-menu')?.remove();
    this.button = el('button', {
      type: 'button', id: 'more-button', class: 'control-button more-control',
      'aria-haspopup': 'menu', 'aria-expanded': 'false', 'aria-controls': 'more-menu', dataset: { testid: 'more' },
    }, icon('more'));
    setLabel(this.button, t('controls.more'));
    this.menu = el('div', { id: 'more-menu', class: 'more-menu', role: 'menu', hidden: true, dataset: { testid: 'more-menu' } });
    this.group.insertBefore(this.button, $('#leave-button'));
    this.bar.append(this.menu);
    this.button.addEventListener('click', () => this.setOpen(this.menu.hidden));
    this.onDown = (e) => {
      if (!this.menu.hidden && !this.menu.contains(e.target) && !this.button.contains(e.target)) this.setOpen(false);
    };
    document.addEventListener('pointerdown', this.onDown);
    this.observer = new ResizeObserver(() => this.fit());
    this.observer.observe(this.bar);
    // Buttons added or shown later (hand, people, reactions) count too.
    this.mutations = new MutationObserver(() => this.fit());
    this.mutations.observe(this.group, { childList: true });
    this.fit();
  }

  destroy() {
    this.observer.disconnect();
    this.mutations.disconnect();
    closeLayer(this.menu);
    document.removeEventListener('pointerdown', this.onDown);
    this.bar.classList.remove('compact');
    this.button.remove();
    this.menu.remove();
  }

  // The bar's children that may go into the menu (a wrapper counts as its button).
  secondary() {
    return [...this.group.children].filter((c) => !PRIMARY.has(c.id));
  }

  // Compact when the full row would be wider than the bar.
  fit() {
    if (this.fitting) return;
    this.fitting = true;
    const wasCompact = this.bar.classList.contains('compact');
    this.bar.classList.remove('compact');
    const style = getComputedStyle(this.bar);
    const room = this.bar.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    const compact = this.group.scrollWidth > room + 0.5;
    this.bar.classList.toggle('compact', compact);
    if (!compact && !this.menu.hidden) this.setOpen(false);
    if (compact !== wasCompact) this.bar.dispatchEvent(new Event('controls-fit'));
    this.fitting = false;
  }

  setOpen(open) {
    this.menu.hidden = !open;
    this.button.setAttribute('aria-expanded', String(open));
    this.button.classList.toggle('active', open);
    // Esc closes it and Tab stays in it (popover.js); the focus goes back to the button.
    if (open) {
      this.render();
      openLayer(this.menu, { close: () => this.setOpen(false), opener: this.button, focus: this.menu.querySelector('[role="menuitem"]') || undefined });
    } else {
      closeLayer(this.menu);
    }
  }

  // One item per secondary control that is not hidden for other reasons.
  render() {
    const items = [];
    for (const c of this.secondary()) {
      const b = c.matches('button') ? c : c.querySelector('button');
      if (!b || b.hidden || c.hidden) continue;
      const label = b.getAttribute('aria-label') || b.title || b.textContent.trim();
      const item = el('button', {
        type: 'button', class: 'more-item', role: 'menuitem', dataset: { for: b.id, testid: 'more-item' },
      });
      const glyph = b.querySelector('.icon, [data-icon]');
      item.append(glyph ? glyph.cloneNode(true) : el('span', { class: 'more-glyph', text: b.textContent.trim() }), el('span', { text: label }));
      if (b.getAttribute('aria-pressed') === 'true') item.classList.add('active');
      item.disabled = b.disabled;
      item.addEventListener('click', () => {
        this.setOpen(false);
        b.click();
      });
      items.push(item);
    }
    this.menu.replaceChildren(...items);
  }
}
