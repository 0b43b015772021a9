// The tickmpc dashboard page: live plots from the service's telemetry, status and history
// (pushed by the dashboard server over /ws), and settings changes sent as control `set`s
// through POST /api/settings. No build step and nothing fetched from the internet: plain
// JavaScript and uPlot, both served by the dashboard.
"use strict";

const WINDOW = 600;            // ticks kept per robot (as the server's board)
const COLORS = ["#1565c0", "#c62828", "#2e7d32", "#ef6c00", "#6a1b9a", "#00838f",
                "#ad1457", "#4e342e"];

const state = {
  robots: {},                  // id -> {ticks: [...]}
  stats: {},                   // id -> the board's window stats
  status: null,
  history: null,
  videos: [],
  selected: null,              // the robot plotted
  controls: [],
  editing: new Set(),          // controls the operator is changing: not overwritten by status
};
window.tickmpc = state;        // for the browser tests and the curious operator

const $ = (id) => document.getElementById(id);
const fmt = (x, digits = 1) => (x === null || x === undefined || Number.isNaN(x)) ? "–"
  : Number(x).toFixed(digits);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : String(c));
  return node;
};
const axisNumber = (v) => v === 0 ? "0" : Math.abs(v) >= 1e4 || Math.abs(v) < 1e-2
  ? v.toExponential(1) : String(Number(v.toPrecision(3)));
const clock = (t) => t ? new Date(t * 1000).toLocaleTimeString() : "–";

// --- the connection ---------------------------------------------------------------------

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/ws${location.search}`);
  ws.onopen = () => {
    // A new connection sends everything the dashboard holds again: start from it.
    state.robots = {};
    setConnection(true);
  };
  ws.onmessage = (event) => take(JSON.parse(event.data));
  ws.onclose = () => { setConnection(false); setTimeout(connect, 1000); };
}

function setConnection(up) {
  const c = $("connection");
  c.textContent = up ? "live" : "disconnected";
  c.className = up ? "good" : "bad";
}

function take(update) {
  for (const [robot, ticks] of Object.entries(update.ticks || {})) {
    const trace = state.robots[robot] || (state.robots[robot] = {ticks: []});
    trace.ticks.push(...ticks);
    if (trace.ticks.length > WINDOW) trace.ticks.splice(0, trace.ticks.length - WINDOW);
    if (state.selected === null) state.selected = robot;
  }
  if (update.stats) state.stats = update.stats;
  if ("status" in update) {
    if (update.status) state.status = update.status;
    const err = $("service-error");
    err.hidden = !update.service_error;
    err.textContent = update.service_error ? `service: ${update.service_error}` : "";
  }
  if ("history" in update) state.history = update.history;
  if ("videos" in update) state.videos = update.videos || [];
  render(update);
}

// --- charts -------------------------------------------------------------------------------

const charts = {};  // container id -> {plot, key}
const visible = new Set();  // the charts in (or near) the viewport: only those are drawn
const observer = new IntersectionObserver((entries) => {
  for (const e of entries) {
    if (e.isIntersecting) visible.add(e.target.id); else visible.delete(e.target.id);
  }
  if (entries.some((e) => e.isIntersecting)) renderAll();
}, {rootMargin: "200px"});
document.querySelectorAll(".chart").forEach((box) => observer.observe(box));
document.addEventListener("visibilitychange", () => { if (!document.hidden) renderAll(); });

function chart(id, key, series, makeData, xTime = true) {
  // (Re)create the plot when its series change (another robot, more terms), else set data.
  // A chart out of sight, or in a hidden tab, is not drawn: drawing is the page's main cost,
  // and on the service's own machine it takes the cores from the planner.
  if (document.hidden || !visible.has(id)) return;
  const data = makeData();
  const box = $(id);
  let entry = charts[id];
  if (!entry || entry.key !== key) {
    if (entry) entry.plot.destroy();
    const opts = {
      width: Math.max(box.clientWidth, 300), height: 220,
      scales: {x: {time: xTime}},
      series: [{label: xTime ? "time" : "x"}, ...series.map((s, i) => {
        const color = s.stroke || COLORS[i % COLORS.length];
        const dots = s.points ? {paths: () => null,
                                 points: {show: true, size: 4, fill: color, stroke: color}}
                              : {points: {show: false}};
        return {stroke: color, width: 1.5, spanGaps: false, ...s, ...dots};
      })],
      axes: [{}, {size: 60, values: (u, ticks) => ticks.map(axisNumber)}],
      legend: {live: true},
    };
    entry = charts[id] = {plot: new uPlot(opts, data, box), key};
  } else {
    entry.plot.setData(data);
  }
  box.dataset.points = String(data[0].length);
}

window.addEventListener("resize", () => {
  for (const [id, entry] of Object.entries(charts)) {
    entry.plot.setSize({width: Math.max($(id).clientWidth, 300), height: 220});
  }
});

function robotSettings(robot) {
  const s = state.status;
  if (!s) return null;
  return (robot && s.robots && s.robots[robot]) ? s.robots[robot].settings : s.settings;
}

function received(ticks, discount) {
  // The rewards received over each plan's horizon: reward of tick j is that of the step
  // from j-1 to j, so plan i's are those of ticks i+1 .. i+H, in the same episode.
  const out = new Array(ticks.length).fill(null);
  for (let i = 0; i < ticks.length; i++) {
    const h = ticks[i].horizon;  // 0: no plan (exploring, the policy acting, a fallback)
    if (!h || i + h >= ticks.length) continue;
    let sum = 0, scale = 1, whole = true;
    for (let j = i + 1; j <= i + h; j++) {
      const t = ticks[j];
      if (t.episode !== ticks[i].episode || t.step !== ticks[i].step + (j - i)
          || t.reward === null) { whole = false; break; }
      sum += scale * t.reward;
      scale *= discount;
    }
    if (whole) out[i] = sum;
  }
  return out;
}

function gapped(ticks, columns) {
  // [x, ...columns] with a null row between two episodes, so no line joins them.
  const xs = [], out = columns.map(() => []);
  ticks.forEach((t, i) => {
    if (i > 0 && t.episode !== ticks[i - 1].episode) {
      xs.push((t.t + ticks[i - 1].t) / 2);
      out.forEach((col) => col.push(null));
    }
    xs.push(t.t);
    out.forEach((col, k) => col.push(columns[k][i]));
  });
  return [xs, ...out];
}

function renderRobotCharts() {
  const robot = state.selected;
  const trace = robot && state.robots[robot];
  if (!trace) return;
  $("robot-name").textContent = `(${robot})`;
  const ticks = trace.ticks;
  const xs = ticks.map((t) => t.t);
  const stats = state.stats[robot] || {};
  const robotStatus = state.status && state.status.robots && state.status.robots[robot];
  const budget = robotStatus ? robotStatus.budget_ms : null;
  chart("chart-plan", `plan:${robot}`, [
    {label: "plan ms", points: true},
    {label: "budget ms", stroke: "#c62828", dash: [6, 4]},
    {label: "p50", stroke: "#2e7d32"},
    {label: "p99", stroke: "#ef6c00"},
  ], () => gapped(ticks, [ticks.map((t) => t.plan_ms), xs.map(() => budget ?? null),
                          xs.map(() => stats.plan_ms_p50 ?? null),
                          xs.map(() => stats.plan_ms_p99 ?? null)]));
  const misses = robotStatus ? robotStatus.deadline_misses : stats.misses;
  const fallbacks = robotStatus ? robotStatus.fallbacks : stats.fallbacks;
  $("plan-stats").textContent = `p50 ${fmt(stats.plan_ms_p50, 2)} ms · p99 ${fmt(stats.plan_ms_p99, 2)} ms`
    + ` over ${stats.window || 0} ticks · budget ${budget === null || budget === undefined ? "none (lockstep)" : fmt(budget, 1) + " ms"}`
    + ` · deadline misses ${misses ?? 0} (${stats.window_misses || 0} in window)`
    + ` · fallbacks ${fallbacks ?? 0} (${stats.window_fallbacks || 0} in window)`;
  chart("chart-iterations", `it:${robot}`, [{label: "iterations", points: true}],
        () => gapped(ticks, [ticks.map((t) => t.iterations)]));
  $("iteration-stats").textContent = `mean ${fmt(stats.iterations_mean, 2)} per plan; `
    + `planner ${ticks.length ? ticks[ticks.length - 1].planner : "?"}, horizon `
    + `${ticks.length ? ticks[ticks.length - 1].horizon : "?"}`;
  const settings = robotSettings(robot) || {};
  chart("chart-return", `ret:${robot}`, [{label: "predicted"}, {label: "received over H"}],
        () => gapped(ticks, [ticks.map((t) => t.predicted),
                             received(ticks, settings.discount ?? 1)]));
  const terms = [];
  for (const t of ticks) for (const name of Object.keys(t.terms || {})) {
    if (!terms.includes(name)) terms.push(name);
  }
  chart("chart-terms", `terms:${robot}:${terms.join(",")}`,
        [{label: "reward"}, ...terms.map((name) => ({label: name}))],
        () => gapped(ticks, [ticks.map((t) => t.reward), ...terms.map((name) =>
          ticks.map((t) => t.terms ? (t.terms[name] ?? null) : null))]));
  const dims = ticks.length ? ticks[ticks.length - 1].action.length : 0;
  const a = [...Array(dims).keys()];
  chart("chart-actions", `act:${robot}:${dims}`, a.map((i) => ({label: `a[${i}]`})),
        () => gapped(ticks, a.map((i) => ticks.map((t) => t.action[i] ?? null))));
}

function renderLearning() {
  const h = state.history;
  if (!h) return;
  const episodes = h.episodes || [];
  const ref = h.reference_return;
  const returns = episodes.map((e) => e.return);
  const refSeries = ref === null || ref === undefined ? [] : [{label: "reference", stroke: "#888", dash: [6, 4]}];
  const refData = ref === null || ref === undefined ? [] : [episodes.map(() => ref)];
  chart("chart-episodes", `ep:${refSeries.length}`,
        [{label: "return", points: true}, ...refSeries],
        () => [episodes.map((_, i) => i + 1), returns, ...refData], false);
  const t0 = episodes.length ? episodes[0].time : 0;
  chart("chart-minutes", `min:${refSeries.length}`,
        [{label: "return", points: true}, ...refSeries],
        () => [episodes.map((e) => (e.time - t0) / 60), returns, ...refData], false);
  const models = h.models || [];
  chart("chart-holdout", "holdout", [{label: "holdout MSE", points: true}],
        () => [models.map((m) => m.version), models.map((m) => m.holdout_mse)], false);
  const rows = models.slice().reverse().map((m) => el("tr", {"data-version": m.version},
    el("td", {}, `v${m.version}`), el("td", {}, clock(m.time)), el("td", {}, fmt(m.holdout_mse, 4)),
    el("td", {}, fmt(m.holdout_nll, 3)), el("td", {}, m.train_rows ?? "–")));
  $("models").tBodies[0].replaceChildren(...rows);
  const policies = h.policies || [];
  $("policies").textContent = policies.length
    ? `policy versions: ${policies.map((q) => `v${q.version} (${clock(q.time)})`).join(", ")}` : "";
  $("rejected").tBodies[0].replaceChildren(...(h.rejected || []).slice().reverse().map((r) =>
    el("tr", {}, el("td", {}, r.what), el("td", {}, r.version === null ? "–" : `v${r.version}`),
       el("td", {}, clock(r.time)), el("td", {}, r.reason))));
}

// --- status, robots, videos -------------------------------------------------------------

function renderStatus() {
  const s = state.status;
  if (!s) return;
  $("task").textContent = s.task;
  $("model-version").textContent = s.model_version ? `v${s.model_version}` : "none";
  $("policy-version").textContent = s.policy_version ? `v${s.policy_version}` : "none";
  $("transitions").textContent = s.transitions;
  $("uptime").textContent = `${Math.round(s.uptime_s)} s`;
  // Robots the service serves, and those it sent ticks of that are gone (between episodes
  // of a lockstep run, or disconnected): their rows keep what the dashboard received.
  const ids = [...new Set([...Object.keys(s.robots || {}), ...Object.keys(state.robots)])].sort();
  const body = $("robots").tBodies[0];
  body.replaceChildren(...ids.map((id) => {
    const st = state.stats[id] || {};
    const r = (s.robots || {})[id] || {mode: "not connected", ticks: st.received,
      deadline_misses: st.misses, fallbacks: st.fallbacks, model_version: lastTick(id).model};
    const row = el("tr", {"data-robot": id},
      el("td", {}, id), el("td", {}, r.mode), el("td", {}, r.ticks ?? "–"), el("td", {}, fmt(r.tick_hz, 1)),
      el("td", {}, fmt(st.plan_ms_p50 ?? r.plan_ms_p50, 2)), el("td", {}, fmt(st.plan_ms_p99 ?? r.plan_ms_p99, 2)),
      el("td", {}, r.budget_ms === null || r.budget_ms === undefined ? "–" : fmt(r.budget_ms, 1)),
      el("td", {}, r.deadline_misses), el("td", {}, r.fallbacks), el("td", {}, fmt(st.iterations_mean, 2)),
      el("td", {}, r.episodes ?? "–"), el("td", {}, fmt(r.last_return, 1)),
      el("td", {}, r.model_version === undefined ? "–" : `v${r.model_version}`));
    if (id === state.selected) row.className = "selected";
    row.onclick = () => { state.selected = id; render({ticks: {}}); };
    return row;
  }));
  const target = $("target");
  const have = [...target.options].map((o) => o.value);
  for (const id of ids) if (!have.includes(id)) target.append(el("option", {value: id}, id));
  syncSettings();
}

function lastTick(robot) {
  const ticks = state.robots[robot] ? state.robots[robot].ticks : [];
  return ticks.length ? ticks[ticks.length - 1] : {};
}

function renderVideos() {
  $("videos-card").hidden = state.videos.length === 0;
  $("videos").replaceChildren(...state.videos.map((v) => el("figure", {},
    el("video", {src: `videos/${encodeURIComponent(v.file)}${location.search}`, controls: "",
                 muted: "", preload: "metadata", width: 360}),
    el("figcaption", {}, `episode ${v.episode} (${v.robot}): return ${fmt(v.return, 1)}`
       + (v.tags && v.tags.length ? ` · ${v.tags.join(", ")}` : "")))));
}

function renderAll() {
  renderStatus();
  renderRobotCharts();
  renderLearning();
}

function render(update) {
  if ("status" in update) renderStatus();
  if (update.ticks) renderRobotCharts();
  if ("history" in update) { renderLearning(); syncSettings(); }
  if ("videos" in update) renderVideos();
}

// --- settings ---------------------------------------------------------------------------

function weightNames() {
  const names = new Set(Object.keys((state.history && state.history.task_weights) || {}));
  for (const n of Object.keys((robotSettings($("target").value) || {}).weights || {})) names.add(n);
  const trace = state.selected && state.robots[state.selected];
  const last = trace && trace.ticks.length ? trace.ticks[trace.ticks.length - 1] : null;
  for (const n of Object.keys((last && last.terms) || {})) names.add(n);
  return [...names];
}

function buildControls() {
  const form = $("settings");
  form.replaceChildren();
  for (const c of state.controls) {
    const id = `ctl-${c.name}`;
    form.append(el("label", {for: id}, c.name));
    if (c.kind === "choice") {
      const select = el("select", {id, name: c.name}, ...c.choices.map((v) => el("option", {value: v}, v)));
      form.append(select, el("span"));
      select.onchange = () => apply({[c.name]: select.value}, select);
    } else {
      const number = el("input", {id, name: c.name, type: "number", min: c.min, max: c.max,
                                  step: c.kind === "int" ? 1 : "any"});
      if (c.nullable) number.placeholder = "none";
      if (c.slider_max) {
        const slider = el("input", {id: `${id}-slider`, type: "range", min: c.min,
                                    max: Math.min(c.slider_max, c.max), step: 1});
        slider.oninput = () => { number.value = slider.value; };
        slider.onchange = () => apply({[c.name]: Number(slider.value)}, slider);
        track(slider, c.name);
        form.append(slider);
      } else {
        form.append(el("span"));
      }
      form.append(number);
      number.onchange = () => {
        const text = number.value.trim();
        const value = text === "" ? (c.nullable ? null : NaN) : Number(text);
        if (Number.isNaN(value)) { showMessage(`${c.name}: "${number.value}" is not a number`, false); return; }
        apply({[c.name]: value}, number);
      };
    }
    track($(id), c.name);
    form.append(el("span", {class: "help"}, c.help));
  }
  form.append(el("span", {class: "help", id: "weights-title"}, "reward term weights"));
}

function track(input, name) {
  input.addEventListener("focus", () => state.editing.add(name));
  input.addEventListener("blur", () => { state.editing.delete(name); syncSettings(); });
}

function syncWeights(settings) {
  const form = $("settings");
  const defaults = (state.history && state.history.task_weights) || {};
  for (const name of weightNames()) {
    const id = `ctl-weight-${name}`;
    let input = $(id);
    if (!input) {
      input = el("input", {id, type: "number", step: "any", "data-term": name});
      input.onchange = () => {
        if (input.value.trim() === "") {  // not a weight of 0: say so, send nothing
          showMessage(`weight ${name}: give a number`, false);
          return;
        }
        apply({weights: {[name]: Number(input.value)}}, input);
      };
      track(input, `weight.${name}`);
      form.append(el("label", {for: id}, `weight ${name}`), el("span"), input);
    }
    if (!state.editing.has(`weight.${name}`)) {
      const w = (settings.weights || {})[name] ?? defaults[name];
      input.value = w === undefined ? "" : w;
    }
  }
}

function syncSettings() {
  const settings = robotSettings($("target").value);
  if (!settings) return;
  for (const c of state.controls) {
    if (state.editing.has(c.name)) continue;
    const value = settings[c.name];
    const input = $(`ctl-${c.name}`);
    if (input) input.value = value === null || value === undefined ? "" : value;
    const slider = $(`ctl-${c.name}-slider`);
    if (slider && value !== null && value !== undefined) slider.value = Math.min(value, slider.max);
  }
  syncWeights(settings);
}

function showMessage(text, ok) {
  const m = $("settings-message");
  m.textContent = text;
  m.className = ok ? "ok" : "error";
}

async function apply(changes, input) {
  const robot = $("target").value || null;
  const body = JSON.stringify(robot ? {changes, robot} : {changes});
  let reply;
  try {
    const response = await fetch(`api/settings${location.search}`, {
      method: "POST", headers: {"Content-Type": "application/json"}, body});
    reply = await response.json();
  } catch (err) {
    reply = {ok: false, code: "no_dashboard", error: String(err)};
  }
  const what = Object.entries(changes).map(([k, v]) => `${k} = ${JSON.stringify(v)}`).join(", ");
  if (reply.ok) {
    showMessage(`applied ${what} (${robot || "all robots"}); takes effect at the next tick`, true);
    if (state.status) {
      if (robot && state.status.robots[robot]) state.status.robots[robot].settings = reply.settings;
      else state.status.settings = reply.settings;
    }
  } else {
    showMessage(`refused ${what}: ${reply.code}: ${reply.error}`, false);
  }
  if (input) { input.blur(); }
  state.editing.clear();
  syncSettings();
}

$("target").onchange = () => { state.editing.clear(); syncSettings(); };

fetch(`api/controls${location.search}`).then((r) => r.json()).then((info) => {
  state.controls = info.controls;
  buildControls();
  syncSettings();
  connect();
});
