// Translations: one JSON table per language under /assets/i18n/<tag>.json.
// Adding a language is adding a file; nothing here lists the languages.

const BASE = '/assets/i18n/';
// When only a base language is asked for and it has no file of its own,
// try the region most people mean by it.
const DEFAULT_REGION = { zh: 'zh-CN', pt: 'pt-BR', en: 'en' };

let table = {};
let fallback = {};
let currentLang = 'en';
let plural = new Intl.PluralRules('en');

function isTag(tag) {
  return typeof tag === 'string' && /^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$/.test(tag);
}

// The candidate files in order of preference.
export function candidateTags(languages) {
  const out = [];
  const add = (t) => {
    if (isTag(t) && !out.includes(t)) out.push(t);
  };
  for (const raw of languages) {
    if (!isTag(raw)) continue;
    const parts = raw.split('-');
    const base = parts[0].toLowerCase();
    // Canonical casing: language lower, region upper (zh-cn -> zh-CN).
    const exact = [base, ...parts.slice(1).map((p) => (p.length === 2 ? p.toUpperCase() : p))].join('-');
    add(exact);
    add(base);
    if (DEFAULT_REGION[base]) add(DEFAULT_REGION[base]);
  }
  add('en');
  return out;
}

async function fetchTable(tag) {
  try {
    const res = await fetch(`${BASE}${tag}.json`, { cache: 'no-cache' });
    if (!res.ok) return null;
    const data = await res.json();
    return data && typeof data === 'object' ? data : null;
  } catch {
    return null;
  }
}

export async function loadI18n() {
  const params = new URLSearchParams(location.search);
  const wanted = [];
  if (params.get('lang')) wanted.push(params.get('lang'));
  wanted.push(...(navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language || 'en']));
  const tags = candidateTags(wanted);
  // Ask for all candidates at once; take the most preferred that exists.
  const results = await Promise.all(tags.map((t) => fetchTable(t)));
  let chosen = tags.findIndex((_, i) => results[i]);
  if (chosen < 0) {
    table = {};
    currentLang = 'en';
  } else {
    table = results[chosen];
    currentLang = tags[chosen];
  }
  const enIndex = tags.indexOf('en');
  fallback = enIndex >= 0 && results[enIndex] ? results[enIndex] : {};
  try {
    plural = new Intl.PluralRules(currentLang);
  } catch {
    plural = new Intl.PluralRules('en');
  }
  document.documentElement.lang = currentLang;
  document.documentElement.dir = t('_meta.dir') === 'rtl' ? 'rtl' : 'ltr';
  return currentLang;
}

export function lang() {
  return currentLang;
}

export function has(key) {
  return Object.prototype.hasOwnProperty.call(table, key) || Object.prototype.hasOwnProperty.call(fallback, key);
}

// t('chat.sent_at', {time}) -> string with {placeholders} filled in.
export function t(key, params) {
  let s = table[key];
  if (typeof s !== 'string') s = fallback[key];
  if (typeof s !== 'string') s = key;
  if (params) {
    s = s.replace(/\{(\w+)\}/g, (m, name) => (name in params ? String(params[name]) : m));
  }
  return s;
}

// Plural-aware lookup: tries key.<category> (one, few, many, other...), then key.other.
export function tn(key, count, params) {
  const cat = plural.select(count);
  const p = { count, ...params };
  if (has(`${key}.${cat}`)) return t(`${key}.${cat}`, p);
  return t(`${key}.other`, p);
}

// Fill every data-i18n* attribute under root.
export function applyI18n(root) {
  for (const el of root.querySelectorAll('[data-i18n]')) {
    el.textContent = t(el.dataset.i18n);
  }
  for (const el of root.querySelectorAll('[data-i18n-placeholder]')) {
    el.placeholder = t(el.dataset.i18nPlaceholder);
  }
  for (const el of root.querySelectorAll('[data-i18n-label]')) {
    setLabel(el, t(el.dataset.i18nLabel));
  }
  for (const el of root.querySelectorAll('[data-i18n-aria]')) {
    el.setAttribute('aria-label', t(el.dataset.i18nAria));
  }
}

// Accessible name and tooltip of an (icon) button.
export function setLabel(el, text) {
  el.setAttribute('aria-label', text);
  el.dataset.tooltip = text;
}
