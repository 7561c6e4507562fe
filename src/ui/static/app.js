// clawfarm dashboard: renders the page's JSON and keeps it live over Server-Sent Events.
// No framework, no build step; embedded in the binary (src/ui/static/app.js).
"use strict";

const CSRF = document.querySelector('meta[name="csrf-token"]').content;
const PAGE = document.body.dataset.page;

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const k of kids) if (k !== null && k !== undefined) e.append(k);
  return e;
}

function bytes(n) {
  if (n === null || n === undefined) return "-";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + u[i];
}

function dur(s) {
  if (s === null || s === undefined) return "-";
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
  return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
}

function toast(msg, bad) {
  const t = document.getElementById("toast");
  t.textContent = msg;
  t.className = bad ? "show bad" : "show";
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.className = ""; }, 6000);
}

function live(state) {
  const l = document.getElementById("live");
  l.textContent = state;
  l.className = "live " + state;
}

async function act(id, name, verb, tag) {
  const body = {};
  if (verb === "checkpoint") {
    const t = prompt(`Checkpoint ${name}: tag (empty for a time-based one)`, "");
    if (t === null) return;
    if (t.trim() !== "") body.tag = t.trim();
  }
  if (verb === "restore") {
    if (!confirm(`Restore ${name} to checkpoint ${tag}? What it did since is lost (volumes too).`)) return;
    body.tag = tag;
  }
  if (verb === "suspend" && !confirm(`Suspend ${name}? Its running state is saved and its VM ends; Start resumes it.`)) return;
  if (verb === "stop" && !confirm(`Stop ${name}?`)) return;
  if (verb === "start" && !confirm(`Start ${name}?`)) return;
  if (verb === "restart" && !confirm(`Restart ${name}?`)) return;
  if (verb === "rm" && !confirm(`Remove ${name}? It is stopped first; its volumes are kept.`)) return;
  if (verb === "purge") {
    if (!confirm(`Remove ${name} AND DELETE ITS VOLUMES? This cannot be undone.`)) return;
    const typed = prompt(`Second confirmation: type the instance name (${name}) to delete its volumes.`);
    if (typed === null) return;
    body.purge = true;
    body.confirm = typed;
    verb = "rm";
  }
  toast(`${verb} ${name}…`);
  try {
    const r = await fetch(`/api/instances/${encodeURIComponent(id)}/${verb}`, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": CSRF },
      body: JSON.stringify(body),
      credentials: "same-origin",
    });
    const j = await r.json();
    if (r.ok) toast(j.message); else toast(j.error || r.statusText, true);
    if (r.ok && body.purge !== undefined && PAGE === "instance") location.href = "/";
  } catch (e) {
    toast(String(e), true);
  }
}

function actions(row) {
  const id = row.clawid, name = row.name;
  const running = row.pid !== null && row.pid !== undefined || ["ready", "booting", "unhealthy"].includes(row.status);
  const b = (verb, label, cls) => el("button", {
    class: "btn " + (cls || ""), text: label, type: "button",
    "data-act": verb, "data-id": id,
    onclick: () => act(id, name, verb),
  });
  const box = el("span", { class: "acts" });
  if (running) box.append(b("stop", "Stop"), b("restart", "Restart"), b("checkpoint", "Checkpoint"), b("suspend", "Suspend"));
  else box.append(b("start", row.status === "suspended" ? "Resume" : "Start"));
  box.append(b("rm", "Remove", "warn"), b("purge", "Purge", "danger"));
  return box;
}

function statusBadge(s) {
  return el("span", { class: "status s-" + s, text: s });
}

function gatewayLink(gw) {
  if (!gw) return "-";
  return el("a", { href: "http://" + gw + "/", text: gw, target: "_blank", rel: "noopener noreferrer" });
}

function renderInstances(data) {
  const tb = document.querySelector("#instances tbody");
  const rows = data.instances || [];
  tb.replaceChildren(...rows.map((r) => el("tr", { id: "row-" + r.clawid, "data-status": r.status, "data-name": r.name },
    el("td", {}, el("a", { href: "/i/" + encodeURIComponent(r.clawid), text: r.name })),
    el("td", {}, el("code", { text: r.clawid })),
    el("td", { class: "st" }, statusBadge(r.status)),
    el("td", { text: r.phase }),
    el("td", {}, gatewayLink(r.gateway)),
    el("td", { class: "num", text: String(r.restarts) }),
    el("td", { class: "num", text: dur(r.uptime_secs) }),
    el("td", { class: "num", text: r.cpu_percent === null || r.cpu_percent === undefined ? "-" : r.cpu_percent.toFixed(1) + "%" }),
    el("td", { class: "num", text: bytes(r.memory_bytes) }),
    el("td", { class: "err", text: r.last_error || "" }),
    el("td", {}, actions(r)),
  )));
  document.getElementById("empty").hidden = rows.length > 0;
  const errs = document.getElementById("errors");
  errs.replaceChildren(...(data.errors || []).map((e) => el("p", { class: "bad", text: "unreadable record: " + e })));
}

const PHASE_COLORS = { ok: "#2e9d5b", failed: "#d64545", started: "#3b82c4", unknown: "#9aa3ad" };

function renderTimeline(boot) {
  const box = document.getElementById("timeline");
  const ph = boot.phases || [];
  document.getElementById("bootsum").textContent =
    (boot.boot ? `boot ${boot.boot}: ` : "") + (boot.summary || "");
  if (ph.length === 0) { box.replaceChildren(el("p", { class: "muted", text: "No boot report yet." })); return; }
  const NS = "http://www.w3.org/2000/svg";
  const total = Math.max(1, ...ph.map((p) => p.start + p.seconds));
  const W = 760, L = 170, R = 70, H = 22;
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${ph.length * H + 24}`);
  svg.setAttribute("class", "timeline");
  svg.setAttribute("id", "timeline-svg");
  const sx = (s) => L + (s / total) * (W - L - R);
  ph.forEach((p, i) => {
    const y = i * H + 4;
    const t = document.createElementNS(NS, "text");
    t.setAttribute("x", 4); t.setAttribute("y", y + 14); t.textContent = p.phase;
    const r = document.createElementNS(NS, "rect");
    r.setAttribute("x", sx(p.start)); r.setAttribute("y", y + 2);
    r.setAttribute("width", Math.max(2, sx(p.start + p.seconds) - sx(p.start))); r.setAttribute("height", H - 6);
    r.setAttribute("rx", 3); r.setAttribute("fill", PHASE_COLORS[p.state] || "#888");
    r.setAttribute("class", "bar bar-" + p.state); r.setAttribute("data-phase", p.phase);
    const tt = document.createElementNS(NS, "title");
    tt.textContent = `${p.phase}: ${p.state}, ${p.seconds.toFixed(1)} s (from +${p.start.toFixed(1)} s)`;
    r.append(tt);
    const d = document.createElementNS(NS, "text");
    d.setAttribute("x", Math.min(W - R + 4, sx(p.start + p.seconds) + 4)); d.setAttribute("y", y + 14);
    d.setAttribute("class", "dur"); d.textContent = p.seconds.toFixed(1) + " s";
    svg.append(t, r, d);
  });
  const axis = document.createElementNS(NS, "text");
  axis.setAttribute("x", L); axis.setAttribute("y", ph.length * H + 18); axis.setAttribute("class", "axis");
  axis.textContent = `0 … ${total.toFixed(1)} s since QEMU start`;
  svg.append(axis);
  box.replaceChildren(svg);
}

function renderBoots(boots) {
  const box = document.getElementById("boots");
  if (!boots || boots.length === 0) { box.replaceChildren(el("p", { class: "muted", text: "None recorded." })); return; }
  const max = Math.max(1, ...boots.map((b) => b.seconds || 0));
  box.replaceChildren(...boots.map((b) => {
    const bar = el("span", { class: "pbar r-" + b.result });
    bar.style.width = (b.seconds ? Math.max(1, (b.seconds / max) * 100) : 1) + "%";
    return el("div", { class: "pboot" },
      el("span", { class: "when", text: b.started.replace("T", " ").replace(/\.\d+/, "") }),
      el("span", { class: "track" }, bar),
      el("span", { class: "secs", text: (b.seconds === null ? "-" : b.seconds.toFixed(1) + " s") + " " + b.result }));
  }));
}

function renderDetail(d) {
  const r = d.instance;
  const st = document.getElementById("status");
  st.textContent = r.status; st.className = "status s-" + r.status;
  const kv = (k, v) => el("div", {}, el("span", { class: "k", text: k }), el("span", { class: "v" }, v));
  document.getElementById("summary").replaceChildren(
    kv("CLAWID", el("code", { text: r.clawid })),
    kv("Phase", r.phase),
    kv("Gateway", gatewayLink(r.gateway)),
    kv("QEMU pid", r.pid === null ? "-" : String(r.pid)),
    kv("Accel", r.accel || "-"),
    kv("Uptime", dur(r.uptime_secs)),
    kv("CPU", r.cpu_percent === null ? "-" : r.cpu_percent.toFixed(1) + "%"),
    kv("Memory", bytes(r.memory_bytes)),
    kv("Restarts", String(r.restarts)),
    kv("Last error", el("span", { class: "err", text: r.last_error || "-" })),
  );
  document.getElementById("actions").replaceChildren(actions(r));
  renderTimeline(d.boot);
  renderBoots(d.boots);
  document.querySelector("#bootlines tbody").replaceChildren(...(d.boot.lines || []).map((l) =>
    el("tr", { class: "b-" + l.state },
      el("td", { text: l.ts || "-" }), el("td", { text: l.phase }), el("td", { text: l.state }),
      el("td", { text: l.code === null ? "" : String(l.code) }))));
  const cks = d.checkpoints || [];
  document.querySelector("#checkpoints tbody").replaceChildren(...cks.slice().reverse().map((c) =>
    el("tr", { "data-tag": c.tag },
      el("td", {}, el("code", { text: c.tag })),
      el("td", { text: c.created_at.replace("T", " ") }),
      el("td", { class: "num", text: bytes(c.vm_state_bytes) }),
      el("td", { text: (c.volumes || []).join(", ") || "-" }),
      el("td", {}, el("button", {
        class: "btn warn", type: "button", text: "Restore", "data-act": "restore", "data-tag": c.tag,
        onclick: () => act(r.clawid, r.name, "restore", c.tag),
      })))));
  document.getElementById("nocheckpoints").hidden = cks.length > 0;
  document.querySelector("#events tbody").replaceChildren(...(d.events || []).slice().reverse().map((e) =>
    el("tr", {}, el("td", { text: e.time.replace("T", " ") }), el("td", { text: e.action }),
      el("td", { text: e.result }), el("td", { text: e.message }))));
}

function appendSerial(s) {
  const pre = document.getElementById("serial");
  const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 30;
  if (s.reset) pre.textContent = "";
  // Terminal colour and cursor sequences mean nothing in a <pre>.
  const clean = s.text.replace(/\x1b\[[0-9;?]*[ -\/]*[@-~]/g, "").replace(/\x1b[()][A-Za-z0-9]/g, "").replace(/\r(?!\n)/g, "");
  let t = pre.textContent + clean;
  if (t.length > 300000) t = t.slice(t.length - 200000);
  pre.textContent = t;
  if (atEnd) pre.scrollTop = pre.scrollHeight;
}

function stream(url, handlers) {
  const es = new EventSource(url);
  es.onopen = () => live("live");
  es.onerror = () => live("reconnecting");
  for (const [name, f] of Object.entries(handlers)) {
    es.addEventListener(name, (ev) => f(JSON.parse(ev.data)));
  }
  return es;
}

const dataEl = document.getElementById("data");
const initial = dataEl ? JSON.parse(dataEl.textContent) : null;
if (PAGE === "instances") {
  renderInstances(initial);
  stream("/sse/instances", { instances: renderInstances });
} else if (PAGE === "instance") {
  renderDetail(initial);
  const id = document.getElementById("actions").dataset.id;
  stream("/sse/instances/" + encodeURIComponent(id), {
    detail: renderDetail,
    serial: appendSerial,
    gone: (g) => { toast(g.error, true); live("gone"); },
  });
} else {
  live("static");
}
