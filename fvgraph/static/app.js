// fvgraph serve: the page. It talks to the JSON API (see fvgraph/serve.py) and nothing else.
"use strict";

const state = {
  model: null,          // GET /api/model
  imageId: null,        // the current image on the server
  imageName: null,      // its file name (for "copy as command")
  target: null,         // a class index, or null: the predicted class
  predicted: null,
  layer: "", channel: null, alpha: 0.5, colors: "",
  panels: [],
};
window.fvTimings = [];   // {method, requested, drawn}: what a benchmark reads

const $ = (sel, root = document) => root.querySelector(sel);

async function api(path, body, signal) {
  const opts = body === undefined ? {} : { method: "POST", body: JSON.stringify(body), signal,
                                           headers: { "Content-Type": "application/json" } };
  const r = await fetch(path, opts);
  const data = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
  if (!r.ok) throw new Error(data.error || `HTTP ${r.status}`);
  return data;
}

function status(text) { $("#status").textContent = text || ""; }

// ------------------------------------------------------------------ images and predictions
async function useImage(body, name) {
  status("reading the image...");
  try {
    const p = await api("/api/predict", body);
    state.imageId = p.image_id;
    state.imageName = name;
    state.target = null;
    const shown = $("#shown");
    shown.src = "data:image/png;base64," + p.shown;
    shown.hidden = false;
    $("#drop-hint").hidden = true;
    showPredictions(p.top);
    document.querySelectorAll("#gallery img").forEach(i => i.classList.toggle("chosen", i.dataset.name === name));
    status("");
    refreshAll();
  } catch (e) { status(e.message); }
}

function showPredictions(top) {
  const ol = $("#predictions");
  ol.innerHTML = "";
  state.predicted = top.length ? top[0]["class"] : null;
  for (const t of top) {
    const li = document.createElement("li");
    li.textContent = t.p === null ? t.label : `${t.label} (${(100 * t.p).toFixed(1)}%)`;
    li.dataset.cls = t["class"];
    li.addEventListener("click", () => { if (t["class"] !== null) setTarget(t["class"]); });
    ol.appendChild(li);
  }
  markTarget();
}

function setTarget(cls) {
  state.target = cls;
  markTarget();
  refreshAll();
}

function markTarget() {
  const chosen = state.target === null ? state.predicted : state.target;
  document.querySelectorAll("#predictions li").forEach(li => li.classList.toggle("chosen", +li.dataset.cls === chosen));
  const names = state.model.classes;
  $("#target-note").textContent = state.target === null ? "explaining the predicted class" :
    `explaining class ${state.target}${names ? " (" + names[state.target] + ")" : ""}`;
}

function readFile(file) {
  const reader = new FileReader();
  reader.onload = () => useImage({ image: reader.result.split(",", 2)[1] }, file.name);
  reader.readAsDataURL(file);
}

// ------------------------------------------------------------------ panels
function paramSpecs(method) { return state.model.params[method] || []; }

function addPanel(method) {
  const node = $("#panel-template").content.firstElementChild.cloneNode(true);
  const panel = { method, node, params: {}, controller: null, seq: 0 };
  const select = $(".method", node);
  for (const m of state.model.methods) select.add(new Option(m, m, false, m === method));
  select.addEventListener("change", () => { panel.method = select.value; buildParams(panel); refresh(panel); });
  $(".remove", node).addEventListener("click", () => {
    if (panel.controller) panel.controller.abort();
    node.remove();
    state.panels = state.panels.filter(p => p !== panel);
  });
  $(".copy", node).addEventListener("click", () => copyCommand(panel));
  $(".download", node).addEventListener("click", () => download(panel));
  $("#panels").appendChild(node);
  state.panels.push(panel);
  buildParams(panel);
  refresh(panel);
  return panel;
}

function buildParams(panel) {
  const box = $(".params", panel.node);
  box.innerHTML = "";
  panel.params = {};
  panel.node.dataset.method = panel.method;
  for (const spec of paramSpecs(panel.method)) {
    const row = document.createElement("label");
    row.className = "param";
    row.dataset.name = spec.name;
    row.innerHTML = `<span class="name">${spec.name}</span>`;
    let input;
    if (spec.choices) {
      input = document.createElement("select");
      for (const c of spec.choices) input.add(new Option(c, c, false, c === spec.default));
    } else {
      input = document.createElement("input");
      Object.assign(input, { type: "range", min: spec.min, max: spec.max, step: spec.step, value: spec.default });
    }
    const out = document.createElement("output");
    const value = () => spec.choices ? input.value : spec.log10 ? Math.pow(10, +input.value) : +input.value;
    const show = () => {
      const v = value();
      out.textContent = spec.choices ? "" : spec.log10 ? v.toExponential(0) : String(v);
      panel.params[spec.name] = v;
    };
    show();
    let timer = null;
    input.addEventListener("input", () => {
      show();
      clearTimeout(timer);
      timer = setTimeout(() => refresh(panel), 30);   // only this panel: its own parameter changed
    });
    row.append(input, out);
    box.appendChild(row);
  }
}

function request(panel, extra = {}) {
  const body = { image_id: state.imageId, method: panel.method, params: panel.params, target: state.target,
                 alpha: state.alpha, colors: state.colors || null, ...extra };
  if (state.layer) body.layer = state.layer;
  if (state.layer && state.channel !== null) body.channel = state.channel;
  return body;
}

async function refresh(panel) {
  if (!state.imageId) return;
  if (panel.controller) panel.controller.abort();   // a newer request cancels the older one
  const controller = new AbortController();
  panel.controller = controller;
  const seq = ++panel.seq;
  const node = panel.node;
  node.classList.add("busy");
  node.classList.remove("error");
  const bar = $(".progress div", node);
  bar.style.width = "0";
  const requested = performance.now();
  const streaming = (state.model.streams || []).includes(panel.method);  // progress bars: from the table
  try {
    let result;
    if (streaming) {
      result = await streamed(panel, request(panel, { stream: true }), controller.signal, bar, seq);
    } else {
      result = await api("/api/explain", request(panel), controller.signal);
    }
    if (seq !== panel.seq) return;
    await draw(panel, result.png, requested);
    bar.style.width = "0";
    $(".info", node).textContent = `${result.label !== undefined ? "class " + result.label + " · " : ""}${result.ms} ms`;
  } catch (e) {
    if (e.name === "AbortError") return;
    node.classList.add("error");
    $(".info", node).textContent = e.message;
  } finally {
    if (seq === panel.seq) node.classList.remove("busy");
  }
}

async function streamed(panel, body, signal, bar, seq) {
  const r = await fetch("/api/explain", { method: "POST", body: JSON.stringify(body), signal,
                                          headers: { "Content-Type": "application/json" } });
  if (!r.ok) {
    const data = await r.json().catch(() => ({}));
    throw new Error(data.error || `HTTP ${r.status}`);
  }
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", last = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let nl;
    while ((nl = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + 1);
      if (!line.trim()) continue;
      const item = JSON.parse(line);
      if (item.error) throw new Error(item.error);
      if (item.progress !== undefined && seq === panel.seq) {   // fill in as it grows
        bar.style.width = `${(100 * item.progress).toFixed(0)}%`;
        if (item.png) $(".map", panel.node).src = "data:image/png;base64," + item.png;
      }
      if (item.done) last = item;
    }
  }
  if (!last) throw new Error("the server stopped before the map was done");
  return last;
}

function draw(panel, png, requested) {
  return new Promise(resolve => {
    const img = $(".map", panel.node);
    img.onload = () => {
      window.fvTimings.push({ method: panel.method, requested, drawn: performance.now() });
      resolve();
    };
    img.src = "data:image/png;base64," + png;
  });
}

function refreshAll() { state.panels.forEach(refresh); showExamples(); showConcepts(); }

// ------------------------------------------------------------------ the dataset view: SpRAy clusters (--images)
async function showClusters() {
  const box = $("#clusters");
  const target = state.target !== null ? state.target : state.predicted;
  box.innerHTML = `<p class="note">explaining and clustering the folder's images of class ${target}...</p>`;
  try {
    const r = await api("/api/clusters", { method: "lrp-epsilon", target });
    box.innerHTML = `<p class="note">${r.images} image(s) of class ${target}, ${r.clusters.length} clusters ` +
                    "(a small cluster with its own mean map is worth a look: a shortcut?)</p>";
    for (const c of r.clusters) {
      const img = document.createElement("img");
      img.src = "data:image/png;base64," + c.png;
      img.title = `${c.size} image(s): ${c.members.slice(0, 12).join(", ")}`;
      img.className = "cluster";
      box.appendChild(img);
    }
    const emb = document.createElement("img");
    emb.src = "data:image/png;base64," + r.embedding;
    emb.className = "cluster";
    box.appendChild(emb);
  } catch (e) { box.innerHTML = ""; status(e.message); }
}

// ------------------------------------------------------------------ the concept atlas (CRP) at the chosen layer
let conceptsFor = "";
async function showConcepts() {
  const box = $("#concepts");
  if (!state.imageId || !state.layer || state.channel !== null) { box.innerHTML = ""; conceptsFor = ""; return; }
  const key = `${state.imageId}|${state.layer}|${state.target}|${state.alpha}`;
  if (key === conceptsFor) return;
  conceptsFor = key;
  box.innerHTML = "<p class=\"note\">finding the concepts this decision used...</p>";
  try {
    const r = await api("/api/concepts", { image_id: state.imageId, method: "lrp-epsilon", layer: state.layer,
                                           target: state.target, top: 6, alpha: state.alpha });
    if (conceptsFor !== key) return;
    box.innerHTML = `<p class="note">the channels of ${state.layer} this decision used most (LRP-epsilon; ` +
                    "click one: its unit, and its examples with --images)</p>";
    for (const c of r.concepts) {
      const fig = document.createElement("figure");
      const img = document.createElement("img");
      img.src = "data:image/png;base64," + c.png;
      img.title = `channel ${c.channel}: ${(100 * c.share).toFixed(1)}% of the layer's relevance`;
      img.addEventListener("click", () => { state.channel = c.channel; $("#channel").value = c.channel; refreshAll(); });
      const cap = document.createElement("figcaption");
      cap.textContent = `#${c.channel} ${(100 * c.share).toFixed(0)}%`;
      fig.append(img, cap);
      box.appendChild(fig);
    }
  } catch (e) { box.innerHTML = ""; status(e.message); }
}

// ------------------------------------------------------------------ a unit's dataset examples (--images)
let examplesFor = "";
async function showExamples() {
  const box = $("#examples");
  if (!state.model || !state.model.examples) return;
  if (!state.layer || state.channel === null) { box.innerHTML = ""; examplesFor = ""; return; }
  const key = `${state.layer}#${state.channel}`;
  if (key === examplesFor) return;
  examplesFor = key;
  box.innerHTML = "<p class=\"note\">finding this unit's examples...</p>";
  try {
    const r = await api("/api/examples", { layer: state.layer, channel: state.channel, k: 6 });
    if (examplesFor !== key) return;
    box.innerHTML = `<p class="note">what drives ${state.layer} #${state.channel} most among these images</p>`;
    for (const e of r.examples) {
      const img = document.createElement("img");
      img.src = "data:image/png;base64," + e.png;
      img.title = `${e.image}: ${e.score.toFixed(3)}`;
      img.dataset.name = e.image;
      img.addEventListener("click", () => useImage({ name: e.image }, e.image));
      box.appendChild(img);
    }
  } catch (e) { box.innerHTML = ""; status(e.message); }
}

// ------------------------------------------------------------------ copy as command, download
function shellQuote(s) { return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${String(s).replace(/'/g, "'\\''")}'`; }

function command(panel) {
  // the same method table as the page: every method is `fvgraph explain -m`, its options as -p key=value;
  // a layer without a channel is where a CAM is drawn, a layer with a channel is a unit (for every method)
  const model = shellQuote(state.model.source || "MODEL");
  const image = shellQuote(state.imageName || "IMAGE");
  const p = panel.params, m = panel.method;
  const drawsAtLayer = (state.model.draws_at_layer || []).includes(m);
  const unit = state.layer && state.channel !== null;
  let where = "";
  if (unit) where = ` --layer ${shellQuote(state.layer)} --channel ${state.channel}`;
  else if (state.layer && drawsAtLayer) where = ` --layer ${shellQuote(state.layer)}`;
  let target = state.target !== null && !unit ? ` --target ${state.target}` : "";
  if (m === "reconstruction" && !unit && state.target === null) target = ` --target ${state.predicted}`;
  const kv = Object.entries(p).map(([k, v]) => `${k}=${v}`);
  const params = kv.length ? ` -p ${kv.join(" ")}` : "";
  return `fvgraph explain ${model} ${image} -m ${m}${params}${target}${where}`;
}

async function copyCommand(panel) {
  const text = command(panel);
  try { await navigator.clipboard.writeText(text); status("copied: " + text); }
  catch (e) { window.prompt("the command", text); }
}

async function download(panel) {
  try {
    const r = await api("/api/explain", request(panel, { array: true }));
    const stem = `${(state.imageName || "image").replace(/\.[^.]+$/, "")}_${panel.method}`;
    save(`${stem}.png`, r.png, "image/png");
    save(`${stem}.npy`, r.npy, "application/octet-stream");
  } catch (e) { status(e.message); }
}

function save(name, b64, type) {
  const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([bytes], { type }));
  a.download = name;
  document.body.appendChild(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
}

// ------------------------------------------------------------------ start
async function start() {
  const model = await api("/api/model");
  state.model = model;
  if (model.examples) {
    $("#clusters-button").hidden = false;
    $("#clusters-button").addEventListener("click", showClusters);
  }
  $("#model-name").textContent = model.name;
  document.title = `fvgraph · ${model.name}`;
  const list = $("#class-list");
  (model.classes || []).forEach((c, k) => list.appendChild(new Option(`${k}: ${c}`)));
  $("#class-search").addEventListener("change", e => {
    const k = parseInt(e.target.value, 10);
    const names = model.classes || [];
    const byName = names.findIndex(n => n.toLowerCase() === e.target.value.trim().toLowerCase());
    const cls = Number.isInteger(k) ? k : byName;
    if (cls >= 0) setTarget(cls); else status(`no class ${e.target.value}`);
  });
  const layers = $("#layer");
  for (const l of model.layers.filter(l => l.shape.length >= 3))
    layers.add(new Option(`${l.name} ${l.op} (${l.shape.slice(1).join("x")})`, l.name));
  layers.addEventListener("change", () => { state.layer = layers.value; refreshAll(); });
  $("#channel").addEventListener("change", e => {
    state.channel = e.target.value === "" ? null : parseInt(e.target.value, 10);
    if (state.layer) refreshAll();
  });
  $("#alpha").addEventListener("input", e => { state.alpha = +e.target.value; refreshAll(); });
  $("#colors").addEventListener("change", e => { state.colors = e.target.value; refreshAll(); });
  const add = $("#add-panel");
  for (const m of model.methods) add.add(new Option(m, m));
  add.addEventListener("change", () => { if (add.value) addPanel(add.value); add.value = ""; });
  const drop = $("#drop");
  drop.addEventListener("dragover", e => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", e => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) readFile(e.dataTransfer.files[0]);
  });
  $("#upload").addEventListener("change", e => { if (e.target.files.length) readFile(e.target.files[0]); });
  const gallery = $("#gallery");
  for (const name of model.images) {
    const img = document.createElement("img");
    img.src = "/api/images/" + encodeURIComponent(name);
    img.dataset.name = name;
    img.title = name;
    img.addEventListener("click", () => useImage({ name }, name));
    gallery.appendChild(img);
  }
  for (const m of ["gradient", "guided", "lrp-epsilon", "gradcam"]) addPanel(m);
  if (model.images.length) useImage({ name: model.images[0] }, model.images[0]);
}

start().catch(e => status(e.message));
