// The session browser's page: plain modern JS, no build step, no external asset.
// Every value from a log goes into the page as text (textContent, attributes), never as HTML.

const $ = (id) => document.getElementById(id);
const PAGE = 50;

// Control characters (C0, DEL, C1) shown as visible escapes: a log line cannot fake another.
function visible(value) {
  return String(value).replace(/[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/g,
    (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"));
}

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = visible(text);
  if (cls) node.className = cls;
  return node;
}

function sessionHref(id, run) {
  return "/sessions/" + encodeURIComponent(id) + (run ? "?run=" + run : "");
}

function localTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

function duration(s) {
  if (s === null || s === undefined) return "";
  if (s < 1) return (s * 1000).toFixed(s < 0.01 ? 2 : 0) + " ms";
  if (s < 120) return s.toFixed(2) + " s";
  return (s / 60).toFixed(1) + " min";
}

function badge(status) {
  const known = ["open", "closed", "error", "interrupted", "timeout", "evicted"];
  return el("span", status, "badge status-" + (known.includes(status) ? status : "other"));
}

const LEVELS = ["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"];
function levelClass(name) {
  return "level-" + (LEVELS.includes(name) ? name.toLowerCase() : "other");
}

function levelChips(levels) {
  const box = el("span", null, "chips");
  const names = Object.keys(levels || {}).sort((a, b) => {
    const ia = LEVELS.indexOf(a), ib = LEVELS.indexOf(b);
    return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || a.localeCompare(b);
  });
  for (const name of names) {
    if (!levels[name]) continue;
    const chip = el("span", `${name[0] || "?"}${levels[name]}`, "chip " + levelClass(name));
    chip.title = `${visible(name)}: ${levels[name]}`;
    box.append(chip);
  }
  return box;
}

function compact(obj, max = 80) {
  const parts = Object.entries(obj || {}).map(([k, v]) =>
    `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`);
  const full = visible(parts.join(" "));
  return [full.length > max ? full.slice(0, max - 1) + "…" : full, full];
}

async function getJSON(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

// ---- live events ----------------------------------------------------------------------------
let source = null;
function listen(url, onChange) {
  if (source) source.close();
  const live = $("live");
  source = new EventSource(url);
  let timer = null;
  const kick = () => {
    clearTimeout(timer);
    timer = setTimeout(onChange, 150);
  };
  source.addEventListener("open", () => { live.textContent = "live"; live.className = "live on"; });
  source.addEventListener("error", () => { live.textContent = "reconnecting"; live.className = "live off"; });
  source.addEventListener("session", kick);
  source.addEventListener("reload", kick);
}

// ---- the list -------------------------------------------------------------------------------
function listParams() {
  const params = new URLSearchParams(location.search);
  if (!params.get("offset")) params.set("offset", "0");
  return params;
}

function fillFilters(params) {
  $("f-status").value = params.get("status") || "";
  $("f-q").value = params.get("q") || "";
  $("f-sort").value = params.get("sort") || "-start";
  for (const name of ["since", "until"]) {
    const value = params.get(name) || "";
    $("f-" + name).value = /^\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d)?$/.test(value) ? value : "";
  }
}

function navigateList(changes, replace = false) {
  const params = listParams();
  for (const [key, value] of Object.entries(changes)) {
    if (value === "" || value === null) params.delete(key); else params.set(key, value);
  }
  if (!("offset" in changes)) params.delete("offset");
  if (params.get("offset") === "0") params.delete("offset");
  const url = "/" + (params.toString() ? "?" + params : "");
  if (replace) history.replaceState(null, "", url); else history.pushState(null, "", url);
  route();
}

// Live events can start a load while another is in flight: only the newest one may render.
let generation = 0;

// Fetch for a view: the data, or null when a newer load began meanwhile or the request failed
// (then its message is shown in the view's error line).
async function loadFor(url, errorId) {
  const mine = ++generation;
  const error = $(errorId);
  try {
    const data = await getJSON(url);
    if (mine !== generation) return null;
    error.hidden = true;
    return data;
  } catch (exc) {
    if (mine === generation) {
      error.textContent = visible(exc.message);
      error.hidden = false;
    }
    return null;
  }
}

async function loadList() {
  const params = listParams();
  const api = new URLSearchParams(params);
  api.set("limit", String(PAGE));
  for (const name of ["since", "until"]) {
    // A datetime-local value is the user's local time: send it as UTC.
    const value = api.get(name);
    if (value && /^\d{4}-\d\d-\d\dT/.test(value)) api.set(name, new Date(value).toISOString());
  }
  const data = await loadFor("/api/sessions?" + api, "list-error");
  if (data === null) return;
  const body = $("sessions").tBodies[0];
  const rows = data.sessions.map((s) => {
    const tr = el("tr");
    tr.dataset.sessionId = s.session_id;
    const link = el("a", s.session_id);
    link.href = sessionHref(s.session_id, s.run > 1 ? s.run : null);
    const idCell = el("td", null, "id");
    idCell.append(link);
    if (s.run > 1) idCell.append(el("span", ` run ${s.run}`, "muted"));
    const statusCell = el("td");
    statusCell.append(badge(s.status));
    const levelsCell = el("td");
    levelsCell.append(levelChips(s.levels));
    const [shown, full] = compact(s.metadata);
    const meta = el("td", shown, "meta");
    meta.title = full;
    tr.append(idCell, statusCell, el("td", localTime(s.started || s.first_stamp), "time"),
      el("td", duration(s.duration_s), "num"), el("td", s.entries, "num"), levelsCell, meta);
    return tr;
  });
  body.replaceChildren(...rows);
  if (!rows.length) {
    const empty = el("td", "No session matches.", "muted");
    empty.colSpan = 7;
    const tr = el("tr");
    tr.append(empty);
    body.append(tr);
  }
  const offset = data.offset;
  $("range").textContent = data.total
    ? `${offset + 1}–${offset + data.sessions.length} of ${data.total}` : "0 sessions";
  $("prev").disabled = offset === 0;
  $("next").disabled = offset + data.sessions.length >= data.total;
}

// ---- one session ----------------------------------------------------------------------------
function kvTable(table, obj) {
  const rows = Object.entries(obj || {}).map(([key, value]) => {
    const tr = el("tr");
    tr.append(el("th", key), el("td", typeof value === "string" ? value : JSON.stringify(value)));
    return tr;
  });
  if (!rows.length) {
    const tr = el("tr");
    tr.append(el("td", "none", "muted"));
    rows.push(tr);
  }
  table.replaceChildren(...rows);
}

const CLAMP = 2000;
function messageCell(entry) {
  const td = el("td", null, "message");
  const text = visible(entry.message ?? "");
  const span = el("span");
  span.textContent = text.length > CLAMP ? text.slice(0, CLAMP) + "…" : text;
  td.append(span);
  if (text.length > CLAMP) {
    const more = el("button", `show all ${text.length} characters`, "more");
    more.type = "button";
    more.addEventListener("click", () => { span.textContent = text; more.remove(); });
    td.append(more);
  }
  const trace = entry.exception || entry.stack || entry.traceback;
  if (trace) td.append(el("pre", typeof trace === "string" ? trace : JSON.stringify(trace, null, 2), "trace"));
  const extra = {};
  for (const key of ["custom_fields", "logger", "source", "status", "duration_s", "dropped", "summary", "discarded", "trace_id", "span_id"]) {
    if (entry[key] !== undefined) extra[key] = entry[key];
  }
  if (Object.keys(extra).length) {
    const details = el("details");
    details.append(el("summary", Object.keys(extra).join(", ")),
      el("pre", JSON.stringify(extra, null, 2), "fields"));
    td.append(details);
  }
  return td;
}

// Milliseconds since the epoch with the microseconds the logger writes (Date.parse stops at ms).
function micros(iso) {
  const ms = Date.parse(iso);
  if (Number.isNaN(ms)) return NaN;
  const fraction = /\.(\d+)/.exec(String(iso));
  return ms + (fraction ? Number((fraction[1] + "000000").slice(3, 6)) / 1000 : 0);
}

function drawAxis(entries, gaps, discarded) {
  const axis = $("axis");
  const times = entries.map((e) => micros(e.timestamp)).filter((t) => !Number.isNaN(t));
  const marks = [];
  const low = Math.min(...times), high = Math.max(...times);
  const span = high - low || 1;
  for (const entry of entries) {
    const t = micros(entry.timestamp);
    const mark = el("span", null, "mark " + levelClass(entry.level) + " event-" + String(entry.event).replace(/[^a-z_]/g, ""));
    mark.style.left = (Number.isNaN(t) ? 0 : ((t - low) / span) * 100).toFixed(3) + "%";
    mark.title = `#${entry.seq} ${visible(entry.level ?? "")} ${visible(String(entry.message ?? "")).slice(0, 200)}`;
    marks.push(mark);
  }
  const bySeq = new Map(entries.map((e) => [e.seq, micros(e.timestamp)]));
  for (const gap of gaps) {
    const t = bySeq.get(gap.after_seq);
    const mark = el("span", `${gap.missing} missing`, "gap-mark");
    mark.style.left = (Number.isNaN(t) || t === undefined ? 0 : ((t - low) / span) * 100).toFixed(3) + "%";
    marks.push(mark);
  }
  axis.replaceChildren(...marks);
  const notes = [];
  if (gaps.length) notes.push(`${gaps.reduce((n, g) => n + g.missing, 0)} entries missing in ${gaps.length} gap(s)`);
  if (discarded) notes.push(`${discarded} held entries discarded (buffer_level)`);
  if (times.length) {
    const spanText = span >= 1 ? duration(span / 1000) : `${Math.round(span * 1000)} µs`;
    notes.push(`${localTime(new Date(low).toISOString())} → ${localTime(new Date(high).toISOString())} (${spanText})`);
  }
  $("axis-notes").textContent = notes.join(" · ");
}

function tree(list, nodes) {
  list.replaceChildren(...nodes.map((node) => {
    const li = el("li");
    const link = el("a", node.session_id);
    link.href = sessionHref(node.session_id);
    li.append(link, " ", badge(node.status));
    if (node.children && node.children.length) {
      const sub = el("ul");
      tree(sub, node.children);
      li.append(sub);
    }
    return li;
  }));
  if (!nodes.length) list.replaceChildren(el("li", "none", "muted"));
}

async function loadSession(id, run) {
  const url = "/api/sessions/" + encodeURIComponent(id) + (run ? "?run=" + run : "");
  const data = await loadFor(url, "session-error");
  if (data === null) return;
  const s = data.session;
  document.title = `${visible(s.session_id)} — sessions`;
  $("s-id").textContent = visible(s.session_id);
  $("s-status").replaceWith(Object.assign(badge(s.status), { id: "s-status" }));
  $("s-times").textContent = [
    s.started ? "started " + localTime(s.started) : "start not in these logs",
    s.closed ? "closed " + localTime(s.closed) : "still open",
    s.duration_s !== null && s.duration_s !== undefined ? duration(s.duration_s) : "",
    `${s.entries} entries`,
  ].filter(Boolean).join(" · ");
  const parent = $("s-parent");
  parent.hidden = !s.parent;
  if (s.parent) {
    $("s-parent-link").textContent = visible(s.parent);
    $("s-parent-link").href = sessionHref(s.parent);
  }
  const runs = $("s-runs");
  $("s-runs-label").hidden = data.runs.length < 2;
  runs.replaceChildren(...data.runs.map((n) => {
    const option = el("option", `${n}`);
    option.value = String(n);
    option.selected = n === data.run;
    return option;
  }));
  kvTable($("s-metadata"), s.metadata);
  kvTable($("s-summary"), s.summary);
  drawAxis(data.entries, data.gaps, s.discarded);
  const gapAfter = new Map(data.gaps.map((g) => [g.after_seq, g.missing]));
  const rows = [];
  for (const entry of data.entries) {
    const tr = el("tr", null, "entry event-" + String(entry.event).replace(/[^a-z_]/g, ""));
    tr.dataset.seq = String(entry.seq);
    const level = el("td");
    level.append(el("span", entry.level ?? entry.levelno ?? "", "chip " + levelClass(entry.level)));
    tr.append(el("td", entry.seq, "num"), el("td", localTime(entry.timestamp), "time"), level, messageCell(entry));
    rows.push(tr);
    if (gapAfter.has(entry.seq)) {
      const gap = el("tr", null, "gap-row");
      const cell = el("td", `— ${gapAfter.get(entry.seq)} entries missing here (seq ${entry.seq + 1}–${entry.seq + gapAfter.get(entry.seq)}) —`);
      cell.colSpan = 4;
      gap.append(cell);
      rows.push(gap);
    }
  }
  $("entries").tBodies[0].replaceChildren(...rows);
  $("more-entries").hidden = !data.more_entries;
  $("more-entries").textContent = `${data.more_entries} more entries not shown`;
  tree($("children"), data.children);
}

// ---- routing --------------------------------------------------------------------------------
function route() {
  const path = location.pathname;
  const listView = $("list-view"), sessionView = $("session-view");
  if (path.startsWith("/sessions/")) {
    const id = decodeURIComponent(path.slice("/sessions/".length));
    const run = new URLSearchParams(location.search).get("run");
    listView.hidden = true;
    sessionView.hidden = false;
    loadSession(id, run);
    listen("/api/events?session=" + encodeURIComponent(id), () => loadSession(id, run));
  } else {
    sessionView.hidden = true;
    listView.hidden = false;
    document.title = "Sessions — async_session_logger";
    fillFilters(listParams());
    loadList();
    listen("/api/events", loadList);
  }
}

function setup() {
  $("f-status").addEventListener("change", (e) => navigateList({ status: e.target.value }));
  $("f-sort").addEventListener("change", (e) => navigateList({ sort: e.target.value }));
  let typing = null;
  $("f-q").addEventListener("input", (e) => {
    clearTimeout(typing);
    typing = setTimeout(() => navigateList({ q: e.target.value }, true), 250);
  });
  for (const name of ["since", "until"]) {
    $("f-" + name).addEventListener("change", (e) => navigateList({ [name]: e.target.value }));
  }
  for (const button of document.querySelectorAll(".quick button")) {
    button.addEventListener("click", () => navigateList({ since: button.dataset.since, until: "" }));
  }
  $("filters").addEventListener("submit", (e) => e.preventDefault());
  $("prev").addEventListener("click", () => {
    const offset = Number(listParams().get("offset")) || 0;
    navigateList({ offset: String(Math.max(0, offset - PAGE)) });
  });
  $("next").addEventListener("click", () => {
    const offset = Number(listParams().get("offset")) || 0;
    navigateList({ offset: String(offset + PAGE) });
  });
  $("copy-link").addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(location.href);
      $("copy-link").textContent = "copied";
    } catch {
      $("copy-link").textContent = location.href;
    }
  });
  $("s-runs").addEventListener("change", (e) => {
    const id = decodeURIComponent(location.pathname.slice("/sessions/".length));
    history.pushState(null, "", sessionHref(id, e.target.value));
    route();
  });
  // Links inside the page navigate without a reload.
  document.addEventListener("click", (e) => {
    const link = e.target.closest("a");
    if (!link || link.origin !== location.origin || e.ctrlKey || e.metaKey || e.shiftKey) return;
    e.preventDefault();
    history.pushState(null, "", link.pathname + link.search);
    route();
  });
  window.addEventListener("popstate", route);
  getJSON("/api/status").then((s) => {
    $("sources").textContent = visible(s.sources.join(", "));
  }).catch(() => {});
  route();
}

setup();
