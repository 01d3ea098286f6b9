// mailvault dashboard: a page served by `mailvault serve` that reads the admin API with the
// bearer token the operator pastes (kept in this tab's sessionStorage only). It polls every
// second. Every value from the server is put in the page as text (textContent), never as
// HTML, since mailbox names and error messages come from remote servers.
"use strict";

// refresh interval: 1 s, or sessionStorage "mv-poll-ms" (200 ms to 60 s)
function pollMs() {
  const v = Number(sessionStorage.getItem("mv-poll-ms"));
  return v >= 200 && v <= 60000 ? v : 1000;
}
let timer = null;
let lastTotal = null; // {messages, at} of the previous overview, for the throughput

function token() { return sessionStorage.getItem("mv-token") || ""; }

async function api(method, path, body) {
  const opts = { method, headers: { Authorization: "Bearer " + token() } };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch("/api/v1" + path, opts);
  const data = await r.json().catch(() => ({}));
  if (r.status === 401) { logout("Your token was refused: log in again."); throw new Error("unauthorized"); }
  if (!r.ok) throw new Error((data.error && data.error.message) || ("HTTP " + r.status));
  return data;
}

// el("td", {class: "num"}, "text", child, ...): children are strings (as text) or nodes
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "onclick") e.addEventListener("click", v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function table(headers, rows, testid) {
  return el("table", { "data-testid": testid },
    el("thead", {}, el("tr", {}, ...headers.map(h => el("th", h.num ? { class: "num" } : {}, h.t || h)))),
    el("tbody", {}, ...rows));
}

function bytes(n) {
  const u = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < u.length - 1) { n /= 1000; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}

function when(ms) { return ms ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "-"; }

function bar(frac) {
  const pct = Math.max(0, Math.min(100, Math.round(frac * 100)));
  const fill = el("span", { "data-pct": pct });
  fill.style.width = pct + "%"; // CSSOM, allowed by the page's CSP (style attributes are not)
  return el("div", { class: "bar", title: pct + "%" }, fill);
}

function card(label, value, testid) {
  return el("div", { class: "card" }, el("div", { class: "label" }, label),
    el("div", { class: "value", "data-testid": testid }, value));
}

function setLive(ok) {
  const l = document.getElementById("live");
  l.hidden = false;
  l.textContent = ok ? "live · " + new Date().toLocaleTimeString() : "not updating";
  l.className = ok ? "live" : "live stale";
}

// ---- views -----------------------------------------------------------------------------

async function overview(view) {
  const o = await api("GET", "/overview");
  let rate = "-";
  if (lastTotal && o.now_ms > lastTotal.at)
    rate = ((o.archived_messages - lastTotal.messages) * 1000 / (o.now_ms - lastTotal.at)).toFixed(1);
  lastTotal = { messages: o.archived_messages, at: o.now_ms };
  const tenants = o.tenants.map(t => {
    const s = t.states, n = Object.values(s).reduce((a, b) => a + b, 0);
    const done = (s.done || 0) + (s.cancelled || 0);
    return el("tr", { "data-testid": "tenant-row", "data-tenant": t.name },
      el("td", {}, el("a", { href: "#/tenant/" + encodeURIComponent(t.name) }, t.name)),
      el("td", { class: "num" }, n),
      el("td", {}, bar(n ? done / n : 0)),
      el("td", { class: "num" }, s.running || 0),
      el("td", { class: "num" }, (s.queued || 0) + (s.retrying || 0) + t.waiting),
      el("td", { class: "num" + (s.failed ? " error" : "") }, s.failed || 0),
      el("td", { class: "num" }, t.archived_messages),
      el("td", { class: "num" }, bytes(t.archived_bytes)));
  });
  const workers = o.workers.map(w => el("tr", { "data-testid": "worker-row" },
    el("td", {}, w.id), el("td", { class: "state " + (w.up ? "done" : "failed") }, w.up ? "alive" : "gone"),
    el("td", { class: "num" }, w.busy + " / " + w.capacity), el("td", {}, when(w.last_seen_ms))));
  view.replaceChildren(
    el("div", { class: "cards" },
      card("Workers alive", o.workers_alive, "workers-alive"),
      card("Queue lag", o.lag === null ? "n/a" : o.lag, "queue-lag"),
      card("Messages/s", rate, "throughput"),
      card("Archived messages", o.archived_messages, "archived-total")),
    el("h2", {}, "Tenants"),
    table(["Tenant", { t: "Mailboxes", num: 1 }, "Done", { t: "Running", num: 1 }, { t: "Waiting", num: 1 },
      { t: "Failed", num: 1 }, { t: "Archived", num: 1 }, { t: "Bytes", num: 1 }], tenants, "tenants"),
    el("h2", {}, "Workers"),
    table(["Worker", "State", { t: "Tasks", num: 1 }, "Last seen"], workers, "workers"));
}

async function tenantPage(view, name) {
  const [st, runs, profiles] = await Promise.all([
    api("GET", "/tenants/" + encodeURIComponent(name) + "/status"),
    api("GET", "/tenants/" + encodeURIComponent(name) + "/runs"),
    api("GET", "/tenants/" + encodeURIComponent(name) + "/profiles")]);
  const msg = el("p", { class: "msg", "data-testid": "run-message" }, view.dataset.msg || "");
  const profileRows = profiles.map(p => el("tr", {},
    el("td", {}, p),
    el("td", {}, el("button", {
      class: "primary", "data-testid": "run-" + p, onclick: async () => {
        try {
          const r = await api("POST", "/tenants/" + encodeURIComponent(name) + "/profiles/" +
                              encodeURIComponent(p) + "/run");
          view.dataset.msg = "Run " + r.run + " started: " + r.tasks + " mailbox(es) queued.";
        } catch (e) { view.dataset.msg = "Run failed: " + e.message; }
        refresh();
      } }, "Run now"))));
  const mboxes = st.mailboxes.map(m => el("tr", { "data-testid": "mailbox-row", "data-mailbox": m.mailbox },
    el("td", {}, m.mailbox),
    el("td", { class: "state " + m.state, "data-testid": "mailbox-state" }, m.state),
    el("td", { class: "num", "data-testid": "mailbox-messages" }, m.messages),
    el("td", { class: "num" }, m.total_messages),
    el("td", {}, m.folder || "-"),
    el("td", { class: m.error && m.state !== "done" ? "error" : "muted" },
       m.error && m.state !== "done" ? m.error : (m.worker || ""))));
  const recent = runs.slice(-10).reverse().map(r => el("tr", { "data-testid": "run-row" },
    el("td", {}, r.run.slice(0, 8)), el("td", {}, r.profile), el("td", {}, r.trigger),
    el("td", {}, when(r.started_ms)), el("td", {}, r.state),
    el("td", {}, bar(r.tasks ? (r.done + r.failed + r.cancelled) / r.tasks : 1)),
    el("td", { class: "num" }, r.done + " / " + r.tasks),
    el("td", { class: "num" + (r.failed ? " error" : "") }, r.failed),
    el("td", { class: "num" }, r.messages), el("td", { class: "num" }, bytes(r.bytes_raw))));
  const errors = [];
  for (const r of runs.slice(-1))
    for (const [mb, e] of Object.entries(r.errors || {})) errors.push(el("li", {}, mb + ": " + e));
  view.replaceChildren(
    el("h2", { "data-testid": "tenant-name" }, "Tenant " + name),
    el("h2", {}, "Profiles"), table(["Profile", ""], profileRows, "profiles"), msg,
    el("h2", {}, "Mailboxes"),
    table(["Mailbox", "State", { t: "This run", num: 1 }, { t: "All runs", num: 1 }, "Folder", "Worker / error"],
      mboxes, "mailboxes"),
    el("h2", {}, "Runs"),
    table(["Run", "Profile", "Trigger", "Started", "State", "Progress", { t: "Done", num: 1 },
      { t: "Failed", num: 1 }, { t: "Messages", num: 1 }, { t: "Bytes", num: 1 }], recent, "runs"),
    errors.length ? el("div", {}, el("h2", {}, "Errors of the last run"), el("ul", { class: "error" }, ...errors))
                  : el("span"));
}

async function dlqPage(view) {
  const d = await api("GET", "/dlq");
  const rows = d.records.map(r => el("tr", { "data-testid": "dlq-row" },
    el("td", {}, r.tenant), el("td", {}, r.mailbox), el("td", {}, r.profile), el("td", { class: "num" }, r.attempt),
    el("td", { class: "error" }, r.error),
    el("td", {}, el("button", { onclick: async () => {
      try { await api("POST", "/dlq/retry", { tenant: r.tenant, mailbox: r.mailbox }); }
      catch (e) { alert("Retry failed: " + e.message); }
      refresh();
    } }, "Retry"))));
  view.replaceChildren(el("h2", {}, "Dead letters"),
    rows.length ? table(["Tenant", "Mailbox", "Profile", { t: "Attempt", num: 1 }, "Error", ""], rows, "dlq")
                : el("p", { class: "muted", "data-testid": "dlq-empty" }, "No task has failed for good."),
    d.undecodable ? el("p", { class: "muted" }, d.undecodable + " undecodable record(s) not shown.") : el("span"));
}

// ---- routing and polling ---------------------------------------------------------------

async function refresh() {
  clearTimeout(timer);
  const view = document.getElementById("view");
  const hash = location.hash || "#/";
  try {
    if (hash.startsWith("#/tenant/")) await tenantPage(view, decodeURIComponent(hash.slice(9)));
    else if (hash === "#/dlq") await dlqPage(view);
    else await overview(view);
    setLive(true);
  } catch (e) {
    if (e.message === "unauthorized") return;
    setLive(false);
  }
  timer = setTimeout(refresh, pollMs());
}

function show(loggedIn) {
  document.getElementById("login").hidden = loggedIn;
  document.getElementById("nav").hidden = !loggedIn;
  document.getElementById("view").hidden = !loggedIn;
}

function logout(why) {
  clearTimeout(timer);
  sessionStorage.removeItem("mv-token");
  document.getElementById("login-error").textContent = why || "";
  document.getElementById("live").hidden = true;
  show(false);
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("login-form").addEventListener("submit", async ev => {
    ev.preventDefault();
    sessionStorage.setItem("mv-token", document.getElementById("token").value.trim());
    document.getElementById("token").value = "";
    document.getElementById("login-error").textContent = "";
    show(true);
    refresh();
  });
  document.getElementById("logout").addEventListener("click", () => logout());
  window.addEventListener("hashchange", () => { document.getElementById("view").dataset.msg = ""; refresh(); });
  if (token()) { show(true); refresh(); } else show(false);
});
