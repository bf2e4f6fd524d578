// The last periodic verify against a dialled peer or a fleet site
// (sync.verify_interval_s; docs/verify.md), as one table cell.

import { el, formatAge, formatCount } from "./format.js";

/**
 * "identical, 2 min ago" or "3 rows differ"; before the first verify "not yet"
 * where one will come (`expected`: a peer we dial, a fleet site), else "–".
 */
export function verifiedCell(entry, now, expected) {
  if (entry.verify_waiting) {
    // A side still catches up: rows in flight are no divergence, so no verdict now.
    return el("td", { class: "note", "data-field": "verified", title: entry.verify_waiting }, "waiting: catching up");
  }
  if (!entry.verified_ms) {
    return el("td", { class: "note", "data-field": "verified" }, expected ? "not yet" : "–");
  }
  const ago = formatAge(entry.verified_ms, now);
  if (entry.verify_error) {
    return el("td", { class: "error", "data-field": "verified", title: entry.verify_error }, `failed ${ago}`);
  }
  if (entry.verify_identical) {
    // Rows still changing at every re-read are writes in flight: not judged.
    const changing = entry.verify_unsettled_rows > 0 ? ` · ${formatCount(entry.verify_unsettled_rows)} rows changing` : "";
    return el("td", { "data-field": "verified" }, el("span", { class: "badge connected" }, "identical"), ` ${ago}${changing}`);
  }
  const text = `${formatCount(entry.verify_divergent_rows)} rows differ`;
  return el("td", { class: "error", "data-field": "verified" }, el("span", { class: "badge down" }, text), ` ${ago}`);
}
