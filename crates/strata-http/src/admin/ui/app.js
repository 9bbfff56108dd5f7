// The Strata admin UI: one page over the operator's API (/admin/*, /audit, /health).
// No framework and no build step; every value from the server is set as text, never as HTML.
"use strict";

const main = document.getElementById("main");
const notice = document.getElementById("notice");
const tokenForm = document.getElementById("token-form");
let timers = [];
// Rebuilds asked for from this page: projection → when asked; reported when they finish.
const rebuilding = new Map();

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem("strata-token");
  if (token) headers.Authorization = "Bearer " + token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    cache: "no-store",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (_) {
    data = null;
  }
  if (response.status === 401 || response.status === 403) tokenForm.hidden = false;
  if (!response.ok) {
    throw new ApiError(response.status, (data && data.detail) || text || response.statusText);
  }
  return data;
}

// el("td", {class: "num"}, "12"): an element with attributes and children (strings become text).
function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function table(columns, rows, attributes) {
  const head = el("tr", {}, columns.map((c) => el("th", { class: c.num ? "num" : null }, c.title)));
  return el("table", attributes || {}, el("thead", {}, head), el("tbody", {}, rows));
}

function say(text, isError) {
  notice.replaceChildren(el("p", { class: isError ? "error" : null }, text));
}

function every(ms, task) {
  task();
  timers.push(setInterval(task, ms));
}

function json(value) {
  return el("pre", {}, JSON.stringify(value, null, 2));
}

function count(n, noun) {
  return `${n} ${noun}${n === 1 ? "" : "s"}`;
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

// --- projections -----------------------------------------------------------------------

async function projections() {
  const body = el("tbody");
  main.replaceChildren(el("h2", {}, "Projections"), table(
    [{ title: "projection" }, { title: "status" }, { title: "position", num: true }, { title: "head", num: true },
     { title: "lag (events)", num: true }, { title: "lag (s)", num: true }, { title: "parked", num: true },
     { title: "rebuild" }, { title: "owner" }, { title: "error" }, { title: "" }],
    [], { id: "projections" }));
  main.querySelector("#projections tbody").replaceWith(body);
  // Rows are made once and their cells updated in place, so a refresh never takes a button
  // away from under a click.
  const rows = new Map();
  const rowOf = (name) => {
    if (rows.has(name)) return rows.get(name);
    const cell = (field, num) => el("td", { class: num ? "num" : null, "data-field": field });
    const row = el("tr", { "data-projection": name },
      el("td", {}, el("a", { href: `#/projections/${encodeURIComponent(name)}` }, name)),
      cell("status"), cell("position", true), cell("head", true), cell("lag_events", true),
      cell("lag_seconds", true), cell("parked", true), cell("rebuild"), cell("owner"), cell("error"),
      el("td", {}, el("button", { "data-action": "rebuild", onclick: () => rebuild(name) }, "Rebuild")));
    rows.set(name, row);
    body.append(row);
    return row;
  };
  const set = (row, field, content) => {
    const cell = row.querySelector(`[data-field="${field}"]`);
    const text = content instanceof Node ? content.outerHTML : String(content);
    if (cell.dataset.shown === text) return;
    cell.dataset.shown = text;
    cell.replaceChildren(content);
  };
  every(1000, async () => {
    const asked = performance.now();
    let list;
    try {
      list = await api("GET", "/admin/projections");
    } catch (error) {
      say(error.message, true);
      return;
    }
    for (const p of list) {
      const row = rowOf(p.name);
      row.querySelector('[data-field="status"]').className = `status status-${p.status}`;
      set(row, "status", p.status);
      set(row, "position", p.position);
      set(row, "head", p.head);
      set(row, "lag_events", p.lag_events);
      set(row, "lag_seconds", p.lag_seconds.toFixed(1));
      set(row, "parked", p.parked > 0 ? el("a", { href: `#/projections/${encodeURIComponent(p.name)}` }, p.parked) : "0");
      set(row, "rebuild", p.rebuild
        ? el("div", { class: "bar", title: `${p.rebuild.position} of ${p.rebuild.head}` },
            el("span", { style: `width:${p.rebuild.head ? Math.floor((100 * p.rebuild.position) / p.rebuild.head) : 0}%` }))
        : el("span", { class: "muted" }, "—"));
      set(row, "owner", p.owner || "");
      set(row, "error", p.error || "");
      row.querySelector('[data-field="error"]').classList.add("error");
      // Only an answer to a question asked after the rebuild began can say it finished.
      if (!(rebuilding.get(p.name) < asked)) continue;
      if (p.status === "failed") {
        rebuilding.delete(p.name);
        say(`Rebuild of ${p.name} failed: ${p.error || "see the logs"}`, true);
      } else if (!p.rebuild && p.status !== "rebuilding") {
        rebuilding.delete(p.name);
        say(`Rebuild of ${p.name} finished at position ${p.position}.`);
      }
    }
  });
}

async function rebuild(name) {
  try {
    await api("POST", `/admin/projections/${encodeURIComponent(name)}/rebuild`);
    // Stored once answered: a refresh asked later sees the rebuild, or its end.
    rebuilding.set(name, performance.now());
    say(`Rebuild of ${name} started; the live views keep serving until it catches up.`);
  } catch (error) {
    say(`Rebuild of ${name} refused: ${error.message}`, true);
  }
}

async function projection(name) {
  main.replaceChildren(
    el("h2", {}, el("a", { href: "#/projections" }, "Projections"), " / ", name),
    el("h3", {}, "Parked instances"),
    el("div", { id: "parked" }, "Loading…"),
    el("h3", {}, "Skipped events"),
    el("div", { id: "skipped" }, "Loading…"));
  await showParked(name);
}

async function showParked(name) {
  const base = `/admin/projections/${encodeURIComponent(name)}`;
  let parked;
  let skipped;
  try {
    [parked, skipped] = await Promise.all([api("GET", `${base}/parked`), api("GET", `${base}/skipped`)]);
  } catch (error) {
    say(error.message, true);
    return;
  }
  const act = async (what, view, body) => {
    try {
      const report = await api("POST", `${base}/parked/${encodeURIComponent(view)}/${what}`, body);
      say(report.parked
        ? `${view} is parked again at position ${report.parked.position}: ${report.parked.error}`
        : `${view} is released at position ${report.position}.`, Boolean(report.parked));
    } catch (error) {
      say(`${what} of ${view} refused: ${error.message}`, true);
    }
    await showParked(name);
  };
  const rows = parked.map((p) => {
    const skipForm = el("form", { class: "skip-form", hidden: true, onsubmit: (event) => {
      event.preventDefault();
      act("skip", p.view_id, { reason: skipForm.querySelector("input").value });
    } },
      el("input", { name: "reason", placeholder: "why skip this event (kept for good)", required: true, size: 36 }),
      el("button", { type: "submit", class: "danger", "data-action": "confirm-skip" }, "Skip event"));
    return el("tr", { "data-view": p.view_id },
      el("td", {}, p.view_id),
      el("td", { class: "num" }, p.position),
      el("td", { class: "num" }, p.events),
      el("td", { class: "num" }, p.attempts),
      el("td", {}, when(p.parked_at)),
      el("td", { class: "error" }, p.error),
      el("td", {},
        el("button", { "data-action": "retry", onclick: () => act("retry", p.view_id, {}) }, "Retry"), " ",
        el("button", { "data-action": "skip", class: "danger", onclick: () => { skipForm.hidden = false; } }, "Skip…"),
        skipForm));
  });
  document.getElementById("parked")?.replaceChildren(parked.length
    ? table([{ title: "instance" }, { title: "at position", num: true }, { title: "events waiting", num: true },
             { title: "attempts", num: true }, { title: "parked at" }, { title: "error" }, { title: "" }], rows, { id: "parked-table" })
    : el("p", { class: "muted" }, "No parked instances."));
  document.getElementById("skipped")?.replaceChildren(skipped.length
    ? table([{ title: "instance" }, { title: "position", num: true }, { title: "type" }, { title: "reason" }, { title: "skipped at" }],
        skipped.map((s) => el("tr", {}, el("td", {}, s.view_id), el("td", { class: "num" }, s.position),
          el("td", {}, s.type), el("td", {}, s.reason), el("td", {}, when(s.skipped_at)))))
    : el("p", { class: "muted" }, "No skipped events."));
}

// --- events: streams, audit, tail -------------------------------------------------------

function eventsTable(events, attributes) {
  return table(
    [{ title: "position", num: true }, { title: "stream" }, { title: "version", num: true }, { title: "type" },
     { title: "recorded" }, { title: "user" }, { title: "correlation" }, { title: "data" }],
    events.map((e) => el("tr", { "data-position": e.position },
      el("td", { class: "num" }, e.position),
      el("td", {}, el("a", { href: `#/streams/${encodeURIComponent(e.stream_type)}/${encodeURIComponent(e.stream_id)}` },
        `${e.stream_type}/${e.stream_id}`)),
      el("td", { class: "num" }, e.version),
      el("td", {}, e.schema_version > 1 ? `${e.type} v${e.schema_version}` : e.type),
      el("td", {}, when(e.metadata.recorded_at)),
      el("td", {}, e.metadata.user || ""),
      el("td", {}, el("a", { href: `#/audit/correlation_id/${encodeURIComponent(e.metadata.correlation_id)}` },
        e.metadata.correlation_id)),
      el("td", {}, el("details", {}, el("summary", {}, "data and metadata"), json(e.data), json(e.metadata))))),
    attributes);
}

function lookupForm(fields, go) {
  const form = el("form", { class: "lookup", onsubmit: (event) => {
    event.preventDefault();
    go(Object.fromEntries(new FormData(form).entries()));
  } },
    fields.map((f) => el("label", {}, f.label, f.options
      ? el("select", { name: f.name }, f.options.map((o) => el("option", { value: o, selected: o === f.value }, o)))
      : el("input", { name: f.name, value: f.value || "", placeholder: f.placeholder || "", required: true }))),
    el("button", { type: "submit" }, "Look up"));
  return form;
}

async function streams(type, id) {
  main.replaceChildren(el("h2", {}, "Streams"),
    lookupForm([{ name: "type", label: "aggregate type", value: type || "order" }, { name: "id", label: "id", value: id }],
      (v) => { location.hash = `#/streams/${encodeURIComponent(v.type)}/${encodeURIComponent(v.id)}`; }),
    el("div", { id: "stream" }));
  if (!type || !id) return;
  try {
    const events = await api("GET", `/admin/streams/${encodeURIComponent(type)}/${encodeURIComponent(id)}`);
    document.getElementById("stream")?.replaceChildren(
      el("p", { class: "muted" }, `${count(events.length, "event")} in ${type}/${id}`), eventsTable(events, { id: "stream-events" }));
  } catch (error) {
    document.getElementById("stream")?.replaceChildren(el("p", { class: "error" }, error.message));
  }
}

async function audit(by, value) {
  main.replaceChildren(el("h2", {}, "Audit"),
    lookupForm([{ name: "by", label: "by", options: ["correlation_id", "stream", "user"], value: by || "correlation_id" },
                { name: "value", label: "value", value, placeholder: "correlation id, TYPE/ID or user" }],
      (v) => { location.hash = `#/audit/${v.by}/${encodeURIComponent(v.value)}`; }),
    el("div", { id: "audit" }));
  if (!by || !value) return;
  const show = async (after) => {
    const query = new URLSearchParams({ [by]: value, limit: "100" });
    if (after) query.set("after", after);
    try {
      const page = await api("GET", `/audit?${query}`);
      const shown = [el("p", { class: "muted" }, `${count(page.events.length, "event")}, newest first`),
        eventsTable(page.events, { id: "audit-events" })];
      if (page.next) shown.push(el("button", { onclick: () => show(page.next) }, "Older events"));
      document.getElementById("audit")?.replaceChildren(...shown);
    } catch (error) {
      document.getElementById("audit")?.replaceChildren(el("p", { class: "error" }, error.message));
    }
  };
  await show(null);
}

async function tail() {
  const status = el("p", { class: "muted", id: "tail-status" }, "Following the log…");
  main.replaceChildren(el("h2", {}, "Live tail"), status, el("div", { id: "tail" }));
  let after = null;
  let shown = [];
  let polling = false;
  every(1000, async () => {
    // A slow answer must not overlap the next poll, which would show its events twice.
    if (polling) return;
    polling = true;
    try {
      await poll();
    } finally {
      polling = false;
    }
  });
  async function poll() {
    const query = new URLSearchParams({ limit: "200" });
    if (after !== null) query.set("after", after);
    try {
      const page = await api("GET", `/admin/events?${query}`);
      if (page.events.length) {
        after = page.events[page.events.length - 1].position;
        shown = page.events.slice().reverse().concat(shown).slice(0, 200);
        document.getElementById("tail")?.replaceChildren(eventsTable(shown, { id: "tail-events" }));
      } else if (after === null) {
        after = page.head;
      }
      status.textContent = `Following the log: head at position ${page.head}; newest first.`;
    } catch (error) {
      status.textContent = error.message;
    }
  }
}

// --- sagas --------------------------------------------------------------------------------

async function sagas(name, id) {
  main.replaceChildren(el("h2", {}, "Sagas"), el("div", { id: "sagas" }, "Loading…"), el("div", { id: "saga-instance" }));
  let counts;
  try {
    counts = await api("GET", "/admin/sagas");
  } catch (error) {
    say(error.message, true);
    return;
  }
  const names = counts.map((c) => c.name);
  document.getElementById("sagas")?.replaceChildren(
    table([{ title: "saga" }, { title: "active", num: true }, { title: "completed", num: true }, { title: "failed", num: true }, { title: "parked", num: true }],
      counts.map((c) => el("tr", { "data-saga": c.name }, el("td", {}, c.name), el("td", { class: "num" }, c.active),
        el("td", { class: "num" }, c.completed), el("td", { class: "num" }, c.failed), el("td", { class: "num" }, c.parked))),
      { id: "saga-counts" }),
    el("h3", {}, "One instance"),
    names.length ? lookupForm([{ name: "saga", label: "saga", options: names, value: name }, { name: "id", label: "instance id", value: id }],
      (v) => { location.hash = `#/sagas/${encodeURIComponent(v.saga)}/${encodeURIComponent(v.id)}`; }) : el("p", { class: "muted" }, "No sagas run here."));
  if (!name || !id) return;
  try {
    const instance = await api("GET", `/admin/sagas/${encodeURIComponent(name)}/${encodeURIComponent(id)}`);
    document.getElementById("saga-instance")?.replaceChildren(json(instance));
  } catch (error) {
    document.getElementById("saga-instance")?.replaceChildren(el("p", { class: "error" }, error.message));
  }
}

// --- the page -----------------------------------------------------------------------------

async function health() {
  const badge = document.getElementById("health");
  try {
    const response = await fetch("/health", { cache: "no-store" });
    const body = await response.json();
    badge.className = body.status;
    badge.textContent = `${body.node_id} · ${body.status}`;
  } catch (_) {
    badge.className = "down";
    badge.textContent = "no answer from /health";
  }
}

function route() {
  for (const timer of timers) clearInterval(timer);
  timers = [];
  const decode = (part) => {
    try {
      return decodeURIComponent(part);
    } catch (_) {
      return part;
    }
  };
  const [page, ...rest] = location.hash.replace(/^#\/?/, "").split("/").map(decode);
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("active", link.dataset.nav === (page || "projections"));
  }
  switch (page) {
    case "sagas": return sagas(rest[0], rest[1]);
    case "streams": return streams(rest[0], rest[1]);
    case "audit": return audit(rest[0], rest.slice(1).join("/"));
    case "tail": return tail();
    case "projections": if (rest[0]) return projection(rest[0]); return projections();
    default: return projections();
  }
}

tokenForm.addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("strata-token", document.getElementById("token").value.trim());
  tokenForm.hidden = true;
  notice.replaceChildren();
  route();
});
window.addEventListener("hashchange", () => { notice.replaceChildren(); route(); });
health();
setInterval(health, 5000);
route();
