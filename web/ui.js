// Small DOM helpers, the error banner and the toast.
import { t, has } from './i18n.js';

export const $ = (sel, root = document) => root.querySelector(sel);

// el('div', {class: 'x', dataset: {a: 1}, text: 'hi'}, child...) — text goes in as textContent only.
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = v;
    else if (k === 'dataset') Object.assign(node.dataset, v);
    else if (k in node && typeof v !== 'string') node[k] = v;
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c);
  }
  return node;
}

// The translated sentence for an error code.
export function errorText(code, serverMessage) {
  if (code && has(`error.${code}`)) return t(`error.${code}`);
  const base = t('error.unknown', { code: code || '?' });
  return serverMessage ? `${base} (${serverMessage})` : base;
}

let bannerTimer = 0;

export function showBanner(text, { sticky = false, kind = 'error' } = {}) {
  const banner = $('#banner');
  $('.banner-text', banner).textContent = text;
  banner.dataset.kind = kind;
  banner.hidden = false;
  clearTimeout(bannerTimer);
  if (!sticky) bannerTimer = setTimeout(hideBanner, 9000);
}

export function showError(code, serverMessage, opts) {
  showBanner(errorText(code, serverMessage), opts);
}

export function hideBanner() {
  clearTimeout(bannerTimer);
  $('#banner').hidden = true;
}

let toastTimer = 0;

export function toast(text, ms = 2600) {
  const node = $('#toast');
  node.textContent = text;
  node.hidden = false;
  node.classList.remove('show');
  // Restart the transition.
  void node.offsetWidth;
  node.classList.add('show');
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => {
    node.classList.remove('show');
    toastTimer = setTimeout(() => {
      node.hidden = true;
    }, 250);
  }, ms);
}

export function initBanner() {
  $('.banner-close', $('#banner')).addEventListener('click', hideBanner);
}

export function showScreen(id) {
  for (const s of document.querySelectorAll('.screen')) s.hidden = s.id !== id;
  document.body.dataset.screen = id;
}

// Two letters for an avatar.
export function initials(name) {
  const parts = String(name || '?').trim().split(/\s+/).filter(Boolean);
  if (!parts.length) return '?';
  const chars = (s) => Array.from(s);
  if (parts.length === 1) return chars(parts[0])[0].toUpperCase();
  return (chars(parts[0])[0] + chars(parts[parts.length - 1])[0]).toUpperCase();
}

// A stable hue for a participant, from a small palette of calm colours.
const HUES = [214, 262, 330, 18, 152, 188, 42, 292, 350, 120];
export function hueFor(id) {
  let h = 0x811c9dc5;
  for (const ch of String(id)) {
    h ^= ch.codePointAt(0);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return HUES[h % HUES.length];
}

export function isTypingTarget(target) {
  if (!target || !(target instanceof Element)) return false;
  if (target.isContentEditable) return true;
  const tag = target.tagName;
  return tag === 'INPUT' || tag === 'TEXTAREA' || tag === 'SELECT';
}

// Copy text; falls back to a hidden input and execCommand where the async
// clipboard is unavailable (plain http on a LAN address).
export async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch {
      /* fall through */
    }
  }
  const input = el('textarea', { class: 'offscreen', readonly: true });
  input.value = text;
  document.body.append(input);
  input.select();
  let ok = false;
  try {
    ok = document.execCommand('copy');
  } catch {
    ok = false;
  }
  input.remove();
  return ok;
}
