// The fleet stream (NATS JetStream, docs/nats.md) from /v1/status's `fleet`:
// the servers, the stream, our subject and chain, and the other sites.
//
// A fleet has hundreds of sites, so they are a table, never a drawing:
// worst first (a gap, then the largest lag), a filter by site id, and only
// the first rows until the operator asks for all of them, so that the page
// stays light and its layout holds at 500 sites.  Every state other than
// "streaming" is shown as not ok, whatever its name: the fleet loop may
// gain states ("starting") that this page has never heard of.

import { el, fillRows, formatAge, formatCount, formatDuration } from "./format.js";
import { verifiedCell } from "./verified.js";

// Rows shown before "show all"; `#fleet_rows=N` in the page's address sets
// another number (a small one shows the mechanics with a few sites).
const SITES_SHOWN_DEFAULT = 50;
const sitesShown = rowsFromUrl() ?? SITES_SHOWN_DEFAULT;
let showAll = false;

function rowsFromUrl() {
  const match = /(?:^#|&)fleet_rows=(\d+)/.exec(window.location.hash);
  return match ? Math.max(1, Number(match[1])) : null;
}

const $ = (id) => document.getElementById(id);

/** True when data flows: the only state that is ok. */
export function fleetStreaming(fleet) {
  return fleet.state === "streaming";
}

/** Stream sequences between the site's last message we applied and its newest. */
function messagesBehind(site) {
  return Math.max(0, (site.last_stream_seq ?? 0) - (site.stream_seq ?? 0));
}

/** A gap not closed (or a bootstrap that failed) makes a site worse than any lag. */
function hasGap(site) {
  return Boolean(site.gap);
}

/** Worst first: sites with a gap, then the largest lag, then most messages behind; then by id. */
export function sortSites(sites) {
  return [...sites].sort(
    (a, b) =>
      Number(hasGap(b)) - Number(hasGap(a)) ||
      (b.lag_ms ?? 0) - (a.lag_ms ?? 0) ||
      messagesBehind(b) - messagesBehind(a) ||
      a.site_id.localeCompare(b.site_id),
  );
}

function gapCell(site) {
  if (site.gap) {
    const bootstrap = site.bootstrap_error ? ` · bootstrap: ${site.bootstrap_error}` : "";
    return el("td", { class: "error", "data-field": "gap" }, `gap: ${site.gap}${bootstrap}`);
  }
  if (site.bootstrap) {
    return el("td", { class: "note", "data-field": "gap" }, `${site.bootstrap} (${formatCount(site.bootstrap_rows)} rows)`);
  }
  return el("td", { class: "note", "data-field": "gap" }, "none");
}

/** A site's row; a relay chain's (`verified` false) has no verify cell: nobody answers for it. */
function siteRow(site, nowMs, verified = true) {
  const behind = messagesBehind(site);
  const cells = [
    el("td", { title: site.site_id }, el("span", { class: "mono" }, site.site_id)),
    el("td", { class: "num", "data-field": "lag" }, formatDuration(site.lag_ms)),
    el("td", { class: "num", "data-field": "behind" }, formatCount(behind)),
    el("td", { "data-field": "last-applied" }, formatAge(site.last_applied_ms, nowMs)),
    el("td", { class: "num", "data-field": "messages" }, formatCount(site.messages_applied)),
    el("td", { class: "num", "data-field": "rows" }, formatCount(site.rows_applied)),
    el("td", { class: "num", "data-field": "duplicates" }, formatCount(site.duplicates)),
    el(
      "td",
      { class: site.foreign_rows_refused ? "num error" : "num", "data-field": "refused" },
      formatCount(site.foreign_rows_refused),
    ),
    gapCell(site),
  ];
  if (verified) {
    // One site per verify round, in turn (docs/nats.md, "The periodic verify").
    cells.push(verifiedCell(site, nowMs, true));
  }
  return el("tr", { "data-site": site.site_id, "data-gap": hasGap(site) ? "yes" : "no" }, ...cells);
}

/** The state, with since when it is not streaming and the last error with that time. */
function renderState(fleet, nowMs, clockOffsetMs) {
  const ok = fleetStreaming(fleet);
  const state = $("fleet-state");
  state.dataset.ok = ok ? "true" : "false";
  state.replaceChildren(el("span", { class: `badge ${ok ? "connected" : "down"}` }, fleet.state));
  if (!ok && fleet.down_since_ms) {
    const since = new Date(fleet.down_since_ms - clockOffsetMs).toLocaleTimeString();
    state.append(` since ${since} (${formatAge(fleet.down_since_ms, nowMs)})`);
  }
  const error = $("fleet-error");
  if (!fleet.last_error) {
    error.className = "note";
    error.textContent = "none";
  } else if (ok) {
    // The error is kept after the link recovered: muted then.
    error.className = "note";
    error.textContent = `past: ${fleet.last_error}`;
  } else {
    error.className = "error";
    const when = fleet.down_since_ms
      ? ` (down since ${new Date(fleet.down_since_ms - clockOffsetMs).toLocaleTimeString()})`
      : "";
    error.textContent = `${fleet.last_error}${when}`;
  }
}

function renderFacts(fleet) {
  $("fleet-servers").replaceChildren(...fleet.servers.map((server) => el("li", { class: "mono" }, server)));
  $("fleet-stream").textContent = `${fleet.stream} (messages ${formatCount(fleet.stream_first_seq)}…${formatCount(fleet.stream_last_seq)}, ${formatCount(fleet.stream_messages)} held)`;
  $("fleet-subject").textContent = fleet.subject;
  const retried = fleet.publish_retries ? `, ${formatCount(fleet.publish_retries)} retried` : "";
  const stored = fleet.publish_duplicates ? `, ${formatCount(fleet.publish_duplicates)} stored once` : "";
  $("fleet-published").textContent =
    `${formatCount(fleet.published_messages)} messages, ${formatCount(fleet.published_rows)} rows${retried}${stored}; chain at seq ${fleet.published_seq}`;
  $("fleet-pending").textContent =
    `${formatCount(fleet.consumer_pending)} not delivered, ${formatCount(fleet.consumer_ack_pending)} not acknowledged`;
  $("fleet-bootstraps").textContent =
    `${formatCount(fleet.bootstraps)} gaps closed from ${fleet.state_stream} (${formatCount(fleet.state_published_rows)} rows of ours in it)`;
  const refused = fleet.foreign_rows_refused + fleet.undecodable_messages;
  $("fleet-refused").textContent =
    `${formatCount(fleet.foreign_rows_refused)} rows claiming another origin, ${formatCount(fleet.undecodable_messages)} unreadable messages`;
  $("fleet-refused").className = refused ? "error" : "";
  // Own writes lost by a restore of the file, merged back from the stream (nats.md).
  const ownRestore = fleet.own_restore || "";
  $("fleet-own-restore").textContent = ownRestore || "none";
  $("fleet-own-restore").className = ownRestore.startsWith("restoring") ? "error" : "";
  // Our relay chain: our WebSocket peers' writes that are on no stream (nats.md).
  $("fleet-relay").textContent = fleet.relayed_messages
    ? `${formatCount(fleet.relayed_messages)} messages, ${formatCount(fleet.relayed_rows)} rows on ${fleet.relay_subject}; chain at seq ${fleet.relayed_seq}`
    : "nothing relayed (no WebSocket peer's writes off the stream)";
  // A gap is an error with its fix: the text the node logs and its health gives;
  // so is another live file with our site id on our subject, and what the
  // servers refuse of our configuration (one server and 3 replicas).
  const problems = [...fleet.gaps];
  if (fleet.site_id_conflict) {
    problems.push(fleet.site_id_conflict);
  }
  if (fleet.configuration_error) {
    problems.push(fleet.configuration_error);
  }
  $("fleet-gaps").replaceChildren(...problems.map((gap) => el("li", {}, gap)));
}

function renderRelays(fleet, nowMs) {
  const relays = sortSites(fleet.relays ?? []);
  $("fleet-relays-panel").hidden = relays.length === 0;
  fillRows($("fleet-relays").tBodies[0], relays.map((relay) => siteRow(relay, nowMs, false)));
  $("fleet-relays-count").textContent = `${formatCount(relays.length)} relaying sites`;
}

function renderSites(fleet, nowMs) {
  const filter = $("fleet-filter").value.trim().toLowerCase();
  const sorted = sortSites(fleet.sites);
  const matching = filter ? sorted.filter((site) => site.site_id.toLowerCase().includes(filter)) : sorted;
  const shown = showAll ? matching : matching.slice(0, sitesShown);
  fillRows($("fleet-sites").tBodies[0], shown.map((site) => siteRow(site, nowMs)));
  const gaps = fleet.sites.filter(hasGap).length;
  $("fleet-sites-count").textContent =
    `${formatCount(fleet.sites.length)} sites${gaps ? `, ${formatCount(gaps)} with a gap` : ""}` +
    (filter ? ` · ${formatCount(matching.length)} match` : "") +
    ` · showing ${formatCount(shown.length)}`;
  const more = $("fleet-show-all");
  more.hidden = showAll || matching.length <= shown.length;
  more.textContent = `show all ${formatCount(matching.length)}`;
  $("fleet-sites-empty").hidden = fleet.sites.length > 0;
}

let lastRender = null;

/** Render the fleet panel from a /v1/status document; hidden on a node without a fleet. */
export function renderFleet(status, nowMs, clockOffsetMs) {
  const fleet = status.fleet;
  $("fleet-panel").hidden = !fleet;
  $("fleet-sites-panel").hidden = !fleet;
  lastRender = fleet ? () => renderSites(fleet, nowMs) : null;
  if (!fleet) {
    $("fleet-relays-panel").hidden = true;
    return;
  }
  renderState(fleet, nowMs, clockOffsetMs);
  renderFacts(fleet);
  renderSites(fleet, nowMs);
  renderRelays(fleet, nowMs);
}

// The filter and "show all" act at once, on the last status, not at the next poll.
$("fleet-filter").addEventListener("input", () => lastRender?.());
$("fleet-show-all").addEventListener("click", () => {
  showAll = true;
  lastRender?.();
});
