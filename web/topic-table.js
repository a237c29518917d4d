// @ts-check
/** The topic tree as a table: one row per level, its last message in the columns. */
import { element, formatBytes, formatTime, setText, syncRows } from './format.js';
import { MAX_NODES, MAX_TOPICS } from './topic-tree.js';

/** Rows in the table at most; the filter narrows a larger tree. */
export const MAX_ROWS = 500;

/** @typedef {import('./topic-tree.js').TopicRow} TopicRow */
/** @typedef {import('./topic-tree.js').TopicTree} TopicTree */

export class TopicTable {
  /** @type {Map<string, HTMLTableRowElement>} */
  #rows = new Map();
  #body;
  #note;
  #tree;

  /**
   * @param {HTMLTableSectionElement} body
   * @param {HTMLElement} note  says what is not shown and why
   * @param {TopicTree} tree
   * @param {AbortSignal} signal  ends the table's listeners (at sign-out)
   */
  constructor(body, note, tree, signal) {
    this.#body = body;
    this.#note = note;
    this.#tree = tree;
    body.addEventListener('click', (event) => {
      const button = /** @type {HTMLElement} */ (event.target).closest('button.toggle');
      const topic = button?.closest('tr')?.dataset.topic;
      if (topic !== undefined) tree.toggle(topic);
    }, { signal });
  }

  /** @param {string} filter */
  render(filter) {
    const tree = this.#tree;
    const filtering = filter.trim() !== '';
    const { rows, total } = tree.rows(filter, MAX_ROWS);
    syncRows(this.#body, this.#rows, rows, (row) => row.node.topic, createRow, (tr, row) => updateRow(tr, row, filtering));
    const notes = [];
    if (total > rows.length) notes.push(`${total - rows.length} more rows not shown: collapse levels or use the filter.`);
    if (filtering && total === 0) notes.push('No topic matches the filter.');
    if (!filtering && tree.topics === 0) notes.push('No message yet.');
    if (tree.refused > 0) {
      notes.push(
        `The tree is full (it keeps at most ${MAX_TOPICS.toLocaleString('en')} topics and ${MAX_NODES.toLocaleString('en')} levels): ` +
          `${tree.refused.toLocaleString('en')} messages on further topics were not kept.`,
      );
    }
    setText(this.#note, notes.join(' '));
  }
}

/** @param {TopicRow} row */
function createRow(row) {
  const tr = element('tr', { 'data-topic': row.node.topic });
  const name = element('td', { class: 'topic' });
  name.append(element('span', { class: 'toggle-slot' }), element('span', { class: 'name' }));
  tr.append(
    name,
    element('td', { class: 'payload' }),
    element('td', { class: 'bytes num' }),
    element('td', { class: 'time' }),
    element('td', { class: 'qos num' }),
    element('td', { class: 'retained' }),
  );
  return tr;
}

/** @param {HTMLTableRowElement} tr @param {TopicRow} row @param {boolean} filtering */
function updateRow(tr, row, filtering) {
  const { node, level, expandable, expanded } = row;
  const [topicCell, payload, bytes, time, qos, retained] = /** @type {HTMLTableCellElement[]} */ ([...tr.cells]);
  if (!topicCell || !payload || !bytes || !time || !qos || !retained) return;
  // Indentation through CSSOM: the CSP allows no inline style attribute.
  topicCell.style.setProperty('--level', String(level));
  const slot = /** @type {HTMLElement} */ (topicCell.firstElementChild);
  // While filtering, the filter decides what is open: no toggles then.
  const wantsToggle = expandable && !filtering;
  let toggle = slot.querySelector('button');
  if (wantsToggle && !toggle) {
    toggle = element('button', { type: 'button', class: 'toggle' });
    slot.append(toggle);
  } else if (!wantsToggle && toggle) {
    toggle.remove();
    toggle = null;
  }
  if (toggle) {
    const state = String(expanded);
    if (toggle.getAttribute('aria-expanded') !== state) {
      toggle.setAttribute('aria-expanded', state);
      toggle.setAttribute('aria-label', `${expanded ? 'Collapse' : 'Expand'} ${node.topic}`);
      toggle.textContent = expanded ? '▾' : '▸';
    }
  }
  const name = /** @type {HTMLElement} */ (topicCell.lastElementChild);
  setText(name, node.name === '' ? '(empty level)' : node.name);
  name.classList.toggle('empty-level', node.name === '');
  name.title = node.topic;
  const message = node.message;
  if (!message) {
    for (const cell of [payload, bytes, time, qos, retained]) setText(cell, '');
    return;
  }
  setText(payload, message.bytes === 0 ? '(empty)' : message.preview);
  payload.classList.toggle('binary', message.binary);
  setText(bytes, formatBytes(message.bytes));
  setText(time, formatTime(message.time));
  setText(qos, String(message.qos));
  setText(retained, message.retain ? 'yes' : 'no');
  tr.classList.toggle('is-retained', message.retain);
}
