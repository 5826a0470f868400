// The runs page: the sweep's Pareto front (hover a point for its numbers), loss curves and samples, all drawn as
// inline SVG from the JSON the jobs wrote (embedded in this page), so the page also works opened from disk.
"use strict";
const data = JSON.parse(document.getElementById("runs-data").textContent);
const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);

function el(name, attrs, parent) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (parent) parent.append(node);
  return node;
}

function show(id) { $(id).classList.remove("hidden"); }

function scale(values, from, to, log) {
  const f = log ? Math.log : (v) => v;
  let lo = Math.min(...values.map(f)), hi = Math.max(...values.map(f));
  if (hi === lo) { lo -= 1; hi += 1; }
  const pad = (hi - lo) * 0.06;
  lo -= pad; hi += pad;
  const map = (v) => from + ((f(v) - lo) / (hi - lo)) * (to - from);
  map.ticks = Array.from({ length: 5 }, (_, i) => (log ? Math.exp : (v) => v)(lo + ((hi - lo) * i) / 4));
  return map;
}

function axes(svg, x, y, box, labels) {
  el("line", { x1: box.left, y1: box.bottom, x2: box.right, y2: box.bottom, stroke: "#8c959f" }, svg);
  el("line", { x1: box.left, y1: box.top, x2: box.left, y2: box.bottom, stroke: "#8c959f" }, svg);
  for (const t of x.ticks) {
    el("text", { x: x(t), y: box.bottom + 16, "text-anchor": "middle" }, svg).textContent = fmt(t);
  }
  for (const t of y.ticks) {
    el("line", { x1: box.left, y1: y(t), x2: box.right, y2: y(t), stroke: "#eaeef2" }, svg);
    el("text", { x: box.left - 6, y: y(t) + 4, "text-anchor": "end" }, svg).textContent = fmt(t);
  }
  el("text", { x: (box.left + box.right) / 2, y: box.bottom + 34, "text-anchor": "middle" }, svg).textContent = labels[0];
  const ylab = el("text", { x: 14, y: (box.top + box.bottom) / 2, "text-anchor": "middle" }, svg);
  ylab.setAttribute("transform", `rotate(-90 14 ${(box.top + box.bottom) / 2})`);
  ylab.textContent = labels[1];
}

function fmt(v) {
  const a = Math.abs(v);
  return a >= 100 ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : a >= 1 ? v.toFixed(2) : v.toFixed(3);
}

// A candidate's metric as served: its GGUF in llama.cpp when it has one, else its PyTorch form (sweep/pareto.py).
const served = (row, key, fallback) => (row[key] ?? row[fallback]);

function candidate(row, kind) {
  return {
    row, kind,
    trial: row.trial, label: row.label, method: row.method, quant: row.quant,
    sparsity: row.sparsity_setting ?? row.sparsity ?? 0, zeros: row.sparsity ?? 0, // setting, measured zeros
    runtime: row.served_runtime || "torch",
    ppl: served(row, "served_perplexity", "perplexity"),
    mb: served(row, "served_mb", "size_mb"),
    speed: served(row, "served_tokens_per_s", "decode_tokens_per_s"),
  };
}

function tipText(p) {
  const pct = (v) => `${(100 * v).toFixed(0)}%`;
  const zeros = p.zeros !== p.sparsity ? ` (weights zero: ${pct(p.zeros)})` : "";
  return [`${p.label} (${p.trial})`, `method ${p.method}, sparsity ${pct(p.sparsity)}${zeros}, quant ${p.quant}`,
    `perplexity ${p.ppl.toFixed(3)}, ${p.mb.toFixed(3)} MB served (${p.runtime})`,
    `decode ${p.speed.toFixed(0)} tokens/s`];
}

function drawPareto(pareto) {
  const front = new Set(pareto.front.map((r) => r.trial));
  const winner = pareto.winner ? pareto.winner.trial : null;
  const points = pareto.trials.filter((r) => r.status === "ok").map((r) =>
    candidate(r, r.trial === "baseline" ? "baseline" : r.trial === winner ? "winner" : front.has(r.trial) ? "front" : "trial"));
  const svg = $("pareto");
  const box = { left: 62, right: 740, top: 14, bottom: 310 };
  const mbs = points.map((p) => p.mb);
  const x = scale(mbs, box.left, box.right, Math.max(...mbs) / Math.min(...mbs) > 8);
  const y = scale(points.map((p) => p.ppl), box.bottom, box.top, false);
  axes(svg, x, y, box, ["served size (MB)", "held-out perplexity"]);
  const frontPts = points.filter((p) => p.kind === "front" || p.kind === "winner").sort((a, b) => a.mb - b.mb);
  el("polyline", { points: frontPts.map((p) => `${x(p.mb)},${y(p.ppl)}`).join(" "), fill: "none",
    stroke: "#0969da", "stroke-dasharray": "4 3" }, svg);
  const order = { trial: 0, baseline: 1, front: 2, winner: 3 }; // the winner drawn last, on top
  for (const p of points.sort((a, b) => order[a.kind] - order[b.kind])) drawPoint(svg, p, x(p.mb), y(p.ppl));
  $("constraint").textContent = pareto.winner
    ? `Winner (${pareto.constraint}): ${pareto.winner.label}` : `No candidate met the constraint (${pareto.constraint}).`;
  show("pareto-section");
}

function drawPoint(svg, p, cx, cy) {
  const style = {
    trial: { fill: "#8c959f", r: 5 }, front: { fill: "#0969da", r: 6 },
    winner: { fill: "#bc4c00", r: 8, stroke: "#bc4c00", "stroke-width": 3, "fill-opacity": 0.35 },
  }[p.kind];
  const node = p.kind === "baseline"
    ? el("rect", { x: cx - 5, y: cy - 5, width: 10, height: 10, fill: "#1f2328" }, svg)
    : el("circle", { cx, cy, ...style }, svg);
  node.classList.add("point");
  Object.assign(node.dataset, { trial: p.trial, kind: p.kind, ppl: p.ppl, mb: p.mb, speed: p.speed });
  node.addEventListener("mouseenter", () => {
    const tip = $("tip");
    tip.replaceChildren(...tipText(p).map((line) => Object.assign(document.createElement("div"), { textContent: line })));
    const scaleBy = svg.getBoundingClientRect().width / 760;
    tip.style.left = `${cx * scaleBy + 12}px`;
    tip.style.top = `${cy * scaleBy - 10}px`;
    tip.classList.remove("hidden");
  });
  node.addEventListener("mouseleave", () => $("tip").classList.add("hidden"));
}

function drawLosses(trainings) {
  for (const t of trainings) {
    const card = document.createElement("div");
    const title = document.createElement("h2");
    title.textContent = `${t.stage}: ${t.model} (validation perplexity ${fmt(t.initial_val_ppl)} → ${fmt(t.final_val_ppl)})`;
    const svg = el("svg", { width: "100%", viewBox: "0 0 760 260", "data-stage": t.stage, class: "loss" });
    card.append(title, svg);
    $("losses").append(card);
    const train = t.train_curve || [], val = (t.history || []).map((h) => [h.step, h.val_loss]);
    const all = [...train, ...val];
    if (!all.length) continue;
    const box = { left: 62, right: 740, top: 10, bottom: 214 };
    const x = scale(all.map((p) => p[0]), box.left, box.right, false);
    const y = scale(all.map((p) => p[1]), box.bottom, box.top, false);
    axes(svg, x, y, box, ["step", "loss (nats/token)"]);
    for (const [series, color] of [[train, "#0969da"], [val, "#bc4c00"]]) {
      el("polyline", { points: series.map(([s, l]) => `${x(s)},${y(l)}`).join(" "), fill: "none", stroke: color,
        "stroke-width": 2 }, svg);
    }
    for (const [s, l] of val) el("circle", { cx: x(s), cy: y(l), r: 3, fill: "#bc4c00" }, svg);
  }
  show("loss-section");
}

function fillTable(id, rows) {
  const body = $(id).tBodies[0];
  for (const cells of rows) {
    const tr = body.insertRow();
    for (const c of cells) tr.insertCell().textContent = c;
  }
}

function render(data) {
  $("run-dir").textContent = data.run_dir || "";
  if (data.stages && Object.keys(data.stages).length) {
    fillTable("stages", Object.entries(data.stages).map(([name, s]) =>
      [name, (s.seconds ?? 0).toFixed(0), s.resources || "", s.result || ""]));
    show("stages-section");
  }
  if (data.pareto) drawPareto(data.pareto);
  if (data.trainings && data.trainings.length) drawLosses(data.trainings);
  if (data.samples && data.samples.length) {
    fillTable("samples", data.samples.map((s) => [s.model, s.prompt, s.completion]));
    show("samples-section");
  }
  if (!data.pareto && !(data.trainings || []).length) show("empty");
}

// A server with an API key sends the page without its data; the data comes from /runs/data.json with the key
// (the playground's, kept in this tab only).
async function fetchWithKey() {
  const key = sessionStorage.getItem("minigpt-api-key") || window.prompt("This server needs an API key") || "";
  const reply = await fetch(data.base + "/runs/data.json", { headers: { Authorization: "Bearer " + key } });
  const body = await reply.json();
  if (!reply.ok) {
    $("empty").textContent = `HTTP ${reply.status}: ${body.error ? body.error.message : ""}`;
    show("empty");
    return;
  }
  sessionStorage.setItem("minigpt-api-key", key);
  render(body);
}

for (const link of document.querySelectorAll("a[data-path]")) {
  if (data.base == null) link.remove(); // a saved report.html opened from disk has no server to link to
  else link.href = data.base + link.dataset.path;
}
if (data.needs_key) fetchWithKey();
else render(data);
