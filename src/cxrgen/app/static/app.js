// cxrgen app: one page, four tabs, plain DOM. Text from files is set as text, never parsed as HTML.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs = {}, ...children) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.setAttribute("class", v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k in node && !tag.startsWith("svg:")) node[k] = v;
    else node.setAttribute(k, v);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function api(path, body) {
  const init = body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
  };
  const response = await fetch(path, init);
  const data = await response.json().catch(() => ({error: response.statusText}));
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function debounce(fn, ms) {
  let timer;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
}

function findingText(f) {
  return f.locations && f.locations.length ? `${f.label} (${f.locations.join(", ")})` : f.label;
}

// -- charts ----------------------------------------------------------------------------------------------------
function barChart(title, pairs, top = 12) {
  const shown = pairs.slice(0, top);
  const max = Math.max(1, ...shown.map(p => p[1]));
  const rowH = 18, labelW = 130, barW = 170, h = rowH * shown.length + 6;
  const svg = el("svg:svg", {width: labelW + barW + 50, height: h, role: "img", "aria-label": title});
  shown.forEach(([name, n], i) => {
    const y = i * rowH + 3;
    svg.append(el("svg:text", {x: labelW - 6, y: y + 12, "text-anchor": "end"}, String(name).slice(0, 22)));
    svg.append(el("svg:rect", {class: "bar", x: labelW, y, width: Math.max(1, barW * n / max), height: rowH - 4}));
    svg.append(el("svg:text", {x: labelW + barW * n / max + 4, y: y + 12}, String(n)));
  });
  const more = pairs.length > top ? el("div", {class: "muted"}, `and ${pairs.length - top} more`) : null;
  return el("figure", {"data-plot": title}, el("figcaption", {}, title), svg, more);
}

function lineChart(series, {width = 460, height = 220} = {}) {
  const names = Object.keys(series).filter(k => series[k].length);
  const svg = el("svg:svg", {width, height, role: "img"});
  if (!names.length) { svg.append(el("svg:text", {x: 10, y: 20}, "nothing logged yet")); return svg; }
  const points = names.flatMap(k => series[k]);
  const xs = points.map(p => p[0]), ys = points.map(p => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)], [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  const pad = {l: 56, r: 10, t: 10, b: 26};
  const sx = x => pad.l + (x1 === x0 ? 0.5 : (x - x0) / (x1 - x0)) * (width - pad.l - pad.r);
  const sy = y => height - pad.b - (y1 === y0 ? 0.5 : (y - y0) / (y1 - y0)) * (height - pad.t - pad.b);
  svg.append(el("svg:line", {class: "axis", x1: pad.l, x2: width - pad.r, y1: height - pad.b, y2: height - pad.b}));
  svg.append(el("svg:line", {class: "axis", x1: pad.l, x2: pad.l, y1: pad.t, y2: height - pad.b}));
  for (const [v, anchor] of [[y0, "end"], [y1, "end"]]) {
    svg.append(el("svg:text", {x: pad.l - 4, y: sy(v) + 4, "text-anchor": anchor}, Number(v.toPrecision(3)).toString()));
  }
  svg.append(el("svg:text", {x: pad.l, y: height - 8}, `step ${x0}`));
  svg.append(el("svg:text", {x: width - pad.r, y: height - 8, "text-anchor": "end"}, `${x1}`));
  const colours = ["#2f5d9e", "#d97706", "#16a34a", "#9333ea"];
  names.forEach((name, i) => {
    const d = series[name].map((p, j) => `${j ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("");
    const single = series[name].length === 1;
    svg.append(single
      ? el("svg:circle", {cx: sx(series[name][0][0]), cy: sy(series[name][0][1]), r: 3, fill: colours[i % 4], "data-series": name})
      : el("svg:path", {d, fill: "none", stroke: colours[i % 4], "stroke-width": 1.5, "data-series": name}));
    svg.append(el("svg:text", {x: width - pad.r - 4, y: pad.t + 12 + 13 * i, "text-anchor": "end", fill: colours[i % 4]}, name));
  });
  return svg;
}

// -- tabs ------------------------------------------------------------------------------------------------------
let overview = null;
const loaded = {};

function showTab() {
  const tab = (location.hash.slice(1) || "data").split("/")[0];
  for (const section of document.querySelectorAll(".tab")) section.hidden = section.id !== `tab-${tab}`;
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("active", link.dataset.tab === tab);
  if (!loaded[tab] && overview) { loaded[tab] = true; ({data: initData, generate: initGenerate, training: initTraining, reports: initReports})[tab]?.(); }
}

function fillSelect(select, items, label = x => x.name) {
  select.replaceChildren(...items.map(x => el("option", {value: x.id}, label(x))));
}

// -- datasets --------------------------------------------------------------------------------------------------
const data = {offset: 0};

async function initData() {
  fillSelect($("#dataset"), overview.data);
  if (!overview.data.length) { $("#plots").append(el("p", {class: "muted"}, "no dataset: start the app with --data DIR")); return; }
  $("#dataset").addEventListener("change", loadDataset);
  $("#split").addEventListener("change", loadDataset);
  for (const id of ["f-label", "f-sex", "f-age-min", "f-age-max", "f-projection", "f-qc"]) {
    $("#" + id).addEventListener("change", () => loadImages(true));
  }
  $("#more").addEventListener("click", () => loadImages(false));
  await loadDataset();
}

async function loadDataset() {
  const id = $("#dataset").value, split = $("#split").value;
  const s = await api(`/api/data/${id}?split=${encodeURIComponent(split)}`);
  $("#splits").textContent = Object.entries(s.splits).map(([k, n]) => `${k} ${n}`).join(" · ") +
    (s.qc_flagged ? ` · ${s.qc_flagged} flagged by QC` : "");
  $("#plots").replaceChildren(
    barChart("Findings", s.counts.label), barChart("Sex", s.counts.sex),
    barChart("Age", s.counts.age, 14), barChart("Projection", s.counts.projection));
  const keep = $("#f-label").value;
  $("#f-label").replaceChildren(el("option", {value: ""}, "any"),
    ...s.counts.label.map(([name, n]) => el("option", {value: name, selected: name === keep}, `${name} (${n})`)));
  const keepP = $("#f-projection").value;
  $("#f-projection").replaceChildren(el("option", {value: ""}, "any"),
    ...s.projections.map(p => el("option", {value: p, selected: p === keepP}, p)));
  $("#sheets").replaceChildren(...(s.contact_sheets.length ? s.contact_sheets.map(sheet =>
    el("figure", {}, el("figcaption", {}, sheet), el("img", {src: `/files/data/${id}/${sheet}`, alt: sheet, class: "sheet"})))
    : [el("p", {class: "muted"}, "none written")]));
  await Promise.all([loadImages(true), loadRejected(id)]);
}

async function loadImages(reset) {
  const id = $("#dataset").value;
  if (reset) { data.offset = 0; $("#grid").replaceChildren(); }
  const q = new URLSearchParams({
    split: $("#split").value, label: $("#f-label").value, sex: $("#f-sex").value,
    age_min: $("#f-age-min").value, age_max: $("#f-age-max").value, projection: $("#f-projection").value,
    qc: $("#f-qc").value, offset: data.offset, limit: 48,
  });
  const page = await api(`/api/data/${id}/images?${q}`);
  data.offset += page.rows.length;
  $("#grid-total").textContent = `${page.total} image(s)`;
  $("#grid").append(...page.rows.map(imageCard));
  $("#more").hidden = data.offset >= page.total;
}

function imageCard(row) {
  const labels = (row.findings || []).map(f => f.label);
  const who = [row.age !== null && row.age !== undefined ? `${row.age} y` : null, row.sex, row.projection, row.modality]
    .filter(Boolean).join(" · ");
  return el("div", {class: "card", "data-labels": JSON.stringify(labels)},
    el("img", {src: row.url, alt: row.text || row.id, loading: "lazy"}),
    el("div", {class: "muted"}, `${row.split} · ${row.id}`),
    el("div", {}, who),
    el("div", {class: "labels"}, (row.findings || []).map(findingText).join("; ")),
    row.qc_flags ? el("div", {class: "flags"}, row.qc_flags.join("; ")) : null,
    el("div", {class: "muted text"}, row.text));
}

async function loadRejected(id) {
  const r = await api(`/api/data/${id}/rejected?limit=48`);
  $("#rejected-reasons").replaceChildren(r.total
    ? el("ul", {}, r.by_reason.map(([reason, n]) => el("li", {}, `${reason}: ${n}`)))
    : el("span", {}, "nothing was left out"));
  $("#rejected").replaceChildren(...r.rows.filter(x => x.url).map(x =>
    el("div", {class: "card"}, el("img", {src: x.url, alt: x.reason, loading: "lazy"}),
      el("div", {class: "reason"}, x.reason), el("div", {class: "muted"}, x.row ? `row ${x.row} of the release's table` : ""))));
}

// -- compose and generate --------------------------------------------------------------------------------------
const compose = {words: {labels: [], locations: []}, models: null};

async function initGenerate() {
  compose.models = await api("/api/models");
  const m = compose.models;
  const select = $("#model");
  select.replaceChildren(
    el("optgroup", {label: "Training runs"}, m.runs.map(r => el("option", {value: `run:${r.id}`}, `${r.name} (${r.method})`))),
    el("optgroup", {label: "Base model + LoRAs"}, m.bases.map(b => el("option", {value: `base:${b.id}`}, b.name))));
  $("#sampler").append(...m.samplers.map(s => el("option", {value: s}, s)));
  select.addEventListener("change", modelChanged);
  $("#add-lora").addEventListener("click", () => { addLora(); refreshPrompt(); });
  $("#add-finding").addEventListener("click", () => addFinding());
  $("#compose").addEventListener("input", refreshPrompt);
  $("#compose").addEventListener("change", refreshPrompt);
  $("#generate").addEventListener("click", generate);
  addFinding();
  if (!m.runs.length && !m.bases.length) { $("#prompt-error").textContent = "no finished run: start the app with --runs DIR"; return; }
  await modelChanged();
}

function modelSpec() {
  const [kind, id] = $("#model").value.split(":");
  if (kind === "run") return {run: id};
  const loras = [...document.querySelectorAll(".lora")].map(row => ({run: $("select", row).value, weight: Number($("input", row).value)}));
  return {base: id, loras};
}

function addLora() {
  const options = compose.models.loras.map(l => el("option", {value: l.id}, l.name));
  const row = el("div", {class: "lora finding"}, el("select", {}, options),
    el("input", {type: "number", step: "0.1", value: "1.0", title: "weight"}),
    el("button", {type: "button", class: "link", onclick: () => { row.remove(); refreshPrompt(); }}, "remove"));
  $("#loras").append(row);
}

async function modelChanged() {
  const base = $("#model").value.startsWith("base:");
  $("#lora-rows").hidden = !base;
  if (base && !document.querySelector(".lora") && compose.models.loras.length) addLora();
  try {
    compose.words = await api("/api/vocabulary", {model: modelSpec()});
  } catch (e) { compose.words = {labels: [], locations: []}; }
  document.dispatchEvent(new Event("words"));  // a field already being typed in shows its suggestions
  refreshPrompt();
}

function addFinding(label = "", locations = "") {
  const labelInput = el("input", {class: "finding-label", placeholder: "finding, e.g. pleural effusion", value: label});
  const placeInput = el("input", {class: "finding-locations", placeholder: "locations, comma-separated", value: locations});
  const row = el("div", {class: "finding"}, labelInput, placeInput,
    el("button", {type: "button", class: "link", onclick: () => { row.remove(); refreshPrompt(); }}, "remove"));
  suggest(labelInput, () => compose.words.labels, false);
  suggest(placeInput, () => compose.words.locations, true);
  $("#findings").append(row);
  return row;
}

// suggestions as one types: the known names that contain what is typed (after the last comma for lists)
function suggest(input, words, list) {
  const box = el("ul", {class: "suggest", hidden: true});
  input.after(box);
  let active = -1;
  const current = () => list ? input.value.split(",").pop().trim() : input.value.trim();
  const choose = name => {
    if (list) { const parts = input.value.split(","); parts[parts.length - 1] = (parts.length > 1 ? " " : "") + name; input.value = parts.join(","); }
    else input.value = name;
    box.hidden = true; input.dispatchEvent(new Event("input", {bubbles: true}));
  };
  const render = () => {
    const typed = current().toLowerCase();
    // names containing what is typed first, then those with its letters in order (a typo still finds "effusion")
    const inOrder = name => { let i = 0; for (const c of name) if (c === typed[i]) i++; return i === typed.length; };
    const all = words();
    const matches = [...all.filter(([n]) => n.toLowerCase().includes(typed)),
      ...all.filter(([n]) => !n.toLowerCase().includes(typed) && inOrder(n.toLowerCase()))].slice(0, 12);
    box.replaceChildren(...matches.map(([name, n], i) => el("li", {class: i === active ? "on" : "", onmousedown: e => { e.preventDefault(); choose(name); }},
      name, el("span", {class: "count"}, String(n)))));
    box.hidden = !matches.length || document.activeElement !== input;
  };
  input.addEventListener("input", () => { active = -1; render(); });
  input.addEventListener("focus", render);
  document.addEventListener("words", () => { if (document.activeElement === input) render(); });
  input.addEventListener("blur", () => { box.hidden = true; });
  input.addEventListener("keydown", e => {
    const items = box.querySelectorAll("li");
    if (box.hidden || !items.length) return;
    if (e.key === "ArrowDown" || e.key === "ArrowUp") { active = (active + (e.key === "ArrowDown" ? 1 : -1) + items.length) % items.length; render(); e.preventDefault(); }
    else if (e.key === "Enter" && active >= 0) { choose(items[active].firstChild.textContent); e.preventDefault(); }
    else if (e.key === "Escape") box.hidden = true;
  });
}

function request() {
  const findings = [...document.querySelectorAll("#findings .finding")].map(row => ({
    label: $(".finding-label", row).value.trim(),
    locations: $(".finding-locations", row).value.split(",").map(s => s.trim()).filter(Boolean),
  })).filter(f => f.label);
  return {
    model: modelSpec(), age: $("#age").value, sex: $("#sex").value, view: $("#view").value.trim(),
    projection: $("#projection").value.trim(), modality: $("#modality").value, findings,
    n: Number($("#n").value), seed: Number($("#seed").value), steps: Number($("#steps").value),
    guidance: Number($("#guidance").value), sampler: $("#sampler").value, negative_prompt: $("#negative").value,
  };
}

const refreshPrompt = debounce(async () => {
  try {
    const p = await api("/api/prompt", request());
    $("#prompt-preview").textContent = p.prompt;
    $("#token-count").textContent = `${p.tokens} tokens of ${p.long_prompts ? "any number (long prompts)" : p.limit}` +
      (p.checked ? "" : " · names not checked: the training data is not at hand");
    $("#token-count").classList.toggle("error", !p.long_prompts && p.tokens > p.limit);
    $("#prompt-notes").replaceChildren(...p.notes.map(n => el("li", {}, n)));
    $("#prompt-error").textContent = "";
    $("#generate").disabled = false;
  } catch (e) {
    $("#prompt-error").textContent = e.message;
    $("#generate").disabled = true;
  }
}, 200);

async function generate() {
  $("#generate").disabled = true;
  $("#results").replaceChildren();
  $("#download").hidden = true;
  $("#provenance-box").hidden = true;
  $("#progress").hidden = false;
  $("#progress").value = 0;
  try {
    let job = await api("/api/generate", request());
    while (!["done", "failed"].includes(job.state)) {
      $("#progress-text").textContent = job.state === "queued" ? `queued: ${job.ahead} ahead`
        : job.state === "loading" ? "loading the model" : `sampling: step ${job.steps_done} of ${job.steps_total}`;
      if (job.steps_total) $("#progress").value = job.steps_done / job.steps_total;
      await new Promise(r => setTimeout(r, 250));
      job = await api(`/api/jobs/${job.id}`);
    }
    if (job.state === "failed") throw new Error(job.error);
    $("#progress").value = 1;
    $("#progress-text").textContent = `${job.images.length} image(s) in ${job.seconds} s: ${job.id}`;
    $("#results").replaceChildren(...job.images.map(im => el("div", {class: "card result"},
      el("img", {src: im.url, alt: im.text}), el("div", {}, `seed ${im.seed}`), el("div", {class: "muted"}, im.id))));
    $("#provenance").textContent = JSON.stringify(job.provenance, null, 2);
    $("#provenance-box").hidden = false;
    $("#download").href = job.download;
    $("#download").hidden = false;
  } catch (e) {
    $("#progress-text").textContent = "";
    $("#prompt-error").textContent = e.message;
  } finally {
    $("#generate").disabled = false;
  }
}

// -- training --------------------------------------------------------------------------------------------------
let watching = null;

async function initTraining() {
  fillSelect($("#run"), overview.runs, r => `${r.name} (${r.state})`);
  if (!overview.runs.length) { $("#run-state").textContent = "no run: start the app with --runs DIR"; return; }
  $("#run").addEventListener("change", loadRun);
  $("#sample-step").addEventListener("input", showSample);
  await loadRun();
}

let samples = [];
async function loadRun() {
  clearTimeout(watching);
  const r = await api(`/api/runs/${$("#run").value}`);
  $("#run-state").textContent = r.state + (r.step !== null ? ` · step ${r.step}${r.max_steps ? " of " + r.max_steps : ""}` : "");
  $("#run-state").className = `state ${r.state}`;
  $("#resume-box").hidden = !r.resume;
  $("#resume").textContent = r.resume || "";
  const losses = Object.fromEntries(Object.entries(r.curves).filter(([k]) => k.startsWith("loss/")));
  $("#curve-loss").replaceChildren(lineChart(losses));
  $("#curve-lr").replaceChildren(lineChart({lr: r.curves.lr || []}));
  // the newest grid, unless one looks at an older one
  const atNewest = !samples.length || Number($("#sample-step").value) === samples.length - 1;
  samples = r.samples;
  $("#sample-step").max = Math.max(0, samples.length - 1);
  if (atNewest) $("#sample-step").value = samples.length - 1;
  showSample();
  const rows = Object.entries(flatten(r.settings));
  $("#settings").replaceChildren(...rows.map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", {}, JSON.stringify(v)))));
  if (r.state === "running") watching = setTimeout(loadRun, 5000);
}

function showSample() {
  const s = samples[Number($("#sample-step").value)];
  $("#sample").hidden = !s;
  $("#sample-label").textContent = s ? `step ${s.step} (${Number($("#sample-step").value) + 1} of ${samples.length})` : "no sample grid yet";
  if (s) $("#sample").src = s.url;
}

function flatten(obj, prefix = "", out = {}) {
  for (const [k, v] of Object.entries(obj || {})) {
    if (v && typeof v === "object" && !Array.isArray(v)) flatten(v, `${prefix}${k}.`, out);
    else out[prefix + k] = v;
  }
  return out;
}

// -- reports ---------------------------------------------------------------------------------------------------
async function initReports() {
  fillSelect($("#eval"), overview.evals);
  if (!overview.evals.length) { $("#report-open").hidden = true; return; }
  $("#eval").addEventListener("change", loadReport);
  await loadReport();
}

async function loadReport() {
  const e = await api(`/api/evals/${$("#eval").value}`);
  $("#report-frame").src = e.report || "about:blank";
  $("#report-open").href = e.report || "#";
}

// -- start -----------------------------------------------------------------------------------------------------
(async () => {
  if (new URLSearchParams(location.search).has("token")) {  // kept as a cookie now: out of the address bar and history
    history.replaceState(null, "", location.pathname + location.hash);
  }
  overview = await api("/api/overview");
  $("#version").textContent = `v${overview.version}`;
  window.addEventListener("hashchange", showTab);
  showTab();
})();
