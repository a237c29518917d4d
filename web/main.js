// @ts-check
/**
 * The dashboard page: a login form, then one session per login that feeds
 * the panels from MQTT ($SYS and the topic tree) and the admin API (clients).
 *
 * Messages update the models as they arrive; the DOM is redrawn at most
 * every RENDER_INTERVAL_MS, so thousands of messages a second cost the page
 * a few renders a second.
 */
import { CounterRate, Series, drawChart } from './charts.js';
import { ClientsPanel } from './clients.js';
import { openConnection } from './connection.js';
import { formatCount, formatDuration, formatRate, setText } from './format.js';
import { showBridge, showStore, showWaiting } from './health.js';
import { TopicTable } from './topic-table.js';
import { TopicTree } from './topic-tree.js';

const RENDER_INTERVAL_MS = 250;
/** After $SYS/broker/uptime, the rest of that round of $SYS figures is given this long to arrive. */
const SYS_ROUND_MS = 250;
/** The charts' time axis moves even when no $SYS value comes. */
const CHART_REFRESH_MS = 5000;

/**
 * @template {Element} T
 * @param {string} id
 * @param {new (...args: any[]) => T} type
 * @returns {T}
 */
function byId(id, type) {
  const node = document.getElementById(id);
  if (!(node instanceof type)) throw new Error(`the page lacks #${id}`);
  return node;
}

const ui = {
  status: byId('status', HTMLElement),
  brokerInfo: byId('broker-info', HTMLElement),
  signOut: byId('sign-out', HTMLButtonElement),
  loginPanel: byId('login-panel', HTMLElement),
  loginForm: byId('login', HTMLFormElement),
  loginUser: byId('login-user', HTMLInputElement),
  loginPassword: byId('login-password', HTMLInputElement),
  loginSubmit: byId('login-submit', HTMLButtonElement),
  loginError: byId('login-error', HTMLElement),
  panels: byId('panels', HTMLElement),
  sysNote: byId('sys-note', HTMLElement),
  throughputChart: byId('chart-throughput', SVGSVGElement),
  rateIn: byId('rate-in', HTMLElement),
  rateOut: byId('rate-out', HTMLElement),
  clientsChart: byId('chart-clients', SVGSVGElement),
  clientsNow: byId('clients-now', HTMLElement),
  store: byId('store', HTMLDListElement),
  bridgePanel: byId('bridge-panel', HTMLElement),
  bridge: byId('bridge', HTMLDListElement),
  clientsBody: byId('clients-body', HTMLTableSectionElement),
  clientsMessage: byId('clients-message', HTMLElement),
  clientsSummary: byId('clients-summary', HTMLElement),
  clientsRetry: byId('clients-retry', HTMLButtonElement),
  watchForm: byId('watch-form', HTMLFormElement),
  watchFilter: byId('watch-filter', HTMLInputElement),
  watch: byId('watch', HTMLButtonElement),
  topicFilter: byId('topic-filter', HTMLInputElement),
  expandAll: byId('expand-all', HTMLButtonElement),
  collapseAll: byId('collapse-all', HTMLButtonElement),
  topicsBody: byId('topics-body', HTMLTableSectionElement),
  topicsNote: byId('topics-note', HTMLElement),
};

/** Where the daemon serves MQTT over WebSocket; written into the page by the daemon, empty when that is off. */
const websocketPath = document.querySelector('meta[name="edgemqtt-websocket-path"]')?.getAttribute('content') ?? '';

/** One login: its connection, models and timers; `close()` ends them all. */
class Session {
  tree = new TopicTree();
  messagesIn = new Series();
  messagesOut = new Series();
  clientsConnected = new Series();
  #inRate = new CounterRate(this.messagesIn);
  #outRate = new CounterRate(this.messagesOut);
  #listeners = new AbortController();
  #table;
  #clients;
  #connection;
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  #renderTimer;
  #chartTimer;
  #lastRender = 0;
  #renderedVersion = -1;
  #renderedFilter = '';
  #chartsDirty = true;
  #version = '';
  #uptime = '';
  /** The last value of each charted $SYS figure. */
  #latest = { received: Number.NaN, sent: Number.NaN, connected: Number.NaN };
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  #sampleTimer;

  /** @param {string} username @param {string} password @param {(why: string) => void} onRefused */
  constructor(username, password, onRefused) {
    const signal = this.#listeners.signal;
    const clientId = `edgemqtt-dashboard-${randomHex(6)}`;
    this.#table = new TopicTable(ui.topicsBody, ui.topicsNote, this.tree, signal);
    this.#clients = new ClientsPanel({
      body: ui.clientsBody,
      message: ui.clientsMessage,
      summary: ui.clientsSummary,
      retry: ui.clientsRetry,
      authorization: username !== '' || password !== '' ? basicAuthorization(username, password) : undefined,
      ownClientId: clientId,
      signal,
    });
    ui.topicFilter.addEventListener('input', () => this.scheduleRender(), { signal });
    ui.expandAll.addEventListener('click', () => this.#setAll(true), { signal });
    ui.collapseAll.addEventListener('click', () => this.#setAll(false), { signal });
    ui.topicsBody.addEventListener('click', () => this.scheduleRender(), { signal });
    this.#chartTimer = setInterval(() => {
      this.#chartsDirty = true;
      this.scheduleRender();
    }, CHART_REFRESH_MS);
    this.#connection = openConnection({
      url: `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}${websocketPath}`,
      clientId,
      username,
      password,
      onMessage: (topic, payload, flags) => this.#message(topic, payload, flags),
      onState: (state, detail) => {
        if (state === 'refused') onRefused(`The broker refused the login: ${detail}`);
        else showStatus(state, detail);
      },
      onSubscriptionRefused: (filter, why) => {
        const effect = filter.startsWith('$SYS') ? 'the charts and the store panel stay empty' : 'the topic tree cannot watch it';
        const note = `Subscribing to ${filter} was ${why}: ${effect} for this login.`;
        if (!ui.sysNote.textContent?.includes(note)) setText(ui.sysNote, `${ui.sysNote.textContent ?? ''} ${note}`.trim());
      },
      onWatching: (filter) => showWatching(filter),
    });
    ui.watchForm.addEventListener(
      'submit',
      (event) => {
        event.preventDefault();
        const filter = ui.watchFilter.value.trim();
        if (ui.watch.dataset.watching !== 'off') this.#connection.unwatch();
        else if (filter !== '') {
          ui.watch.dataset.watching = 'pending';
          this.#connection.watch(filter);
        }
      },
      { signal },
    );
    this.#clients.start();
    this.scheduleRender();
  }

  close() {
    this.#connection.close();
    this.#clients.stop();
    this.#listeners.abort();
    clearTimeout(this.#renderTimer);
    clearTimeout(this.#sampleTimer);
    clearInterval(this.#chartTimer);
  }

  /** @param {boolean} expanded */
  #setAll(expanded) {
    this.tree.setAll(expanded);
    this.scheduleRender();
  }

  /** @param {string} topic @param {Uint8Array} payload @param {{ qos: number, retain: boolean }} flags */
  #message(topic, payload, flags) {
    const now = Date.now();
    this.tree.record(topic, payload, flags, now);
    if (topic.startsWith('$SYS/')) this.#sys(topic, new TextDecoder().decode(payload));
    this.scheduleRender();
  }

  /** @param {string} topic @param {string} text */
  #sys(topic, text) {
    switch (topic) {
      case '$SYS/broker/publish/messages/received':
        this.#latest.received = Number(text);
        return;
      case '$SYS/broker/publish/messages/sent':
        this.#latest.sent = Number(text);
        return;
      case '$SYS/broker/clients/connected':
        this.#latest.connected = Number(text);
        return;
      case '$SYS/broker/version':
        this.#version = text;
        break;
      case '$SYS/broker/uptime':
        // mosquitto's form: "N seconds". Uptime comes in every round of $SYS
        // figures; the others only when they changed (as in mosquitto), so one
        // that did not come is unchanged: the charts take their points per round.
        this.#uptime = formatDuration(Number.parseInt(text, 10));
        clearTimeout(this.#sampleTimer);
        this.#sampleTimer = setTimeout(() => this.#sample(), SYS_ROUND_MS);
        break;
      case '$SYS/edgemqtt/store':
        showStore(ui.store, text);
        return;
      case '$SYS/edgemqtt/bridge':
        ui.bridgePanel.hidden = false;
        showBridge(ui.bridge, text);
        return;
      default:
        return;
    }
    this.#chartsDirty = true;
  }

  /** One point per chart for a round of $SYS figures. */
  #sample() {
    const now = Date.now();
    const { received, sent, connected } = this.#latest;
    if (Number.isFinite(received)) this.#inRate.observe(now, received);
    if (Number.isFinite(sent)) this.#outRate.observe(now, sent);
    if (Number.isFinite(connected)) this.clientsConnected.add(now, connected);
    this.#chartsDirty = true;
    this.scheduleRender();
  }

  /** Renders soon, at most once per RENDER_INTERVAL_MS. */
  scheduleRender() {
    if (this.#renderTimer !== undefined) return;
    const wait = Math.max(0, this.#lastRender + RENDER_INTERVAL_MS - performance.now());
    this.#renderTimer = setTimeout(() => {
      this.#renderTimer = undefined;
      this.#lastRender = performance.now();
      this.#render();
    }, wait);
  }

  #render() {
    const filter = ui.topicFilter.value;
    if (this.tree.version !== this.#renderedVersion || filter !== this.#renderedFilter) {
      this.#renderedVersion = this.tree.version;
      this.#renderedFilter = filter;
      this.#table.render(filter);
    }
    if (!this.#chartsDirty) return;
    this.#chartsDirty = false;
    const now = Date.now();
    for (const series of [this.messagesIn, this.messagesOut, this.clientsConnected]) series.prune(now);
    const waiting = 'waiting for $SYS values';
    drawChart(ui.throughputChart, [{ series: this.messagesIn, className: 'in' }, { series: this.messagesOut, className: 'out' }], now, waiting);
    drawChart(ui.clientsChart, [{ series: this.clientsConnected, className: 'clients' }], now, waiting);
    setText(ui.rateIn, formatRate(this.messagesIn.last ?? Number.NaN));
    setText(ui.rateOut, formatRate(this.messagesOut.last ?? Number.NaN));
    setText(ui.clientsNow, formatCount(this.clientsConnected.last ?? Number.NaN));
    setText(ui.brokerInfo, [this.#version, this.#uptime && `up ${this.#uptime}`].filter(Boolean).join(' · '));
  }
}

/** @type {Session | undefined} */
let session;

const STATUS_TEXT = {
  'signed-out': 'Signed out',
  connecting: 'Connecting…',
  connected: 'Connected',
  reconnecting: 'Reconnecting…',
};

/** @param {keyof typeof STATUS_TEXT} state @param {string} [detail] */
function showStatus(state, detail = '') {
  ui.status.dataset.state = state;
  setText(ui.status, detail ? `${STATUS_TEXT[state]} (${detail})` : STATUS_TEXT[state]);
}

/** The Watch button says what a press does: watch, or stop watching `filter`. @param {string | null} filter */
function showWatching(filter) {
  ui.watch.dataset.watching = filter === null ? 'off' : 'on';
  setText(ui.watch, filter === null ? 'Watch' : 'Stop watching');
  ui.watchFilter.disabled = filter !== null;
}

/** @param {string} [why] */
function signOut(why) {
  session?.close();
  session = undefined;
  ui.panels.hidden = true;
  ui.signOut.hidden = true;
  ui.loginPanel.hidden = false;
  setText(ui.loginError, why ?? '');
  showStatus('signed-out');
  ui.loginPassword.value = '';
  ui.loginUser.focus();
}

ui.loginForm.addEventListener('submit', (event) => {
  event.preventDefault();
  session?.close();
  resetPanels();
  setText(ui.loginError, '');
  ui.loginPanel.hidden = true;
  ui.panels.hidden = false;
  ui.signOut.hidden = false;
  session = new Session(ui.loginUser.value, ui.loginPassword.value, (why) => signOut(why));
});
ui.signOut.addEventListener('click', () => signOut());

/** Empties what a previous login showed. */
function resetPanels() {
  for (const node of [ui.topicsBody, ui.clientsBody, ui.store, ui.bridge]) node.replaceChildren();
  for (const node of [ui.sysNote, ui.topicsNote, ui.clientsMessage, ui.clientsSummary, ui.brokerInfo]) setText(node, '');
  showWaiting(ui.store, '$SYS/edgemqtt/store');
  ui.bridgePanel.hidden = true;
  ui.clientsRetry.hidden = true;
  showWatching(null);
}

if (websocketPath === '') {
  setText(ui.loginError, 'MQTT over WebSocket is off on this daemon (http.websocket.enabled), so the dashboard cannot connect.');
  ui.loginSubmit.disabled = true;
}

/** @param {string} user @param {string} password */
function basicAuthorization(user, password) {
  // RFC 7617: user-id ":" password, UTF-8, base64.
  const bytes = new TextEncoder().encode(`${user}:${password}`);
  return `Basic ${btoa(Array.from(bytes, (byte) => String.fromCharCode(byte)).join(''))}`;
}

/** @param {number} bytes */
function randomHex(bytes) {
  // getRandomValues works on plain http too (randomUUID needs a secure context).
  return Array.from(crypto.getRandomValues(new Uint8Array(bytes)), (byte) => byte.toString(16).padStart(2, '0')).join('');
}
