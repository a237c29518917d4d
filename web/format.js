// @ts-check
/** Formatting shared by the panels. */

/** Longest payload preview kept per topic, in characters: 10,000 topics stay a few MB. */
const PREVIEW_CHARS = 200;
/** Bytes looked at to decide text or binary, and to build the preview. */
const PREVIEW_BYTES = 1024;
/** Control characters other than tab, line feed and carriage return mark a payload as binary. */
const CONTROL = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]/;

/**
 * A one-line preview of a payload: its text when it is UTF-8, else the first
 * bytes in hex.
 * @param {Uint8Array} payload
 * @returns {{ text: string, binary: boolean }}
 */
export function previewPayload(payload) {
  if (payload.length === 0) return { text: '', binary: false };
  const head = payload.subarray(0, PREVIEW_BYTES);
  try {
    // `stream: true` keeps a character cut at the end of `head` from counting as invalid.
    const text = new TextDecoder('utf-8', { fatal: true }).decode(head, { stream: payload.length > head.length });
    if (!CONTROL.test(text)) return { text: clip(text.replace(/\s+/g, ' ')), binary: false };
  } catch {
    // not UTF-8: shown as hex below
  }
  const hex = Array.from(payload.subarray(0, 32), (byte) => byte.toString(16).padStart(2, '0')).join(' ');
  return { text: payload.length > 32 ? `${hex} …` : hex, binary: true };
}

/** @param {string} text */
function clip(text) {
  return text.length > PREVIEW_CHARS ? `${text.slice(0, PREVIEW_CHARS)}…` : text;
}

/** @param {number} bytes */
export function formatBytes(bytes) {
  if (!Number.isFinite(bytes)) return '–';
  if (bytes < 1024) return `${bytes} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

/** @param {number} value */
export function formatCount(value) {
  return Number.isFinite(value) ? value.toLocaleString('en') : '–';
}

/** A rate in messages per second, with a useful number of digits. @param {number} value */
export function formatRate(value) {
  if (!Number.isFinite(value)) return '–';
  return value >= 100 ? Math.round(value).toLocaleString('en') : value.toFixed(value >= 10 ? 1 : 2);
}

/** Local wall-clock time of day, to the second. @param {number} epochMs */
export function formatTime(epochMs) {
  return new Date(epochMs).toLocaleTimeString('en-GB', { hour12: false });
}

/** The time of day, with the date before it when that is not today. @param {number} epochMs */
export function formatSince(epochMs) {
  const date = new Date(epochMs);
  if (Number.isNaN(date.getTime())) return '–';
  if (date.toDateString() === new Date().toDateString()) return formatTime(epochMs);
  return `${date.toLocaleDateString('en-CA')} ${formatTime(epochMs)}`;
}

/** @param {number} seconds */
export function formatDuration(seconds) {
  if (!Number.isFinite(seconds)) return '–';
  const s = Math.floor(seconds);
  const days = Math.floor(s / 86400);
  const hours = Math.floor((s % 86400) / 3600);
  const minutes = Math.floor((s % 3600) / 60);
  if (days > 0) return `${days} d ${hours} h`;
  if (hours > 0) return `${hours} h ${minutes} min`;
  if (minutes > 0) return `${minutes} min ${s % 60} s`;
  return `${s} s`;
}

/**
 * Creates an element with text and attributes; no HTML is ever parsed from
 * data (topic names and payloads come from any client).
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag
 * @param {Record<string, string>} [attributes]
 * @param {string} [text]
 * @returns {HTMLElementTagNameMap[K]}
 */
export function element(tag, attributes = {}, text) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

/**
 * Sets a node's text only when it changed: most rows do not change between
 * two renders, and an unchanged DOM costs the browser no layout.
 * @param {Node} node
 * @param {string} text
 */
export function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

/**
 * Makes `body` show one row per item, in order, reusing the row of each key:
 * a row that stays keeps its elements (and the keyboard focus on its button).
 * @template T
 * @param {HTMLTableSectionElement} body
 * @param {Map<string, HTMLTableRowElement>} rows  the rows shown now, by key; updated
 * @param {readonly T[]} items
 * @param {(item: T) => string} key
 * @param {(item: T) => HTMLTableRowElement} create
 * @param {(row: HTMLTableRowElement, item: T) => void} update
 */
export function syncRows(body, rows, items, key, create, update) {
  const keep = new Set();
  items.forEach((item, index) => {
    const k = key(item);
    keep.add(k);
    let row = rows.get(k);
    if (!row) {
      row = create(item);
      rows.set(k, row);
    }
    update(row, item);
    // After this, the first index + 1 rows of `body` are the first items.
    if (body.children[index] !== row) body.insertBefore(row, body.children[index] ?? null);
  });
  for (const [k, row] of rows) {
    if (keep.has(k)) continue;
    row.remove();
    rows.delete(k);
  }
}
