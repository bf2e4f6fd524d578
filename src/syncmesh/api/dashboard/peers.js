// From /v1/status's `peers` to one entry per peer, each connected,
// connecting or down.
//
// /v1/status lists one entry per dialer and one per session that a peer
// dialled in.  So a peer can be listed twice (both sides dial: our dialer
// waits as "connected by peer" beside the session it accepted), a dialer
// that never got through has no site id yet, and a peer that dialled in
// and went away is simply no longer listed.  The page remembers every
// peer it has seen, so such a peer shows as down instead of vanishing.

const CONNECTING = new Set(["connecting", "handshake", "connected by peer"]);
// Lower is better: which entry stands for a peer listed more than once.
const RANK = { streaming: 0, handshake: 1, connecting: 2, "connected by peer": 3 };

export function linkState(state) {
  if (state === "streaming") {
    return "connected";
  }
  return CONNECTING.has(state) ? "connecting" : "down";
}

function rank(entry) {
  return RANK[entry.state] ?? 9;
}

/** The peers listed now, keyed by site id (or, before a handshake, by address). */
function currentPeers(entries) {
  const bySite = new Map();
  for (const entry of entries.filter((candidate) => candidate.site_id)) {
    const group = bySite.get(entry.site_id) ?? [];
    group.push(entry);
    bySite.set(entry.site_id, group);
  }
  const current = new Map();
  const knownAddresses = new Set();
  for (const [siteId, group] of bySite) {
    group.sort((a, b) => rank(a) - rank(b));
    // The address we dial is more telling than a peer's ephemeral port.
    const dialed = group.find((entry) => entry.dialed);
    const best = group[0];
    current.set(`site:${siteId}`, { ...best, address: (dialed ?? best).address });
    group.forEach((entry) => knownAddresses.add(entry.address));
  }
  for (const entry of entries.filter((candidate) => !candidate.site_id)) {
    if (!knownAddresses.has(entry.address)) {
      current.set(`address:${entry.address}`, entry);
    }
  }
  return { current, knownAddresses };
}

/**
 * Merge the peers listed now into `remembered` (a Map kept between polls)
 * and return every peer to show, with `link` (connected, connecting, down)
 * and `gone` (listed before, not now).
 */
export function mergePeers(entries, remembered, nowMs) {
  const { current, knownAddresses } = currentPeers(entries);
  for (const [key, entry] of current) {
    remembered.set(key, { entry, lastListedMs: nowMs });
  }
  for (const [key, memory] of remembered) {
    // A dialer that got through is now known by its site id.
    if (key.startsWith("address:") && knownAddresses.has(memory.entry.address)) {
      remembered.delete(key);
    }
  }
  const peers = [];
  for (const [key, memory] of remembered) {
    const gone = !current.has(key);
    const entry = memory.entry;
    peers.push({
      key,
      entry,
      gone,
      lastListedMs: memory.lastListedMs,
      link: gone ? "down" : linkState(entry.state),
      state: gone ? "no session" : entry.state,
    });
  }
  peers.sort((a, b) => a.key.localeCompare(b.key));
  return peers;
}
