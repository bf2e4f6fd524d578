// The dashboard: poll the node's JSON API about once a second and render
// every panel from the answers.  When /v1/status fails, the page says
// since when the node has not answered and keeps the last view, greyed.

import { HttpError, getJson } from "./api.js";
import { renderChart, totals } from "./chart.js";
import {
  el,
  fillRows,
  formatAge,
  formatBytes,
  formatCount,
  formatDuration,
  formatValue,
  shortSite,
  toMs,
} from "./format.js";
import { fleetStreaming, renderFleet } from "./fleet.js";
import { verifiedCell } from "./verified.js";
import { mergePeers } from "./peers.js";
import { renderTopology } from "./topology.js";

const POLL_MS = 1000;
const CONFLICTS_SHOWN_MAX = 50;
// A node without the conflict ledger answers 404: ask it again only this
// often (it may be upgraded meanwhile), not every second.
const LEDGER_RECHECK_MS = 30000;

const $ = (id) => document.getElementById(id);
const rememberedPeers = new Map();
let clockOffsetMs = 0; // the node's clock minus the browser's
let lastAnswerMs = null;
let failingSinceMs = null;
let ledgerRecheckAtMs = 0;

const nodeNow = () => Date.now() + clockOffsetMs;

function setConnection(ok, error) {
  const banner = $("connection");
  const clock = (ms) => new Date(ms).toLocaleTimeString();
  if (ok) {
    failingSinceMs = null;
    lastAnswerMs = Date.now();
    banner.dataset.state = "live";
    banner.textContent = `live · updated ${clock(lastAnswerMs)}`;
  } else {
    failingSinceMs ??= Date.now();
    banner.dataset.state = "down";
    const last = lastAnswerMs === null ? "never answered" : `last answer ${clock(lastAnswerMs)}`;
    banner.textContent = `node not answering since ${clock(failingSinceMs)} (${last}): ${error.message}`;
  }
  document.body.classList.toggle("stale", !ok);
}

// The verdict is the node's own (syncmesh.node.health), the same one that
// GET /v1/health answers: the page never judges differently from the probe.
function healthProblems(status) {
  return status.health ? status.health.reasons : [];
}

// A peer's last error with its time; marked as past once the session streams again.
function lastErrorText(entry, link, now) {
  if (!entry.last_error) return "";
  const when = entry.last_error_ms
    ? ` (at ${new Date(entry.last_error_ms - clockOffsetMs).toLocaleTimeString()}, ${formatAge(entry.last_error_ms, now)})`
    : "";
  return link === "connected" ? `past: ${entry.last_error}${when}` : `${entry.last_error}${when}`;
}

/** Tombstones waiting and collected, and the member holding collection back (ADR 0015). */
function renderLifecycle(lifecycle) {
  if (!lifecycle) {
    $("node-tombstones").textContent = "not collected by this node";
    $("node-holding-back").textContent = "";
    return;
  }
  $("node-tombstones").textContent =
    `${formatCount(lifecycle.tombstones_waiting)} waiting, ${formatCount(lifecycle.tombstones_collected)} collected`;
  $("node-holding-back").textContent = lifecycle.holding_back
    ? `${shortSite(lifecycle.holding_back)} (${lifecycle.holding_back_ms === null ? "how far behind: not known yet" : `${formatDuration(lifecycle.holding_back_ms)} behind`})`
    : "nobody";
  $("node-holding-back").title = lifecycle.holding_back ?? "";
}

function renderNode(status, peers) {
  const store = status.store;
  $("title-site").textContent = shortSite(status.site_id);
  document.title = `syncmesh ${shortSite(status.site_id)}`;
  $("node-site").textContent = status.site_id;
  $("node-listen").textContent = status.listen;
  $("node-seq").textContent = String(store.seq);
  $("node-quarantined").textContent = `${formatCount(store.quarantined_rows)} rows`;
  renderLifecycle(store.lifecycle);
  const problems = healthProblems(status);
  const health = $("node-health");
  // /v1/health gives a fleet stream out of reach some seconds before it calls
  // it a problem (a reconnect is not an outage), but the page never says
  // "healthy" while the fleet's data is not flowing.
  const fleetStopped = status.fleet && !fleetStreaming(status.fleet);
  if (problems.length) {
    health.dataset.health = "degraded";
    health.textContent = `degraded (${problems.length})`;
  } else if (fleetStopped) {
    health.dataset.health = "not-streaming";
    health.textContent = `not streaming: fleet ${status.fleet.state}`;
  } else {
    health.dataset.health = "healthy";
    health.textContent = "healthy";
  }
  $("node-problems").replaceChildren(...problems.map((problem) => el("li", {}, problem)));
  // Risks that need the operator but do not make the node unhealthy
  // (an INTEGER PRIMARY KEY tracked before `track` refused it).
  const warnings = store.warnings ?? [];
  $("node-warnings").replaceChildren(...warnings.map((warning) => el("li", {}, warning)));
  fillRows(
    $("tables").tBodies[0],
    Object.entries(store.tables).map(([name, rows]) =>
      el("tr", { "data-table": name }, el("td", { class: "mono" }, name), el("td", { class: "num" }, formatCount(rows))),
    ),
  );
}

function renderPeers(status, peers) {
  const now = nodeNow();
  renderTopology($("topology"), status, peers, now);
  $("peers-empty").hidden = peers.length > 0;
  // Fleet sites are not peers: they are never drawn, only listed (fleet.js).
  $("peers-fleet-note").hidden = !status.fleet;
  fillRows(
    $("peers").tBodies[0],
    peers.map((peer) => {
      const entry = peer.entry;
      const known = !peer.gone && entry.out_lag_changes !== null;
      return el(
        "tr",
        { "data-peer": entry.site_id || entry.address, "data-link": peer.link },
        el(
          "td",
          { title: entry.site_id },
          el("span", { class: "mono" }, entry.site_id ? shortSite(entry.site_id) : "never reached"),
          " ",
          entry.address,
        ),
        el("td", {}, el("span", { class: `badge ${peer.link}` }, peer.state)),
        el("td", { class: "num", "data-field": "lag-in" }, peer.gone ? "–" : formatDuration(entry.lag_ms) + catchingUp(entry)),
        el("td", { class: "num" }, known ? formatDuration(entry.out_lag_ms) : "–"),
        el("td", { class: "num", "data-field": "out-changes" }, known ? formatCount(entry.out_lag_changes) : "–"),
        el("td", {}, peer.gone ? `session ended ${formatAge(peer.lastListedMs, now)}` : formatAge(entry.last_batch_ms, now)),
        el("td", { class: "num" }, formatBytes(entry.bytes_in)),
        el("td", { class: "num" }, formatBytes(entry.bytes_out)),
        verifiedCell(entry, now, entry.dialed),
        // A dialer keeps its last error after it got through: muted then.
        el("td", { class: peer.link === "connected" ? "note" : "error", "data-field": "last-error" }, lastErrorText(entry, peer.link, now)),
        // Tables or columns only one side tracks: no refusal (ADR 0013), but worth telling.
        el("td", { class: "note", "data-field": "schema-differences" }, (entry.schema_differences ?? []).join("; ")),
      );
    }),
  );
}

function renderThroughput(result) {
  if (result.status === "rejected") {
    $("throughput-note").textContent = `cannot read the throughput: ${result.reason.message}`;
    return;
  }
  const throughput = result.value;
  renderChart($("throughput"), throughput);
  const sums = totals(throughput);
  $("throughput-captured").textContent = formatCount(sums.captured);
  $("throughput-applied").textContent = formatCount(sums.applied);
  $("throughput-caption").textContent =
    `rows per ${formatDuration(throughput.interval_s * 1000)}, last ${formatDuration(throughput.window_s * 1000)}`;
  $("throughput-note").textContent = "";
}

function stampText(side) {
  return `${formatValue(side.value)} (site ${shortSite(side.site)}, hlc ${side.hlc})`;
}

function renderConflicts(result) {
  const table = $("conflicts");
  const note = $("conflicts-note");
  if (result.status === "rejected") {
    table.hidden = true;
    const missing = result.reason instanceof HttpError && result.reason.status === 404;
    if (missing) {
      ledgerRecheckAtMs = Date.now() + LEDGER_RECHECK_MS;
    }
    note.textContent = missing ? "conflict ledger not available" : `cannot read conflicts: ${result.reason.message}`;
    note.dataset.state = missing ? "unavailable" : "error";
    return;
  }
  const conflicts = [...(result.value.conflicts ?? [])]
    .sort((a, b) => (toMs(b.resolved_at) ?? 0) - (toMs(a.resolved_at) ?? 0))
    .slice(0, CONFLICTS_SHOWN_MAX);
  note.dataset.state = "ok";
  note.textContent = conflicts.length ? "" : "no conflicts recorded";
  table.hidden = conflicts.length === 0;
  const now = nodeNow();
  fillRows(
    table.tBodies[0],
    conflicts.map((conflict) =>
      el(
        "tr",
        {},
        el("td", {}, formatAge(toMs(conflict.resolved_at), now)),
        el("td", { class: "mono" }, conflict.table),
        el("td", { class: "mono" }, formatValue(conflict.key)),
        el("td", { class: "mono" }, conflict.column),
        el("td", { class: "winner" }, stampText(conflict.winner)),
        el("td", { class: "loser" }, stampText(conflict.loser)),
      ),
    ),
  );
}

function renderQuarantine(result) {
  const table = $("quarantine");
  const note = $("quarantine-note");
  if (result.status === "rejected") {
    table.hidden = true;
    note.textContent = `cannot read the quarantine: ${result.reason.message}`;
    return;
  }
  const rows = result.value;
  note.textContent = rows.length ? "retried every few seconds; see `syncmesh quarantine`" : "no quarantined rows";
  table.hidden = rows.length === 0;
  const now = nodeNow();
  fillRows(
    table.tBodies[0],
    rows.map((row) =>
      el(
        "tr",
        {},
        el("td", { class: "num" }, row.id),
        el("td", { class: "mono" }, row.table),
        el("td", { class: "mono" }, row.pk),
        el("td", { class: "mono" }, shortSite(row.origin)),
        el("td", {}, formatAge(row.created_ms, now)),
        el("td", { class: "error" }, row.reason),
      ),
    ),
  );
}

async function refresh() {
  const paths = ["v1/status", "v1/throughput", "v1/quarantine"];
  if (Date.now() >= ledgerRecheckAtMs) {
    paths.push("v1/conflicts");
  }
  const [status, throughput, quarantine, conflicts] = await Promise.allSettled(paths.map(getJson));
  if (status.status === "rejected") {
    setConnection(false, status.reason);
    return;
  }
  if (throughput.status === "fulfilled") {
    clockOffsetMs = throughput.value.now_ms - Date.now();
  }
  const peers = mergePeers(status.value.peers, rememberedPeers, nodeNow());
  renderNode(status.value, peers);
  renderPeers(status.value, peers);
  renderFleet(status.value, nodeNow(), clockOffsetMs);
  renderThroughput(throughput);
  if (conflicts !== undefined) {
    renderConflicts(conflicts);
  }
  renderQuarantine(quarantine);
  setConnection(true);
}

async function loop() {
  const started = Date.now();
  try {
    await refresh();
  } catch (error) {
    // A bug in rendering must not stop the polling: show it and go on.
    setConnection(false, error);
    console.error(error);
  }
  setTimeout(loop, Math.max(0, POLL_MS - (Date.now() - started)));
}

loop();

/** " · catching up 45%, 1,200 rows/s, ~12 s left" while the node reads the peer's feed up to its head. */
function catchingUp(entry) {
  if (entry.catchup_progress === null || entry.catchup_progress === undefined) return "";
  const left = entry.catchup_eta_s === null ? "" : `, ~${formatDuration(entry.catchup_eta_s * 1000)} left`;
  return ` · catching up ${Math.floor(entry.catchup_progress * 100)}%, ${formatCount(Math.round(entry.catchup_rows_per_s))} rows/s${left}`;
}
