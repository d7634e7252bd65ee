// Every UI language is complete: each file in web/i18n has every key of en.json (plural forms
// only for the categories the language's plural rules use; and no key en.json lacks), each value is a non-empty string with the same {placeholders} as English,
// and there are at least six languages. No browser needed.
//
//   node --test tests/e2e/i18n.test.mjs
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'web', 'i18n');
const load = (f) => JSON.parse(readFileSync(path.join(DIR, f), 'utf8'));
const holes = (s) => [...s.matchAll(/\{(\w+)\}/g)].map((m) => m[1]).sort();

test('every language file has every key, with the same placeholders', () => {
  const files = readdirSync(DIR).filter((f) => f.endsWith('.json'));
  assert.ok(files.length >= 6, `at least six UI languages (English, Simplified Chinese and four more): ${files}`);
  const en = load('en.json');
  const keys = Object.keys(en);
  const problems = [];
  for (const f of files) {
    const tr = load(f);
    const tag = f.replace(/\.json$/, '');
    // Plural forms: a language needs the categories its plural rules use (key.other always).
    const categories = new Intl.PluralRules(tag).resolvedOptions().pluralCategories;
    const unused = (k) => {
      const m = k.match(/\.(zero|one|two|few|many)$/);
      return m && !categories.includes(m[1]);
    };
    for (const k of keys) {
      if (!(k in tr)) {
        if (!unused(k)) problems.push(`${f}: missing ${k}`);
      }
      else if (typeof tr[k] !== 'string' || !tr[k].trim()) problems.push(`${f}: ${k} is empty`);
      else if (JSON.stringify(holes(tr[k])) !== JSON.stringify(holes(en[k]))) problems.push(`${f}: ${k} has placeholders ${holes(tr[k])}, English ${holes(en[k])}`);
    }
    for (const k of Object.keys(tr)) if (!(k in en)) problems.push(`${f}: ${k} is not in en.json`);
    assert.ok(['ltr', 'rtl'].includes(tr['_meta.dir']), `${f}: _meta.dir`);
  }
  assert.deepEqual(problems, []);
});
