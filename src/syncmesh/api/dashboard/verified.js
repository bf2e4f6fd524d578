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
    // Rows a feed missed, merged by earlier verifies: identical now, but worth a look.
    const total = entry.verify_repaired_rows_total || 0;
    const healed = total > 0 ? ` · ${formatCount(total)} rows repaired since start` : "";
    // A table whose columns differ there (a migration not run at both sites) is not compared.
    const skipped = (entry.verify_not_compared || []).length > 0 ? ` · not compared (columns differ): ${entry.verify_not_compared.join(", ")}` : "";
    return el("td", { "data-field": "verified" }, el("span", { class: "badge connected" }, "identical"), ` ${ago}${changing}${healed}${skipped}`);
  }
  // Divergent rows the node merged both ways (sync.verify_repair): found and healed,
  // still shown, as a feed missed them; the next verify tells whether they hold.
  const repaired = entry.verify_repaired_rows || 0;
  if (repaired > 0) {
    const text = `${formatCount(entry.verify_divergent_rows)} rows differed · repaired`;
    return el("td", { "data-field": "verified", title: "a feed missed these rows: the periodic verify found and merged them" }, el("span", { class: "badge connecting" }, text), ` ${ago}`);
  }
  const text = `${formatCount(entry.verify_divergent_rows)} rows differ`;
  return el("td", { class: "error", "data-field": "verified" }, el("span", { class: "badge down" }, text), ` ${ago}`);
}
