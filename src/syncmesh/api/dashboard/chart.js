// Rows captured and applied per interval (/v1/throughput) as two lines
// over the node's history window, newest on the right.

import { formatCount, svg } from "./format.js";

const WIDTH = 760;
const HEIGHT = 210;
const MARGIN = { left: 52, right: 12, top: 12, bottom: 26 };
const SERIES = [
  { field: "captured_rows", className: "captured" },
  { field: "applied_rows", className: "applied" },
];

/** 1, 2, 5, 10, 20, 50, ...: the smallest such number at least `value`. */
function niceCeiling(value) {
  let step = 1;
  while (step < value) {
    for (const factor of [2, 2.5, 2]) {
      step *= factor;
      if (step >= value) {
        break;
      }
    }
  }
  return step;
}

function axes(top, plot) {
  const parts = [];
  for (const fraction of [0, 0.5, 1]) {
    const y = plot.bottom - fraction * (plot.bottom - plot.top);
    parts.push(
      svg("line", { x1: plot.left, y1: y, x2: plot.right, y2: y, class: "grid" }),
      svg(
        "text",
        { x: plot.left - 6, y: y + 4, "text-anchor": "end", class: "axis" },
        formatCount(top * fraction),
      ),
    );
  }
  return parts;
}

function timeLabels(windowS, plot) {
  const minutes = windowS / 60;
  return [
    [plot.left, "start", `−${formatCount(minutes)} min`],
    [(plot.left + plot.right) / 2, "middle", `−${formatCount(minutes / 2)} min`],
    [plot.right, "end", "now"],
  ].map(([x, anchor, text]) => svg("text", { x, y: HEIGHT - 6, "text-anchor": anchor, class: "axis" }, text));
}

/** Draw `throughput` (the /v1/throughput document) into the SVG `root`. */
export function renderChart(root, throughput) {
  const plot = {
    left: MARGIN.left,
    right: WIDTH - MARGIN.right,
    top: MARGIN.top,
    bottom: HEIGHT - MARGIN.bottom,
  };
  const samples = throughput.samples;
  const intervalMs = throughput.interval_s * 1000;
  const windowMs = throughput.window_s * 1000;
  const endMs = samples.length ? samples[samples.length - 1].start_ms + intervalMs : 0;
  const peak = Math.max(1, ...samples.flatMap((sample) => SERIES.map((s) => sample[s.field])));
  const top = niceCeiling(peak);
  const x = (ms) => plot.right - ((endMs - ms) / windowMs) * (plot.right - plot.left);
  const y = (rows) => plot.bottom - (rows / top) * (plot.bottom - plot.top);
  const lines = SERIES.map(({ field, className }) => {
    // A step per interval: the rows of an interval are spread across it.
    const points = samples.flatMap((sample) => [
      `${x(sample.start_ms).toFixed(1)},${y(sample[field]).toFixed(1)}`,
      `${x(sample.start_ms + intervalMs).toFixed(1)},${y(sample[field]).toFixed(1)}`,
    ]);
    return svg("polyline", { points: points.join(" "), class: `series ${className}`, "data-series": field });
  });
  root.replaceChildren(...axes(top, plot), ...timeLabels(throughput.window_s, plot), ...lines);
}

/** Total rows of each series over the window. */
export function totals(throughput) {
  const sum = (field) => throughput.samples.reduce((total, sample) => total + sample[field], 0);
  return { captured: sum("captured_rows"), applied: sum("applied_rows") };
}
