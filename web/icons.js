// Icons as SVG built from path data (no icon fonts, nothing inline in the HTML
// that a strict Content-Security-Policy would block).
const SVG_NS = 'http://www.w3.org/2000/svg';

// 24x24 stroke icons. Each entry is a list of shapes: a string is a <path d>,
// an object is any other element with its attributes.
const ICONS = {
  // Effects (noise suppression, background blur).
  sparkles: [
    'M11 3l1.8 4.7 4.7 1.8-4.7 1.8L11 16l-1.8-4.7L4.5 9.5l4.7-1.8z',
    'M18.5 14l.9 2.1 2.1.9-2.1.9-.9 2.1-.9-2.1-2.1-.9 2.1-.9z',
  ],
  screen: [
    { tag: 'rect', x: 2.5, y: 4, width: 19, height: 13, rx: 2 },
    'M8 21h8',
    'M12 17v4',
  ],
  layout: [
    { tag: 'rect', x: 2.5, y: 3.5, width: 19, height: 11, rx: 2 },
    { tag: 'rect', x: 2.5, y: 16.5, width: 5, height: 4, rx: 1 },
    { tag: 'rect', x: 9.5, y: 16.5, width: 5, height: 4, rx: 1 },
    { tag: 'rect', x: 16.5, y: 16.5, width: 5, height: 4, rx: 1 },
  ],
  mic: [
    'M12 2.5a3 3 0 0 0-3 3v6.5a3 3 0 0 0 6 0V5.5a3 3 0 0 0-3-3Z',
    'M19 10.5v1.5a7 7 0 0 1-14 0v-1.5',
    'M12 19v3',
  ],
  'mic-off': [
    'M3 3l18 18',
    'M15 9.3V5.5a3 3 0 0 0-5.7-1.3',
    'M9 9v3a3 3 0 0 0 5.1 2.1',
    'M19 10.5v1.5a7 7 0 0 1-.9 3.4',
    'M5 10.5v1.5a7 7 0 0 0 11.9 5',
    'M12 19v3',
  ],
  video: [
    { tag: 'rect', x: 2.5, y: 6, width: 13, height: 12, rx: 2.5 },
    'M15.5 10.5l5.1-3.2a.6.6 0 0 1 .9.5v8.4a.6.6 0 0 1-.9.5l-5.1-3.2',
  ],
  'video-off': [
    'M3 3l18 18',
    'M10.5 6h2.5a2.5 2.5 0 0 1 2.5 2.5v2l5.1-3.2a.6.6 0 0 1 .9.5v8.4a.6.6 0 0 1-.5.6',
    'M15.5 15.5v0a2.5 2.5 0 0 1-2.5 2.5H5a2.5 2.5 0 0 1-2.5-2.5v-7A2.5 2.5 0 0 1 5 6h1',
  ],
  chat: [
    'M20.5 14.5a2 2 0 0 1-2 2H8l-4.5 4V5.5a2 2 0 0 1 2-2h13a2 2 0 0 1 2 2Z',
    'M8 9h8',
    'M8 12.5h5',
  ],
  link: [
    'M10 13.5a4.5 4.5 0 0 0 6.8.5l3-3a4.5 4.5 0 0 0-6.4-6.4l-1.7 1.7',
    'M14 10.5a4.5 4.5 0 0 0-6.8-.5l-3 3a4.5 4.5 0 0 0 6.4 6.4l1.7-1.7',
  ],
  'phone-off': [
    // A handset lying on its back: the usual "hang up" glyph.
    'M3.2 14.7l-.6-1.6a2 2 0 0 1 .5-2.1C5.3 8.8 8.5 7.5 12 7.5s6.7 1.3 8.9 3.5a2 2 0 0 1 .5 2.1l-.6 1.6a1.5 1.5 0 0 1-1.7 1l-2.6-.5a1.5 1.5 0 0 1-1.2-1.3l-.2-1.8a10 10 0 0 0-6.2 0l-.2 1.8a1.5 1.5 0 0 1-1.2 1.3l-2.6.5a1.5 1.5 0 0 1-1.7-1Z',
  ],
  x: ['M18 6 6 18', 'M6 6l12 12'],
  more: [
    { tag: 'circle', cx: 5, cy: 12, r: 1.2 },
    { tag: 'circle', cx: 12, cy: 12, r: 1.2 },
    { tag: 'circle', cx: 19, cy: 12, r: 1.2 },
  ],
  pin: ['M12 17v5', 'M9 3h6l-1 6 3 3v2H7v-2l3-3-1-6Z'],
  send: ['M21.5 2.5 10.5 13.5', 'M21.5 2.5l-7 19-4-8-8-4 19-7Z'],
  users: [
    'M16 20.5v-1.5a4 4 0 0 0-4-4H6a4 4 0 0 0-4 4v1.5',
    { tag: 'circle', cx: 9, cy: 7, r: 3.75 },
    'M22 20.5v-1.5a4 4 0 0 0-3-3.9',
    'M15.5 3.2a3.9 3.9 0 0 1 0 7.6',
  ],
  hand: [
    'M18 11V6a2 2 0 0 0-4 0v5',
    'M14 10V4a2 2 0 0 0-4 0v6',
    'M10 10.5V6a2 2 0 0 0-4 0v8',
    'M18 8a2 2 0 1 1 4 0v6a8 8 0 0 1-8 8h-2c-2.8 0-4.5-.86-5.99-2.34l-3.6-3.6a2 2 0 0 1 2.83-2.82L7 15',
  ],
  paperclip: ['M21.44 11.05 12.25 20.24a6 6 0 0 1-8.49-8.49l9.19-9.19a4 4 0 0 1 5.66 5.66l-9.2 9.19a2 2 0 0 1-2.83-2.83l8.49-8.48'],
  shuffle: [
    'M2.5 17.5h3.2a4 4 0 0 0 3.3-1.8l5-7.4a4 4 0 0 1 3.3-1.8h4.2',
    'M18.5 3.5l3 3-3 3',
    'M2.5 6.5h3.2a4 4 0 0 1 3.3 1.8l.6.9',
    'M21.5 17.5h-4.2a4 4 0 0 1-3.3-1.8l-.6-.9',
    'M18.5 14.5l3 3-3 3',
  ],
  alert: [
    { tag: 'circle', cx: 12, cy: 12, r: 9.5 },
    'M12 7.5v5.5',
    'M12 16.5h.01',
  ],
  check: ['M20 6 9 17l-5-5'],
  arrow: ['M5 12h14', 'M13 6l6 6-6 6'],
  logo: [
    { tag: 'rect', x: 2.5, y: 5.5, width: 13, height: 13, rx: 3.5 },
    'M15.5 10.5l5.1-3.2a.6.6 0 0 1 .9.5v8.4a.6.6 0 0 1-.9.5l-5.1-3.2',
    { tag: 'circle', cx: 9, cy: 12, r: 2.25 },
  ],
};

export function icon(name, extraClass) {
  const shapes = ICONS[name];
  if (!shapes) throw new Error(`unknown icon ${name}`);
  const svg = document.createElementNS(SVG_NS, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('fill', 'none');
  svg.setAttribute('stroke', 'currentColor');
  svg.setAttribute('stroke-width', '1.9');
  svg.setAttribute('stroke-linecap', 'round');
  svg.setAttribute('stroke-linejoin', 'round');
  svg.setAttribute('aria-hidden', 'true');
  svg.setAttribute('focusable', 'false');
  svg.classList.add('icon', `icon-${name}`);
  if (extraClass) svg.classList.add(extraClass);
  for (const shape of shapes) {
    let el;
    if (typeof shape === 'string') {
      el = document.createElementNS(SVG_NS, 'path');
      el.setAttribute('d', shape);
    } else {
      el = document.createElementNS(SVG_NS, shape.tag);
      for (const [k, v] of Object.entries(shape)) {
        if (k !== 'tag') el.setAttribute(k, String(v));
      }
    }
    svg.appendChild(el);
  }
  return svg;
}

// Replace every <span data-icon="name"> placeholder under root by its SVG.
export function fillIcons(root) {
  for (const slot of root.querySelectorAll('[data-icon]')) {
    if (slot.firstElementChild) continue;
    slot.appendChild(icon(slot.dataset.icon));
  }
}
