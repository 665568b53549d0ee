// A small SVG chart: a line over an area, with a labelled y maximum and first/last x labels.
// No library, no network: the console ships as static files.
const NS = "http://www.w3.org/2000/svg";

function el(name, attributes, parent) {
  const node = document.createElementNS(NS, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  if (parent) parent.appendChild(node);
  return node;
}

// points: [{label: string, value: number}], format: value => string
export function lineChart(container, points, { format = String, title = "" } = {}) {
  container.replaceChildren();
  const width = 800, height = 220, left = 56, right = 12, top = 14, bottom = 26;
  const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title });
  container.appendChild(svg);
  const max = Math.max(...points.map((p) => p.value), 0);
  const top_value = max > 0 ? max : 1;
  const plotW = width - left - right, plotH = height - top - bottom;
  const x = (i) => left + (points.length <= 1 ? plotW / 2 : (i * plotW) / (points.length - 1));
  const y = (v) => top + plotH - (v / top_value) * plotH;
  el("line", { class: "axis", x1: left, y1: top + plotH, x2: width - right, y2: top + plotH }, svg);
  el("line", { class: "axis", x1: left, y1: top, x2: left, y2: top + plotH }, svg);
  el("text", { x: left - 6, y: top + 4, "text-anchor": "end" }, svg).textContent = format(max);
  el("text", { x: left - 6, y: top + plotH, "text-anchor": "end" }, svg).textContent = format(0);
  if (points.length) {
    el("text", { x: left, y: height - 6 }, svg).textContent = points[0].label;
    el("text", { x: width - right, y: height - 6, "text-anchor": "end" }, svg).textContent =
      points[points.length - 1].label;
  }
  const path = points.map((p, i) => `${i ? "L" : "M"}${x(i).toFixed(1)},${y(p.value).toFixed(1)}`);
  if (path.length) {
    const area = `${path.join(" ")} L${x(points.length - 1).toFixed(1)},${top + plotH} L${x(0).toFixed(1)},${top + plotH} Z`;
    el("path", { class: "area", d: area }, svg);
    el("path", { class: "line", d: path.join(" "), "data-points": points.length }, svg);
  }
  for (const [i, p] of points.entries()) {
    if (p.value > 0) {
      const dot = el("circle", { cx: x(i).toFixed(1), cy: y(p.value).toFixed(1), r: 3, class: "bar" }, svg);
      el("title", {}, dot).textContent = `${p.label}: ${format(p.value)}`;
    }
  }
  return svg;
}
