// @ts-check
/**
 * Small line charts of $SYS values over the last ten minutes, drawn as SVG
 * by hand: a few dozen points each ($SYS comes every broker.sysIntervalSec).
 */

/** How far back the charts reach. */
export const WINDOW_MS = 10 * 60_000;

const SVG = 'http://www.w3.org/2000/svg';
// Drawing box in SVG units; the element scales it to its width.
const WIDTH = 400;
const HEIGHT = 140;
const LEFT = 40;
const RIGHT = 8;
const TOP = 10;
const BOTTOM = 20;

/** Values over time, oldest first, none older than WINDOW_MS. */
export class Series {
  /** @type {{ time: number, value: number }[]} */
  points = [];

  /** @param {number} time @param {number} value */
  add(time, value) {
    this.points.push({ time, value });
    this.prune(time);
  }

  /** @param {number} now */
  prune(now) {
    while (this.points.length > 0 && /** @type {{ time: number }} */ (this.points[0]).time < now - WINDOW_MS) this.points.shift();
  }

  get last() {
    return this.points.at(-1)?.value;
  }
}

/**
 * Turns a counter ($SYS/broker/publish/messages/received) into a rate per
 * second between two readings. A counter that goes down means the broker
 * restarted: that reading only starts the next difference.
 */
export class CounterRate {
  /** @type {{ time: number, count: number } | undefined} */
  #previous;
  #series;

  /** @param {Series} series */
  constructor(series) {
    this.#series = series;
  }

  /** @param {number} time @param {number} count */
  observe(time, count) {
    const previous = this.#previous;
    this.#previous = { time, count };
    if (!previous || count < previous.count || time <= previous.time) return;
    this.#series.add(time, ((count - previous.count) * 1000) / (time - previous.time));
  }
}

/**
 * @typedef {object} Line
 * @property {Series} series
 * @property {string} className  colour, from the stylesheet
 */

/**
 * Draws `lines` into `svg`, replacing what was there.
 * @param {SVGSVGElement} svg
 * @param {Line[]} lines
 * @param {number} now
 * @param {string} waiting  shown while no line has two points
 */
export function drawChart(svg, lines, now, waiting) {
  svg.setAttribute('viewBox', `0 0 ${WIDTH} ${HEIGHT}`);
  const parts = [];
  const from = now - WINDOW_MS;
  const plotWidth = WIDTH - LEFT - RIGHT;
  const plotHeight = HEIGHT - TOP - BOTTOM;
  const x = (/** @type {number} */ time) => LEFT + ((time - from) / WINDOW_MS) * plotWidth;
  const max = niceCeiling(Math.max(0, ...lines.flatMap((line) => line.series.points.map((p) => p.value))));
  const y = (/** @type {number} */ value) => TOP + plotHeight - (value / max) * plotHeight;

  for (const fraction of [0, 0.5, 1]) {
    const value = max * fraction;
    parts.push(svgElement('line', { class: 'grid', x1: LEFT, x2: WIDTH - RIGHT, y1: y(value), y2: y(value) }));
    parts.push(svgElement('text', { class: 'axis', x: LEFT - 6, y: y(value) + 4, 'text-anchor': 'end' }, compact(value)));
  }
  for (const [label, time] of /** @type {const} */ ([['−10 min', from], ['−5 min', from + WINDOW_MS / 2], ['now', now]])) {
    const anchor = time === from ? 'start' : time === now ? 'end' : 'middle';
    parts.push(svgElement('text', { class: 'axis', x: x(time), y: HEIGHT - 4, 'text-anchor': anchor }, label));
  }
  let drawn = 0;
  for (const line of lines) {
    const points = line.series.points.filter((p) => p.time >= from);
    if (points.length < 2) continue;
    drawn++;
    const path = points.map((p) => `${x(p.time).toFixed(1)},${y(p.value).toFixed(1)}`).join(' ');
    parts.push(svgElement('polyline', { class: `line ${line.className}`, points: path }));
  }
  if (drawn === 0) parts.push(svgElement('text', { class: 'waiting', x: LEFT + plotWidth / 2, y: TOP + plotHeight / 2, 'text-anchor': 'middle' }, waiting));
  svg.replaceChildren(...parts);
}

/**
 * @param {string} name
 * @param {Record<string, string | number>} attributes
 * @param {string} [text]
 */
function svgElement(name, attributes, text) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

/** The next 1, 2 or 5 × 10ⁿ at or above `value` (at least 1), so the axis reads well. @param {number} value */
function niceCeiling(value) {
  if (value <= 1) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) if (step * power >= value) return step * power;
  return 10 * power;
}

/** @param {number} value */
function compact(value) {
  if (value >= 1e6) return `${(value / 1e6).toFixed(value % 1e6 === 0 ? 0 : 1)}M`;
  if (value >= 1e3) return `${(value / 1e3).toFixed(value % 1e3 === 0 ? 0 : 1)}k`;
  return Number.isInteger(value) ? String(value) : value.toFixed(1);
}
