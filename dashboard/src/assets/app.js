// The Weft dashboard: draws the JSON picture the server sends at every read
// (`/api/events`, server-sent events). Everything from the mesh goes in
// through textContent and setAttribute, never as markup.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const NODE_W = 190, NODE_H = 48, COL_GAP = 250, ROW_GAP = 34, PAD = 20;

function el(tag, attrs, text) {
  const e = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) e.setAttribute(k, String(v));
  }
  if (text !== undefined) e.textContent = text;
  return e;
}

const fmt = {
  rate: v => v == null ? "–" : v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2),
  pct: v => v == null ? "–" : (v * 100).toFixed(v >= 0.9995 ? 0 : 1) + "%",
  ms: v => v == null ? "–" : v >= 100 ? v.toFixed(0) + " ms" : v >= 10 ? v.toFixed(1) + " ms" : v.toFixed(2) + " ms",
  bytes: v => v >= 1e6 ? (v / 1e6).toFixed(1) + " MB/s" : v >= 1e3 ? (v / 1e3).toFixed(1) + " kB/s" : v.toFixed(0) + " B/s",
  age: s => {
    if (s == null) return "–";
    const a = Math.abs(s);
    const t = a >= 86400 ? (a / 86400).toFixed(1) + " d" : a >= 3600 ? (a / 3600).toFixed(1) + " h" : a >= 60 ? (a / 60).toFixed(0) + " min" : a.toFixed(0) + " s";
    return s < 0 ? t + " ago" : t;
  },
};

function health(success) {
  if (success == null) return "idle";
  return success >= 0.99 ? "good" : success >= 0.95 ? "warn" : "bad";
}

// Layers by longest path from the callers (cycles cut after n rounds), then
// each layer ordered by its callers' positions.
function layout(nodes, edges) {
  const rank = new Map(nodes.map(n => [n.id, 0]));
  for (let i = 0; i < nodes.length; i++) {
    let moved = false;
    for (const e of edges) {
      if (e.src === e.dst || !rank.has(e.src) || !rank.has(e.dst)) continue;
      if (rank.get(e.dst) < rank.get(e.src) + 1 && rank.get(e.src) + 1 < nodes.length) {
        rank.set(e.dst, rank.get(e.src) + 1);
        moved = true;
      }
    }
    if (!moved) break;
  }
  const layers = [];
  for (const n of [...nodes].sort((a, b) => a.id.localeCompare(b.id))) {
    const r = rank.get(n.id);
    (layers[r] = layers[r] || []).push(n.id);
  }
  const pos = new Map();
  layers.forEach((ids, r) => {
    if (r > 0) {
      const bary = id => {
        const from = edges.filter(e => e.dst === id && pos.has(e.src)).map(e => pos.get(e.src).row);
        return from.length ? from.reduce((a, b) => a + b, 0) / from.length : 1e9;
      };
      ids.sort((a, b) => bary(a) - bary(b) || a.localeCompare(b));
    }
    ids.forEach((id, row) => pos.set(id, {
      row, x: PAD + r * (NODE_W + COL_GAP), y: PAD + row * (NODE_H + ROW_GAP),
    }));
  });
  const width = PAD * 2 + Math.max(1, layers.length) * (NODE_W + COL_GAP) - COL_GAP;
  const height = PAD * 2 + Math.max(1, ...layers.map(l => (l || []).length)) * (NODE_H + ROW_GAP) + 40;
  return { pos, width, height };
}

function edgeLabel(e) {
  const tls = e.mtls == null ? "" : e.mtls >= 0.999 ? "mTLS · " : e.mtls > 0 ? `mTLS ${fmt.pct(e.mtls)} · ` : "plaintext · ";
  if (e.protocol === "http") {
    return `${tls}${fmt.rate(e.rps)} rps · ${fmt.pct(e.success)} · p99 ${fmt.ms(e.p99_ms)}`;
  }
  return `${tls}tcp · ${e.open.toFixed(0)} open · ${fmt.bytes(e.bytes_per_s)}`;
}

function drawGraph(m) {
  const svg = document.getElementById("graph");
  svg.replaceChildren();
  const { pos, width, height } = layout(m.nodes, m.edges);
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const edgeLayer = el("svg:g", { class: "edges" });
  const nodeLayer = el("svg:g", { class: "nodes" });
  svg.append(edgeLayer, nodeLayer);
  m.edges.forEach((e, i) => {
    const a = pos.get(e.src), b = pos.get(e.dst);
    if (!a || !b) return;
    const plain = e.mtls != null && e.mtls < 0.999;
    const g = el("svg:g", {
      class: `edge ${e.health}${plain ? " plaintext" : ""}`,
      "data-src": e.src, "data-dst": e.dst, "data-protocol": e.protocol,
      "data-rps": e.rps, "data-success": e.success == null ? "" : e.success,
      "data-p99": e.p99_ms == null ? "" : e.p99_ms, "data-mtls": e.mtls == null ? "" : e.mtls,
      "data-health": e.health,
    });
    let d, lx, ly, anchor = "middle";
    if (e.src === e.dst) {
      const x = a.x + NODE_W - 30, y = a.y;
      d = `M${x},${y} C${x},${y - 40} ${x + 50},${y - 40} ${x + 30},${y + 8}`;
      lx = x; ly = y - 34;
    } else if (b.x > a.x) {
      const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x, y2 = b.y + NODE_H / 2;
      const mid = (x1 + x2) / 2;
      d = `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`;
      // By its target, where edges from one caller have parted.
      lx = x2 - 12; ly = y2 - 7; anchor = "end";
    } else {
      // Backwards (or within a layer): under the nodes.
      const x1 = a.x + NODE_W / 2, y1 = a.y + NODE_H, x2 = b.x + NODE_W / 2, y2 = b.y + NODE_H;
      const low = Math.max(y1, y2) + 40 + 10 * (i % 3);
      d = `M${x1},${y1} C${x1},${low} ${x2},${low} ${x2},${y2}`;
      lx = (x1 + x2) / 2; ly = low - 4;
    }
    g.append(el("svg:path", { d, "marker-end": "url(#arrow)" }));
    g.append(el("svg:text", { x: lx, y: ly, "text-anchor": anchor }, edgeLabel(e)));
    const tip = `${e.src} → ${e.dst}\n${edgeLabel(e)}` +
      (e.protocol === "http" ? `\np50 ${fmt.ms(e.p50_ms)} · mTLS ${fmt.pct(e.mtls)}` : `\n${fmt.rate(e.cps)} connections/s`);
    g.append(el("svg:title", {}, tip));
    edgeLayer.append(g);
  });
  const defs = el("svg:defs");
  const marker = el("svg:marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" });
  marker.append(el("svg:path", { d: "M0,0 L10,5 L0,10 z", fill: "#57606a" }));
  defs.append(marker);
  svg.prepend(defs);
  for (const n of m.nodes) {
    const p = pos.get(n.id);
    const g = el("svg:g", { class: `node ${n.kind}`, "data-id": n.id, transform: `translate(${p.x},${p.y})` });
    g.append(el("svg:rect", { width: NODE_W, height: NODE_H, rx: 6 }));
    const name = el("svg:text", { x: 10, y: 20, class: "name" }, n.name.length > 26 ? n.name.slice(0, 25) + "…" : n.name);
    const sub = n.kind === "workload"
      ? `${n.namespace} · ${n.pods_read}/${n.pods} pod${n.pods === 1 ? "" : "s"} read`
      : n.kind === "unmeshed" ? "no identity" : "identity of several workloads";
    g.append(name, el("svg:text", { x: 10, y: 38, class: "sub" }, sub));
    g.append(el("svg:title", {}, `${n.id}\n${n.identity}`));
    if (n.jaeger) {
      const a = el("svg:a", { href: n.jaeger, target: "_blank" });
      a.append(g);
      nodeLayer.append(a);
    } else {
      nodeLayer.append(g);
    }
  }
  if (!m.nodes.length) {
    svg.append(el("svg:text", { x: PAD, y: PAD + 20, class: "muted" }, "no proxies yet"));
  }
}

function spark(values, cls, lo, hi) {
  const w = 110, h = 22;
  const s = el("svg:svg", { class: `spark ${cls}`, width: w, height: h, viewBox: `0 0 ${w} ${h}` });
  const pts = values.map((v, i) => [i, v]).filter(([, v]) => v != null);
  if (pts.length < 2) return s;
  const min = lo ?? Math.min(...pts.map(p => p[1])), max = hi ?? Math.max(...pts.map(p => p[1]));
  const span = max - min || 1, n = Math.max(1, values.length - 1);
  s.append(el("svg:polyline", {
    points: pts.map(([i, v]) => `${(i / n * (w - 2) + 1).toFixed(1)},${(h - 2 - (v - min) / span * (h - 4)).toFixed(1)}`).join(" "),
  }));
  return s;
}

function emptyRow(span, text) {
  const tr = el("tr");
  tr.append(el("td", { colspan: span, class: "muted" }, text));
  return tr;
}

function cell(text, cls) { return el("td", cls ? { class: cls } : {}, text); }

function link(href, text) {
  const td = el("td");
  if (href) td.append(el("a", { href, target: "_blank", rel: "noopener" }, text));
  else td.textContent = "–";
  return td;
}

function drawServices(m) {
  const body = document.querySelector("#services tbody");
  body.replaceChildren();
  for (const s of m.services) {
    const tr = el("tr", { "data-service": s.service, "data-route": s.route, "data-rps": s.rps, "data-success": s.success ?? "" });
    const rpsCell = el("td", { class: "num" });
    rpsCell.append(el("span", { class: "rps" }, fmt.rate(s.rps)));
    const requests = el("td");
    requests.append(spark(s.spark_rps, s.health, 0));
    const successHist = el("td");
    const seen = s.spark_success.filter(v => v != null);
    successHist.append(spark(s.spark_success, s.health, Math.min(0.9, ...seen), 1));
    tr.append(
      cell(s.service), cell(s.route || "–", s.route ? "" : "muted"), cell(s.callers.join(", ")),
      rpsCell, requests, cell(fmt.pct(s.success), s.health), successHist,
      cell(fmt.ms(s.p50_ms), "num"), cell(fmt.ms(s.p95_ms), "num"), cell(fmt.ms(s.p99_ms), "num"),
      cell(fmt.rate(s.retries_per_s), "num"), cell(fmt.pct(s.mtls), "num"), link(s.jaeger, "traces"),
    );
    body.append(tr);
  }
  if (!m.services.length) body.append(emptyRow(13, "no requests in the window"));
}

function drawErrors(m) {
  const body = document.querySelector("#errors tbody");
  body.replaceChildren();
  for (const e of m.errors) {
    const tr = el("tr", { "data-service": e.service, "data-reason": e.reason });
    tr.append(cell(e.service || "(before routing)"), cell(e.reason, "bad"), cell(e.count.toFixed(0), "num"),
      cell(fmt.rate(e.per_s), "num"), link(e.jaeger, "traces"));
    body.append(tr);
  }
  if (!m.errors.length) body.append(emptyRow(5, "none in the window"));
}

function drawProxies(m) {
  const body = document.querySelector("#proxies tbody");
  body.replaceChildren();
  for (const p of m.proxies) {
    const state = p.elsewhere ? ["no stream to this control plane replica", "muted"]
      : !p.connected ? ["disconnected", "bad"] : p.ack_error ? ["rejected: " + p.ack_error, "bad"]
      : p.current ? ["current", "good"] : ["behind", "warn"];
    const tr = el("tr", { "data-pod": `${p.namespace}/${p.pod}` });
    const certCls = p.cert_expires_in_s == null ? "muted" : p.cert_expires_in_s < 3600 ? "warn" : "";
    tr.append(
      cell(`${p.namespace}/${p.pod}`), cell(p.workload), cell(p.identity),
      cell(state[0], state[1]), cell(p.elsewhere ? "–" : `${p.acked_version} / ${p.control_version}`, "num"),
      cell(p.snapshot_age_s == null ? "–" : fmt.age(p.snapshot_age_s) + " ago", "num"),
      cell(p.cert_expires_in_s == null ? "–" : "in " + fmt.age(p.cert_expires_in_s), certCls),
      cell(p.unread ? p.unread : "read", p.unread ? "bad" : "muted"),
    );
    body.append(tr);
  }
}

function drawHeader(m) {
  document.getElementById("source").textContent = "metrics from " + m.source;
  const c = document.getElementById("control");
  c.textContent = m.control_plane.up ? `config version ${m.control_plane.version}` : "control plane: " + m.control_plane.error;
  c.className = m.control_plane.up ? "" : "down";
  document.getElementById("updated").textContent =
    `updated ${new Date(m.at_unix_ms).toLocaleTimeString()} · rates over ${m.window_seconds.toFixed(0)} s`;
  const list = document.getElementById("manifest-errors");
  list.replaceChildren(...m.manifest_errors.map(e =>
    el("li", {}, [e.file, e.object, e.field ? "field " + e.field : "", e.message].filter(Boolean).join(": "))));
  document.getElementById("manifest-section").hidden = m.manifest_errors.length === 0;
}

function draw(m) {
  drawHeader(m);
  drawGraph(m);
  drawServices(m);
  drawErrors(m);
  drawProxies(m);
  document.body.dataset.updated = String(m.at_unix_ms);
}

function start() {
  fetch("/api/model").then(r => r.ok ? r.json() : null).then(m => m && draw(m)).catch(() => {});
  const events = new EventSource("/api/events");
  events.addEventListener("model", ev => draw(JSON.parse(ev.data)));
  events.onerror = () => {
    const s = document.getElementById("source");
    s.textContent = "lost the dashboard server; reconnecting…";
  };
}

document.addEventListener("DOMContentLoaded", start);
