// @ts-check
/**
 * The clients table, from the admin API (GET /api/v1/clients every 2 s),
 * with a Disconnect button per client (POST /api/v1/clients/{id}/disconnect).
 * Both calls carry the page's login as HTTP Basic; the admin API decides.
 */
import { element, formatBytes, formatCount, formatSince, setText, syncRows } from './format.js';

export const POLL_MS = 2000;
/** Clients listed at most; the summary says how many there are in all. */
const PAGE_SIZE = 100;

/**
 * One client as GET /api/v1/clients lists it.
 * @typedef {object} ClientInfo
 * @property {string} id
 * @property {string | null} [user]
 * @property {string | null} [address]
 * @property {string} [listener]
 * @property {string} [protocol]
 * @property {string | number} [connectedAt]
 * @property {number | unknown[]} [subscriptions]
 * @property {number} [queued]
 * @property {number} [inflight]
 * @property {number} [messagesIn]
 * @property {number} [messagesOut]
 * @property {number} [bytesIn]
 * @property {number} [bytesOut]
 */

export class ClientsPanel {
  /** @type {Map<string, HTMLTableRowElement>} */
  #rows = new Map();
  #body;
  #message;
  #summary;
  #retry;
  #authorization;
  #ownClientId;
  #running = false;
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  #timer;
  /** @type {AbortController | undefined} */
  #inFlight;
  #again = false;

  /**
   * @param {object} parts
   * @param {HTMLTableSectionElement} parts.body
   * @param {HTMLElement} parts.message  refusals and results of actions
   * @param {HTMLElement} parts.summary
   * @param {HTMLButtonElement} parts.retry  shown when polling stopped on a refusal
   * @param {string | undefined} parts.authorization  the Authorization header, if the login has a user name
   * @param {string} parts.ownClientId  this page's own MQTT client, which gets no Disconnect button
   * @param {AbortSignal} parts.signal  ends the panel's listeners (at sign-out)
   */
  constructor({ body, message, summary, retry, authorization, ownClientId, signal }) {
    this.#body = body;
    this.#message = message;
    this.#summary = summary;
    this.#retry = retry;
    this.#authorization = authorization;
    this.#ownClientId = ownClientId;
    body.addEventListener('click', (event) => {
      const button = /** @type {HTMLElement} */ (event.target).closest('button.disconnect');
      const id = button?.closest('tr')?.dataset.client;
      if (button instanceof HTMLButtonElement && id !== undefined) void this.#disconnect(id, button);
    }, { signal });
    retry.addEventListener('click', () => this.start(), { signal });
  }

  start() {
    this.#running = true;
    this.#retry.hidden = true;
    this.#pollSoon(0);
  }

  stop() {
    this.#running = false;
    clearTimeout(this.#timer);
    this.#inFlight?.abort();
  }

  /** @param {number} delayMs */
  #pollSoon(delayMs) {
    clearTimeout(this.#timer);
    if (!this.#running) return;
    // One request at a time: a slow daemon gets no pile of them.
    if (this.#inFlight) {
      this.#again = true;
      return;
    }
    this.#timer = setTimeout(() => void this.#poll(), delayMs);
  }

  async #poll() {
    const controller = new AbortController();
    this.#inFlight = controller;
    let next = POLL_MS;
    try {
      const response = await this.#request(`/api/v1/clients?limit=${PAGE_SIZE}`, 'GET', controller.signal);
      if (response.ok) {
        const list = /** @type {{ total?: number, clients?: ClientInfo[] }} */ (await response.json());
        this.#show(list.clients ?? [], list.total ?? 0);
        if (this.#message.dataset.kind === 'refused' || this.#message.dataset.kind === 'failed') this.#say('', '');
      } else if (response.status === 404 || response.status === 401 || response.status === 403) {
        // Asking again would be refused again (and logged again): stop until the operator retries.
        this.#say(await refusal(response), 'refused');
        this.#show([], undefined);
        this.#running = false;
        this.#retry.hidden = false;
      } else {
        this.#say(`The admin API answered ${response.status}: ${await errorText(response)}. Retrying.`, 'failed');
      }
    } catch (error) {
      if (controller.signal.aborted) return;
      this.#say(`The admin API cannot be reached (${/** @type {Error} */ (error).message}). Retrying.`, 'failed');
      next = POLL_MS * 2;
    } finally {
      this.#inFlight = undefined;
    }
    const again = this.#again;
    this.#again = false;
    this.#pollSoon(again ? 0 : next);
  }

  /** @param {string} id @param {HTMLButtonElement} button */
  async #disconnect(id, button) {
    button.disabled = true;
    try {
      const response = await this.#request(`/api/v1/clients/${encodeURIComponent(id)}/disconnect`, 'POST');
      if (response.ok) {
        this.#say(`Disconnected ${id}.`, 'done');
        this.#rows.get(id)?.remove();
        this.#rows.delete(id);
      } else if (response.status === 401 || response.status === 403) {
        this.#say(await refusal(response), 'failed');
      } else {
        // 404: the client left meanwhile (or the admin API is off).
        this.#say(`${id} could not be disconnected: ${response.status} ${await errorText(response)}.`, 'failed');
      }
    } catch (error) {
      this.#say(`${id} could not be disconnected: ${/** @type {Error} */ (error).message}.`, 'failed');
    } finally {
      button.disabled = false;
      this.#pollSoon(0);
    }
  }

  /**
   * @param {string} path
   * @param {'GET' | 'POST'} method
   * @param {AbortSignal} [signal]
   */
  #request(path, method, signal) {
    /** @type {Record<string, string>} */
    const headers = { Accept: 'application/json' };
    if (this.#authorization) headers.Authorization = this.#authorization;
    // credentials 'omit': the login is sent explicitly, never a browser-cached one, and a 401 opens no browser dialog.
    return fetch(path, { method, headers, cache: 'no-store', credentials: 'omit', ...(signal ? { signal } : {}) });
  }

  /** @param {string} text @param {string} kind */
  #say(text, kind) {
    setText(this.#message, text);
    this.#message.dataset.kind = kind;
  }

  /** @param {ClientInfo[]} clients @param {number | undefined} total */
  #show(clients, total) {
    syncRows(this.#body, this.#rows, clients, (client) => client.id, (client) => this.#createRow(client), updateRow);
    setText(
      this.#summary,
      total === undefined ? '' : total > clients.length ? `${clients.length} of ${formatCount(total)} clients shown.` : `${formatCount(total)} clients connected.`,
    );
  }

  /** @param {ClientInfo} client */
  #createRow(client) {
    const tr = element('tr', { 'data-client': client.id });
    for (const name of ['id', 'user', 'address', 'listener', 'since', 'subscriptions num', 'queued num', 'messages num', 'bytes num']) {
      tr.append(element('td', { class: name }));
    }
    const action = element('td', { class: 'action' });
    if (client.id === this.#ownClientId) action.append(element('span', { class: 'own' }, 'this page'));
    else action.append(element('button', { type: 'button', class: 'disconnect', 'aria-label': `Disconnect ${client.id}` }, 'Disconnect'));
    tr.append(action);
    return tr;
  }
}

/** @param {HTMLTableRowElement} tr @param {ClientInfo} client */
function updateRow(tr, client) {
  const cells = [...tr.cells];
  const values = [
    client.id,
    client.user ?? '',
    client.address ?? '',
    [client.listener, client.protocol && `MQTT ${client.protocol}`].filter(Boolean).join(', '),
    client.connectedAt === undefined ? '' : formatSince(new Date(client.connectedAt).getTime()),
    formatCount(Array.isArray(client.subscriptions) ? client.subscriptions.length : Number(client.subscriptions)),
    `${formatCount(Number(client.queued))} / ${formatCount(Number(client.inflight))}`,
    `${formatCount(Number(client.messagesIn))} / ${formatCount(Number(client.messagesOut))}`,
    `${formatBytes(Number(client.bytesIn))} / ${formatBytes(Number(client.bytesOut))}`,
  ];
  values.forEach((value, index) => {
    const cell = cells[index];
    if (cell) setText(cell, value);
  });
}

/** What to tell the operator when the admin API refuses the page. @param {Response} response */
async function refusal(response) {
  const detail = await errorText(response);
  if (response.status === 404) return 'The admin API is off on this daemon (admin.enabled in its config), so clients cannot be listed or disconnected here.';
  return (
    `The admin API refused this login (${response.status}${detail ? `: ${detail}` : ''}). ` +
    'It answers only users named in admin.users, and by default only from this machine (admin.allowRemote).'
  );
}

/** The `error` of a JSON error body, else the start of the text. @param {Response} response */
async function errorText(response) {
  const text = await response.text().catch(() => '');
  try {
    const body = JSON.parse(text);
    if (body && typeof body.error === 'string') return body.error;
  } catch {
    // not JSON
  }
  return text.slice(0, 200).trim();
}
