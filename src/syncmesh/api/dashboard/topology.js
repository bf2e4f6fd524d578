// The peers as a star: this node in the middle, each peer on an ellipse
// around it, one link per peer coloured by its state and labelled with
// lag, bytes and the age of the last batch.  Links to peers of peers are
// not drawn: a node knows only its own sessions.

import { formatAge, formatBytes, formatCount, formatDuration, shortSite, svg } from "./format.js";

const WIDTH = 760;
const HEIGHT = 440;
const CENTER = { x: WIDTH / 2, y: HEIGHT / 2 };
const ORBIT = { x: 280, y: 150 };
const NODE_RADIUS = 38;
const PEER_RADIUS = 28;
const LINE_HEIGHT = 14;

/** "in 0 s · out 3 changes / 0.2 s": both directions of a link's lag. */
function lagText(entry) {
  const inbound = `in ${formatDuration(entry.lag_ms)}`;
  if (entry.out_lag_changes === null || entry.out_lag_changes === undefined) {
    return `${inbound} · out ?`;
  }
  const changes = `${formatCount(entry.out_lag_changes)}${entry.out_lag_changes >= 10000 ? "+" : ""}`;
  return `${inbound} · out ${changes} changes / ${formatDuration(entry.out_lag_ms)}`;
}

function linkLines(peer, nowMs) {
  if (peer.gone) {
    return [`no session since ${formatAge(peer.lastListedMs, nowMs)}`];
  }
  const entry = peer.entry;
  return [
    lagText(entry),
    `↓ ${formatBytes(entry.bytes_in)}  ↑ ${formatBytes(entry.bytes_out)}`,
    `last batch ${formatAge(entry.last_batch_ms, nowMs)}`,
  ];
}

function position(index, count) {
  const angle = -Math.PI / 2 + (2 * Math.PI * index) / count;
  return { x: CENTER.x + ORBIT.x * Math.cos(angle), y: CENTER.y + ORBIT.y * Math.sin(angle) };
}

function textBlock(lines, x, y, className) {
  const top = y - ((lines.length - 1) * LINE_HEIGHT) / 2;
  return lines.map((line, index) =>
    svg("text", { x, y: top + index * LINE_HEIGHT, class: className, "text-anchor": "middle" }, line),
  );
}

function peerGroup(peer, at) {
  const entry = peer.entry;
  const below = at.y >= CENTER.y;
  const textY = below ? at.y + PEER_RADIUS + 16 : at.y - PEER_RADIUS - 22;
  const group = svg("g", {
    class: `peer ${peer.link}`,
    "data-peer": entry.site_id || entry.address,
    "data-link": peer.link,
  });
  group.append(
    svg("title", {}, `${entry.site_id || "(site not known yet)"}\n${entry.address}\n${peer.state}`),
    svg("circle", { cx: at.x, cy: at.y, r: PEER_RADIUS, class: "peer-dot" }),
    svg("text", { x: at.x, y: at.y + 4, "text-anchor": "middle", class: "dot-label" }, peer.state),
    svg(
      "text",
      { x: at.x, y: textY, "text-anchor": "middle", class: "site mono" },
      entry.site_id ? shortSite(entry.site_id) : "never reached",
    ),
    svg("text", { x: at.x, y: textY + LINE_HEIGHT, "text-anchor": "middle", class: "address" }, entry.address),
  );
  return group;
}

/** Draw `peers` (from mergePeers) around this node into the SVG `root`. */
export function renderTopology(root, status, peers, nowMs) {
  const links = [];
  const labels = [];
  const nodes = [];
  peers.forEach((peer, index) => {
    const at = position(index, peers.length);
    links.push(
      svg("line", {
        x1: CENTER.x,
        y1: CENTER.y,
        x2: at.x,
        y2: at.y,
        class: `link ${peer.link}`,
        "data-peer": peer.entry.site_id || peer.entry.address,
      }),
    );
    const middle = { x: (CENTER.x + at.x) / 2, y: (CENTER.y + at.y) / 2 };
    labels.push(...textBlock(linkLines(peer, nowMs), middle.x, middle.y, "link-label"));
    nodes.push(peerGroup(peer, at));
  });
  const self = svg("g", { class: "self" });
  self.append(
    svg("circle", { cx: CENTER.x, cy: CENTER.y, r: NODE_RADIUS, class: "self-dot" }),
    svg("text", { x: CENTER.x, y: CENTER.y - 2, "text-anchor": "middle", class: "dot-label" }, "this node"),
    svg(
      "text",
      { x: CENTER.x, y: CENTER.y + 13, "text-anchor": "middle", class: "dot-label mono" },
      shortSite(status.site_id),
    ),
  );
  root.replaceChildren(...links, ...nodes, self, ...labels);
}
