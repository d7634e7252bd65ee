// Room names in any language. The server's room names (and so URLs) are 1 to 64 characters of
// A-Z a-z 0-9 - _ . (not starting with .); a name typed in another script is carried as "xn--" + its Punycode
// (RFC 3492, as in internationalised domain names), and shown decoded as the room's title.
// So /r/xn--6oq12ksw9amb2a is the room everyone sees as "项目周会". See docs/web-client.md.

export const ROOM_RE = /^(?!\.)[A-Za-z0-9._-]{1,64}$/;
const PREFIX = 'xn--';

// ---- Punycode (RFC 3492) ----
const BASE = 36;
const T_MIN = 1;
const T_MAX = 26;
const SKEW = 38;
const DAMP = 700;
const INITIAL_BIAS = 72;
const INITIAL_N = 128;

function adapt(delta, numPoints, first) {
  delta = first ? Math.floor(delta / DAMP) : delta >> 1;
  delta += Math.floor(delta / numPoints);
  let k = 0;
  while (delta > ((BASE - T_MIN) * T_MAX) >> 1) {
    delta = Math.floor(delta / (BASE - T_MIN));
    k += BASE;
  }
  return k + Math.floor(((BASE - T_MIN + 1) * delta) / (delta + SKEW));
}

const digit = (d) => String.fromCharCode(d < 26 ? 97 + d : 22 + d); // a-z, 0-9
function value(c) {
  const x = c.charCodeAt(0);
  if (x >= 48 && x <= 57) return x - 22;
  if (x >= 65 && x <= 90) return x - 65;
  if (x >= 97 && x <= 122) return x - 97;
  return BASE;
}

export function punyEncode(input) {
  const cps = Array.from(input, (c) => c.codePointAt(0));
  let out = cps.filter((c) => c < 0x80).map((c) => String.fromCodePoint(c)).join('');
  const basic = out.length;
  let h = basic;
  if (basic) out += '-';
  let n = INITIAL_N;
  let delta = 0;
  let bias = INITIAL_BIAS;
  while (h < cps.length) {
    const m = Math.min(...cps.filter((c) => c >= n));
    delta += (m - n) * (h + 1);
    n = m;
    for (const c of cps) {
      if (c < n) delta++;
      if (c === n) {
        let q = delta;
        for (let k = BASE; ; k += BASE) {
          const t = k <= bias ? T_MIN : k >= bias + T_MAX ? T_MAX : k - bias;
          if (q < t) break;
          out += digit(t + ((q - t) % (BASE - t)));
          q = Math.floor((q - t) / (BASE - t));
        }
        out += digit(q);
        bias = adapt(delta, h + 1, h === basic);
        delta = 0;
        h++;
      }
    }
    delta++;
    n++;
  }
  return out;
}

export function punyDecode(input) {
  const cut = input.lastIndexOf('-');
  const out = cut > 0 ? Array.from(input.slice(0, cut), (c) => c.codePointAt(0)) : [];
  let i = 0;
  let n = INITIAL_N;
  let bias = INITIAL_BIAS;
  for (let pos = cut > 0 ? cut + 1 : 0; pos < input.length; ) {
    const old = i;
    let w = 1;
    for (let k = BASE; ; k += BASE) {
      if (pos >= input.length) throw new Error('bad punycode');
      const d = value(input[pos++]);
      if (d >= BASE) throw new Error('bad punycode');
      i += d * w;
      const t = k <= bias ? T_MIN : k >= bias + T_MAX ? T_MAX : k - bias;
      if (d < t) break;
      w *= BASE - t;
    }
    bias = adapt(i - old, out.length + 1, old === 0);
    n += Math.floor(i / (out.length + 1));
    i %= out.length + 1;
    if (n > 0x10ffff) throw new Error('bad punycode');
    out.splice(i++, 0, n);
  }
  return String.fromCodePoint(...out);
}

// ---- room names ----

// What the user typed -> the room's name for the URL, or null when it cannot be one.
// Spaces become dashes; names in other scripts become "xn--…".
export function roomFromTitle(typed) {
  const v = String(typed || '').trim().replace(/\s+/g, '-');
  if (!v) return null;
  if (ROOM_RE.test(v)) return v;
  // Only the characters of a room name may be plain ASCII in a name of another script.
  if ([...v].some((c) => c.codePointAt(0) < 0x80 && !/[A-Za-z0-9._-]/.test(c))) return null;
  if ([...v].some((c) => /\p{C}/u.test(c))) return null;
  const name = PREFIX + punyEncode(v.normalize('NFC'));
  return ROOM_RE.test(name) ? name : null;
}

// The room's name -> what to show as its title (the decoded name for "xn--…").
export function roomTitle(room) {
  if (typeof room !== 'string' || !room.startsWith(PREFIX)) return room;
  try {
    const title = punyDecode(room.slice(PREFIX.length));
    return title && roomFromTitle(title) === room ? title : room;
  } catch {
    return room;
  }
}
