// Open popovers and dialogs as a stack (docs/web-client.md, "Accessibility"): Esc closes the
// topmost one, wherever the focus is; Tab and Shift+Tab stay inside it (the last control
// wraps to the first) while the focus is in it; and when it closes by Esc or by its own close
// control, the focus goes back to the control that opened it. A non-modal popover (the
// participants panel) lets a click take the focus elsewhere; a modal <dialog> makes the rest
// of the page inert anyway.

const stack = [];

const FOCUSABLE = 'button, [href], input, select, textarea, summary, [tabindex]:not([tabindex="-1"])';

export function focusables(root) {
  return [...root.querySelectorAll(FOCUSABLE)].filter(
    (n) => !n.disabled && !n.closest('[hidden]') && n.getClientRects().length > 0 && n.getAttribute('tabindex') !== '-1',
  );
}

// Registers an open layer. `close()` hides it (its owner's code); `opener` gets the focus
// back. `focus`: what to focus now (default: its first control; false: leave the focus).
// Returns the layer, for closeLayer.
export function openLayer(el, { close, opener = document.activeElement, focus } = {}) {
  for (let i = stack.length - 1; i >= 0; i--) if (stack[i].el === el) stack.splice(i, 1);
  const layer = { el, close, opener: opener instanceof HTMLElement ? opener : null };
  stack.push(layer);
  if (focus !== false) {
    const target = (focus instanceof HTMLElement ? focus : focusables(el)[0]) || el;
    // The layer itself takes the focus when it has no control (or is asked to).
    if (target === el && !el.hasAttribute('tabindex')) el.setAttribute('tabindex', '-1');
    target.focus();
  }
  return layer;
}

// The layer of `el` closed (by whatever means). With `restore`, the focus returns to its
// opener (when it still is in the page and visible).
export function closeLayer(el, { restore = false } = {}) {
  const i = stack.findIndex((l) => l.el === el);
  if (i < 0) return;
  const [layer] = stack.splice(i, 1);
  if (restore && layer.opener && layer.opener.isConnected && layer.opener.getClientRects().length) layer.opener.focus();
  else if (restore && layer.opener) {
    // The opener went into the More menu (a narrow bar): its menu button stands for it.
    const more = document.getElementById('more-button');
    if (more && more.getClientRects().length) more.focus();
  }
}

export function isOpen(el) {
  return stack.some((l) => l.el === el);
}

export function topLayer() {
  return stack.length ? stack[stack.length - 1].el : null;
}

function onKey(e) {
  // Layers whose element left the page or is no longer shown are dropped.
  for (let i = stack.length - 1; i >= 0; i--) if (!stack[i].el.isConnected || !stack[i].el.getClientRects().length) stack.splice(i, 1);
  const top = stack[stack.length - 1];
  if (!top) return;
  if (e.key === 'Escape') {
    e.preventDefault();
    e.stopImmediatePropagation();
    closeLayer(top.el, { restore: true });
    top.close();
    return;
  }
  if (e.key !== 'Tab' || !top.el.contains(document.activeElement)) return;
  const list = focusables(top.el);
  if (!list.length) {
    e.preventDefault();
    return;
  }
  const first = list[0];
  const last = list[list.length - 1];
  if (e.shiftKey && (document.activeElement === first || document.activeElement === top.el)) {
    e.preventDefault();
    last.focus();
  } else if (!e.shiftKey && document.activeElement === last) {
    e.preventDefault();
    first.focus();
  }
}

// Capture phase: before the page's other key handlers (shortcuts, the chat's own Esc).
document.addEventListener('keydown', onKey, true);

// A modal <dialog> as a layer: shown with showModal(), closed by Esc through the stack (the
// browser's own Esc-closing is the same), the focus back to its opener.
export function showDialog(dialog, opts = {}) {
  const opener = document.activeElement;
  dialog.showModal();
  const layer = openLayer(dialog, { close: () => dialog.open && dialog.close(), opener, ...opts });
  dialog.addEventListener('close', () => closeLayer(dialog, { restore: true }), { once: true });
  return layer;
}
