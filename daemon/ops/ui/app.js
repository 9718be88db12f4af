// spoofwatch live operator page: plain JS, no build step, no library.
// State comes from /api/state and then /api/events (server-sent events). Every (re)connection of the
// event stream starts with a full `state` event, so a reconnect or a server-side overflow resyncs.
"use strict";

const $ = (sel) => document.querySelector(sel);
const MAX_ALERTS = 100;
const EVENT_TEXT = {"call.spoof_detected": "SPOOF DETECTED", "call.summary": "call summary",
                    "upstream.degraded": "UPSTREAM DEGRADED", "upstream.recovered": "upstream recovered"};
const VERDICT_TEXT = {pending: "pending", bonafide: "bonafide", suspect: "suspect", spoofed: "SPOOFED"};

const S = {
  calls: new Map(),          // call_id → call (legs carry their points)
  alerts: [],                // newest first
  upstream: null,
  threshold: 0.9,
  whip: null,
  endpoints: [],
  hidden: 0,
  skewMs: 0,                 // server wall clock − browser clock
  token: null,               // UI token, in memory only
};
let dirty = true;
let es = null;
let retryMs = 1000;

// ---- data in ------------------------------------------------------------------------------------
function authHeaders() {
  return S.token ? {Authorization: "Bearer " + S.token} : {};
}

function applyState(st) {
  S.calls = new Map(st.calls.map((c) => [c.call_id, c]));
  S.alerts = st.alerts.slice(0, MAX_ALERTS);
  S.upstream = st.upstream;
  S.hidden = st.hidden_calls || 0;
  if (st.threshold !== undefined) S.threshold = st.threshold;
  if (st.whip !== undefined) S.whip = st.whip;
  if (st.endpoints !== undefined) S.endpoints = st.endpoints;
  if (st.version) $("#version").textContent = st.version;
  S.skewMs = st.now * 1000 - Date.now();
  dirty = true;
}

function onCall(c) {
  const old = S.calls.get(c.call_id);
  const points = new Map((old ? old.legs : []).map((l) => [l.leg, l.points || []]));
  for (const leg of c.legs) leg.points = points.get(leg.leg) || [];
  S.calls.set(c.call_id, c);
  dirty = true;
}

function onResult(r) {
  const c = S.calls.get(r.call_id);
  if (!c) return;
  const leg = c.legs.find((l) => l.leg === r.leg);
  if (!leg) return;
  leg.points.push(r.point);
  if (leg.points.length > 2000) leg.points.splice(0, leg.points.length - 2000);
  Object.assign(leg, {verdict: r.verdict, results: r.results, max_posterior: r.max_posterior,
                      last_posterior: r.last_posterior});
  c.verdict = r.call_verdict;
  dirty = true;
}

function onAlert(a) {
  const i = S.alerts.findIndex((x) => x.event_id === a.event_id);
  if (i >= 0) S.alerts[i] = a; else S.alerts.unshift(a);
  if (S.alerts.length > MAX_ALERTS) S.alerts.length = MAX_ALERTS;
  dirty = true;
}

function setConn(state, text) {
  const el = $("#conn");
  el.dataset.state = state;
  el.textContent = text;
}

function connect() {
  if (es) es.close();
  setConn("connecting", "connecting…");
  es = new EventSource("/api/events");  // the UI cookie (POST /api/session) authenticates it
  // "live" only once the full state has arrived (the stream's first event), not at the bare connect
  es.addEventListener("open", () => { retryMs = 1000; setConn("syncing", "syncing…"); });
  es.addEventListener("state", (e) => { applyState(JSON.parse(e.data)); setConn("live", "live"); });
  es.addEventListener("call", (e) => onCall(JSON.parse(e.data)));
  es.addEventListener("result", (e) => onResult(JSON.parse(e.data)));
  es.addEventListener("call_removed", (e) => { S.calls.delete(JSON.parse(e.data).call_id); dirty = true; });
  es.addEventListener("alert", (e) => onAlert(JSON.parse(e.data)));
  es.addEventListener("upstream", (e) => { S.upstream = JSON.parse(e.data); dirty = true; });
  es.addEventListener("error", () => {
    if (es.readyState === EventSource.CONNECTING) { setConn("reconnecting", "reconnecting…"); return; }
    // closed for good (daemon restarting, or 401): check /api/state, then open a new stream
    setConn("down", "disconnected: retrying");
    es.close();
    setTimeout(start, retryMs);
    retryMs = Math.min(retryMs * 2, 15000);
  });
}

async function start() {
  let resp;
  try {
    resp = await fetch("/api/state", {headers: authHeaders(), credentials: "same-origin"});
  } catch (err) {
    setConn("down", "daemon unreachable: retrying");
    setTimeout(start, retryMs);
    retryMs = Math.min(retryMs * 2, 15000);
    return;
  }
  if (resp.status === 401) { showLogin(""); return; }
  if (!resp.ok) { setConn("down", "HTTP " + resp.status); setTimeout(start, retryMs); return; }
  applyState(await resp.json());
  connect();
}

function showLogin(error) {
  setConn("down", "token needed");
  $("#login").hidden = false;
  const err = $("#login-error");
  err.hidden = !error;
  err.textContent = error;
  $("#login-token").focus();
}

async function login() {
  const token = $("#login-token").value.trim();
  if (!token) return;
  const resp = await fetch("/api/session", {method: "POST", headers: {Authorization: "Bearer " + token},
                                            credentials: "same-origin"});
  if (resp.status === 401) { showLogin("wrong token"); return; }
  S.token = token;
  $("#login").hidden = true;
  start();
}

// ---- rendering ----------------------------------------------------------------------------------
function fmtClock(wall) {
  return new Date(wall * 1000).toLocaleTimeString([], {hour12: false});
}

function fmtDur(s) {
  s = Math.max(0, Math.floor(s));
  const m = Math.floor(s / 60);
  return m + ":" + String(s % 60).padStart(2, "0");
}

function fmtP(p) {
  return p === null || p === undefined ? "–" : p.toFixed(3);
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function callCard(c) {
  let card = document.getElementById("call-" + c.call_id);
  if (!card) {
    card = el("article", "call");
    card.id = "call-" + c.call_id;
    card.dataset.callId = c.call_id;
    const head = el("div", "call-head");
    head.append(el("span", "badge verdict"), el("span", "call-id mono", c.call_id), el("span", "ingest pill", c.ingest),
                el("span", "times dim"), el("span", "meta dim"), el("span", "spacer"), el("span", "state"));
    card.append(head, el("div", "legs"));
  }
  return card;
}

function legRow(card, leg) {
  const legs = card.querySelector(".legs");
  let row = legs.querySelector(`[data-leg="${CSS.escape(leg.leg)}"]`);
  if (!row) {
    row = el("div", "leg");
    row.dataset.leg = leg.leg;
    const info = el("div", "leg-info");
    info.append(el("span", "leg-name mono", leg.leg), el("span", "badge verdict"), el("span", "codec dim"),
                el("span", "nums"));
    const canvas = el("canvas", "chart");
    canvas.height = 64;
    row.append(info, canvas);
    legs.append(row);
  }
  return row;
}

function render() {
  dirty = false;
  const now = (Date.now() + S.skewMs) / 1000;
  const list = $("#calls");
  // active first (newest first), then ended/finished (newest first)
  const calls = [...S.calls.values()].sort((a, b) =>
    (a.state === "active" ? 0 : 1) - (b.state === "active" ? 0 : 1) || b.started_at - a.started_at);
  const keep = new Set();
  let active = 0, legsActive = 0, spoofed = 0;
  for (const c of calls) {
    const card = callCard(c);
    keep.add(card);
    card.dataset.verdict = c.verdict;
    card.dataset.state = c.state;
    if (c.state === "active") { active += 1; legsActive += c.legs.filter((l) => !l.closed).length; }
    if (c.verdict === "spoofed") spoofed += 1;
    const b = card.querySelector(".call-head .verdict");
    b.textContent = VERDICT_TEXT[c.verdict];
    b.dataset.verdict = c.verdict;
    const end = c.ended_at || now;
    card.querySelector(".times").textContent = `${fmtClock(c.started_at)} · ${fmtDur(end - c.started_at)}`;
    const meta = Object.entries(c.metadata || {}).filter(([, v]) => v !== c.call_id)
      .map(([k, v]) => `${k}=${v}`).join("  ");
    card.querySelector(".meta").textContent = meta;
    const st = card.querySelector(".state");
    st.textContent = c.state === "active" ? "● live" : c.state === "ended" ? "ended · final results…"
      : `ended · ${c.outcome}${c.end_reason ? " (" + c.end_reason + ")" : ""}`;
    st.dataset.state = c.state;
    const rows = new Set();
    for (const leg of c.legs) {
      const row = legRow(card, leg);
      rows.add(row);
      row.dataset.verdict = leg.verdict;
      row.dataset.closed = String(leg.closed);
      const lb = row.querySelector(".verdict");
      lb.textContent = VERDICT_TEXT[leg.verdict];
      lb.dataset.verdict = leg.verdict;
      row.querySelector(".codec").textContent = `${leg.codec} ${leg.rate / 1000} kHz${leg.analysed ? "" : " · NOT ANALYSED"}`;
      row.querySelector(".nums").innerHTML = "";
      row.querySelector(".nums").append(
        el("span", "dim", "last "), el("b", "last", fmtP(leg.last_posterior)),
        el("span", "dim", " max "), el("b", "max", fmtP(leg.max_posterior)),
        el("span", "dim", ` · ${leg.results} results`));
      drawChart(row.querySelector("canvas"), leg, c, now);
    }
    for (const row of [...card.querySelectorAll(".leg")]) if (!rows.has(row)) row.remove();
    list.append(card);  // keeps the sort order (moves existing nodes)
  }
  for (const card of [...list.children]) if (!keep.has(card)) card.remove();
  $("#no-calls").hidden = calls.length > 0;
  const hid = $("#hidden-calls");
  hid.hidden = !S.hidden;
  hid.textContent = `${S.hidden} calls not shown (the page shows a bounded number at once)`;
  $("#n-calls").textContent = active;
  $("#n-legs").textContent = legsActive;
  $("#n-spoofed").textContent = spoofed;
  $("#n-alerts").textContent = S.alerts.length;
  $("#threshold").textContent = S.threshold.toFixed(2);
  renderUpstream();
  renderAlerts();
  renderWhip();
}

function drawChart(canvas, leg, call, now) {
  const dpr = window.devicePixelRatio || 1;
  const cssW = canvas.clientWidth || 400, cssH = 64;
  if (canvas.width !== Math.round(cssW * dpr)) { canvas.width = Math.round(cssW * dpr); canvas.height = cssH * dpr; }
  const g = canvas.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, cssW, cssH);
  const padL = 34, padR = 6, padT = 4, padB = 14;
  const w = cssW - padL - padR, h = cssH - padT - padB;
  const elapsed = (call.ended_at || now) - call.started_at;
  const lastEnd = leg.points.reduce((m, p) => Math.max(m, p[2]), 0);
  const span = Math.max(10, elapsed, lastEnd);
  const x = (t) => padL + (t / span) * w;
  const y = (p) => padT + (1 - p) * h;
  g.fillStyle = "#10161d";
  g.fillRect(padL, padT, w, h);
  g.font = "10px system-ui, sans-serif";
  g.fillStyle = "#7d8b99";
  g.textAlign = "right";
  g.fillText("1", padL - 4, padT + 8);
  g.fillText("0", padL - 4, padT + h);
  g.save(); g.translate(9, padT + h / 2); g.rotate(-Math.PI / 2); g.textAlign = "center";
  g.fillText("p(spoof)", 0, 0); g.restore();
  const step = [5, 10, 15, 30, 60, 120, 300, 600, 1200].find((s) => span / s <= 8) || 1800;
  g.strokeStyle = "#1e2a35";
  for (let t = 0; t <= span; t += step) {
    g.beginPath(); g.moveTo(x(t), padT); g.lineTo(x(t), padT + h); g.stroke();
    g.textAlign = t === 0 ? "left" : x(t) > padL + w - 12 ? "right" : "center";
    g.fillText(t < 60 ? t + "s" : fmtDur(t), x(t), cssH - 2);
  }
  g.strokeStyle = "#e0a526"; g.setLineDash([4, 3]);
  g.beginPath(); g.moveTo(padL, y(S.threshold)); g.lineTo(padL + w, y(S.threshold)); g.stroke();
  g.setLineDash([]);
  for (const [level, s, e, p, label] of leg.points) {
    const spoof = label === "spoofed" && p >= S.threshold;
    if (level === "s") {
      g.fillStyle = spoof ? "rgba(239,68,68,0.85)" : "rgba(52,199,120,0.75)";
      const x0 = x(s), x1 = Math.max(x(e) - 1, x0 + 1);
      const top = Math.min(y(p), padT + h - 3);  // a bonafide segment near 0 stays visible
      g.fillRect(x0, top, x1 - x0, padT + h - top);
    } else {
      g.strokeStyle = spoof ? "#ff9b9b" : "#9fe3bd"; g.lineWidth = 2;
      g.beginPath(); g.moveTo(x(s), y(p)); g.lineTo(x(e), y(p)); g.stroke();
      g.lineWidth = 1;
    }
  }
  if (call.state === "active") {
    g.strokeStyle = "#5b6b7a";
    g.beginPath(); g.moveTo(x(elapsed), padT); g.lineTo(x(elapsed), padT + h); g.stroke();
  }
}

function renderUpstream() {
  const u = S.upstream;
  const e = $("#upstream");
  if (!u) return;
  e.dataset.up = String(u.up);
  e.dataset.simulated = String(u.simulated);
  e.textContent = `upstream ${u.simulated ? "SIMULATED" : u.target} · ${u.up ? "up" : "DEGRADED"}`;
  e.title = `${u.target}${u.detail ? " — " + u.detail : ""}`;
  $("#sim-banner").hidden = !u.simulated;
  const b = $("#up-banner");
  b.hidden = u.up;
  b.textContent = u.up ? "" : `Upstream degraded since ${u.since ? fmtClock(u.since) : "?"}: ${u.detail}. ` +
    "Calls are accepted; results are missing or late until it recovers.";
}

function endpointLabel(d) {
  try { return new URL(d.url).host; } catch (err) { return d.endpoint; }
}

function renderAlerts() {
  // one <tbody> per event: its summary row, then a row with its delivery state per endpoint
  const table = $("#alerts");
  for (const old of [...table.tBodies]) old.remove();
  for (const a of S.alerts) {
    const tb = el("tbody", "ev ev-" + a.type.replace(/\./g, "-"));
    tb.dataset.eventId = a.event_id;
    tb.dataset.type = a.type;
    tb.title = a.event_id + (a.detail ? " · " + a.detail : "") + (a.simulated ? " · simulated" : "");
    const shortId = a.call_id && a.call_id.length > 14 ? "…" + a.call_id.slice(-12) : a.call_id;
    const who = a.call_id ? shortId + (a.leg ? " / " + a.leg : "") : a.detail;
    const tr = el("tr", "ev-main");
    tr.append(el("td", "mono dim", fmtClock(a.at)), el("td", "type", EVENT_TEXT[a.type] || a.type),
              el("td", "mono who", who), el("td", "num", fmtP(a.posterior)));
    const dr = el("tr", "ev-deliveries");
    const td = el("td", "deliveries");
    td.colSpan = 3;
    if (!a.deliveries.length) td.append(el("span", "dim small", "no endpoint: kept in the outbox"));
    for (const d of a.deliveries) {
      const p = el("span", "pill dstate");
      p.append(el("b", "", d.state + (d.attempts > 1 ? " ×" + d.attempts : "")),
               el("span", "ep", " " + endpointLabel(d)));
      p.dataset.deliveryState = d.state;
      p.dataset.endpoint = d.endpoint;
      p.title = `${d.url || d.endpoint}: ${d.state}${d.attempts ? ", " + d.attempts + " attempts" : ""}` +
        (d.detail ? " — " + d.detail : "");
      td.append(p);
    }
    dr.append(el("td"), td);
    tb.append(tr, dr);
    table.append(tb);
  }
  $("#no-alerts").hidden = S.alerts.length > 0;
  $("#no-endpoints").hidden = S.endpoints.length > 0;
}

// ---- wiring ---------------------------------------------------------------------------------------
$("#login-go").addEventListener("click", login);
$("#login-token").addEventListener("keydown", (e) => { if (e.key === "Enter") login(); });

function frame() {
  // one bad render must not stop every later one: the loop is re-armed first
  requestAnimationFrame(frame);
  if (dirty) render();
}
// Start once every script of the page has run (trywhip.js comes after this one and render() uses it):
// a frame may otherwise fire between the two scripts on a busy machine.
document.addEventListener("DOMContentLoaded", () => {
  setInterval(() => { dirty = true; }, 1000);  // durations and the "now" cursor move
  requestAnimationFrame(frame);
  start();
});
