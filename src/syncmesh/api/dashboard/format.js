// Small formatting and DOM helpers.  Values that come from peers (keys,
// values, error texts) are only ever set as text, never as markup.

const SVG_NS = "http://www.w3.org/2000/svg";

/** An HTML element with attributes and children (strings become text). */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  setAttributes(node, attributes);
  node.append(...children.map((child) => (child instanceof Node ? child : String(child))));
  return node;
}

/** An SVG element with attributes; `text` becomes its text content. */
export function svg(tag, attributes = {}, text = null) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttributes(node, attributes);
  if (text !== null) {
    node.textContent = String(text);
  }
  return node;
}

function setAttributes(node, attributes) {
  for (const [name, value] of Object.entries(attributes)) {
    if (value !== null && value !== undefined) {
      node.setAttribute(name, String(value));
    }
  }
}

/** Replace a table body's rows. */
export function fillRows(tbody, rows) {
  tbody.replaceChildren(...rows);
}

export function shortSite(siteId) {
  return siteId ? siteId.slice(0, 8) : "?";
}

export function formatCount(count) {
  return Number(count).toLocaleString("en");
}

export function formatBytes(bytes) {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let value = Number(bytes);
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

// A lag the node cannot tell (null: nothing of the feed applied yet).  Never
// "0 s" (caught up) nor the time since 1970 (new-user report: "20795 d").
export const NOT_KNOWN = "not known yet";

/** A duration in milliseconds, coarse: "0 s", "2.5 s", "4 min", "3 h", "2 d"; null: not known. */
export function formatDuration(ms) {
  if (ms === null || ms === undefined) {
    return NOT_KNOWN;
  }
  const seconds = Math.max(0, ms) / 1000;
  if (seconds < 10) {
    return `${seconds < 0.05 ? 0 : seconds.toFixed(1).replace(/\.0$/, "")} s`;
  }
  if (seconds < 120) {
    return `${Math.round(seconds)} s`;
  }
  if (seconds < 7200) {
    return `${Math.round(seconds / 60)} min`;
  }
  if (seconds < 172800) {
    return `${Math.round(seconds / 3600)} h`;
  }
  return `${Math.round(seconds / 86400)} d`;
}

export function formatAge(thenMs, nowMs) {
  if (!thenMs) {
    return "never";
  }
  return `${formatDuration(nowMs - thenMs)} ago`;
}

/** A SQL value as JSON would show it, cut to `limit` characters. */
export function formatValue(value, limit = 60) {
  const text = typeof value === "string" ? value : JSON.stringify(value);
  return text.length > limit ? `${text.slice(0, limit - 1)}…` : text;
}

/** A timestamp that may be Unix seconds, Unix milliseconds or an ISO text. */
export function toMs(when) {
  if (typeof when === "number") {
    return when < 1e11 ? when * 1000 : when;
  }
  const parsed = Date.parse(when);
  return Number.isNaN(parsed) ? null : parsed;
}
