// Santi's store console: log in with a bearer token, then follow the agent's windows over SSE.
// No build step and no library: the map is SVG drawn from the layout and redrawn each window.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const TOKEN_KEY = "santi-token";
const PAD = 2; // metres of margin around the outline, for the labels of receivers on the walls
const VAGUE_M = 5; // an ellipse wider than this is drawn as an outline only: it would hide the rest
const state = { role: null, layout: null, layoutVersion: -1, source: null, box: null };

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function ago(t, now) {
  if (t === null || t === undefined) return "never";
  const s = Math.max(0, now - t);
  return s < 90 ? `${s.toFixed(0)} s ago` : `${(s / 60).toFixed(1)} min ago`;
}

// The token arrives once in the URL fragment (never sent to the server, so never in a log),
// is kept for this tab only, and leaves the address bar at once.
function takeToken() {
  const match = location.hash.match(/token=([^&]+)/);
  if (match) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

async function login(token) {
  const response = await fetch("/api/session", {
    method: "POST", headers: { Authorization: `Bearer ${token}` }, credentials: "same-origin" });
  if (!response.ok) return null;
  return response.json();
}

function showLogin(message) {
  $("login").hidden = false;
  $("technician").hidden = true;
  $("staff").hidden = true;
  $("logout").hidden = true;
  $("login-error").textContent = message || "";
}

async function start(token) {
  const session = token ? await login(token) : null;
  if (!session) {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin(token ? "That token was not accepted." : "");
    return;
  }
  state.role = session.role;
  $("store").textContent = session.store;
  $("role").textContent = `${session.role} view`;
  $("login").hidden = true;
  $("logout").hidden = false;
  $(session.role).hidden = false;
  if (session.role === "technician") await loadLayout();
  connect();
}

async function loadLayout() {
  const response = await fetch("/api/layout", { credentials: "same-origin" });
  if (!response.ok) return;
  state.layout = await response.json();
  state.layoutVersion = state.layout.layout_version;
  drawLayout(state.layout);
}

function connect() {
  if (state.source) state.source.close();
  const source = new EventSource("/api/stream");
  state.source = source;
  source.onmessage = (message) => {
    const data = JSON.parse(message.data);
    if (data === null) return;
    $("clock").textContent = new Date(data.t * 1000).toLocaleTimeString();
    if (state.role === "technician") renderTechnician(data); else renderStaff(data);
  };
  source.onerror = () => {
    // A closed stream (401 after a restart or an expired session): log in again with the token.
    if (source.readyState === EventSource.CLOSED) setTimeout(() => start(sessionStorage.getItem(TOKEN_KEY)), 2000);
  };
}

// -- technician view ---------------------------------------------------------------------------

function project(x, y) {
  const b = state.box;
  return [x - b.minX + PAD, b.maxY - y + PAD];
}

function points(polygon) {
  return polygon.map(([x, y]) => project(x, y).map((v) => v.toFixed(2)).join(",")).join(" ");
}

function centroid(polygon) {
  const n = polygon.length;
  return [polygon.reduce((s, p) => s + p[0], 0) / n, polygon.reduce((s, p) => s + p[1], 0) / n];
}

function drawLayout(layout) {
  const xs = layout.store.outline.map((p) => p[0]);
  const ys = layout.store.outline.map((p) => p[1]);
  state.box = { minX: Math.min(...xs), maxX: Math.max(...xs), minY: Math.min(...ys), maxY: Math.max(...ys) };
  const b = state.box;
  $("map").setAttribute("viewBox", `0 0 ${(b.maxX - b.minX + 2 * PAD).toFixed(2)} ${(b.maxY - b.minY + 2 * PAD).toFixed(2)}`);
  $("outline").innerHTML = `<polygon points="${points(layout.store.outline)}"/>`;
  $("clip-outline").setAttribute("points", points(layout.store.outline));
  $("sectors").innerHTML = layout.sectors.map((s) => {
    const [cx, cy] = project(...centroid(s.polygon));
    return `<g class="sector${s.entrance ? " entrance" : ""}" data-sector="${esc(s.id)}" data-occupancy="0">` +
      `<polygon points="${points(s.polygon)}" fill-opacity="0.04"/>` +
      `<text x="${cx.toFixed(2)}" y="${cy.toFixed(2)}">${esc(s.name)} · <tspan class="occ">0</tspan></text></g>`;
  }).join("");
  $("receivers").innerHTML = layout.receivers.map((r) => {
    const [x, y] = project(r.x, r.y);
    return `<g class="receiver silent" data-receiver="${esc(r.id)}" data-health="silent">` +
      `<title>${esc(r.id)}</title><circle cx="${x.toFixed(2)}" cy="${y.toFixed(2)}" r="0.35"/>` +
      `<text x="${x.toFixed(2)}" y="${(y - 0.5).toFixed(2)}">${esc(r.id)}</text></g>`;
  }).join("");
}

function renderTracks(tracks) {
  const parts = [];
  for (let i = 0; i < tracks.id.length; i++) {
    const [x, y] = project(tracks.x[i], tracks.y[i]);
    const sx = x.toFixed(2), sy = y.toFixed(2);
    const vague = tracks.major[i] > VAGUE_M ? " vague" : "";
    parts.push(`<g class="track${vague}" data-emitter="${esc(tracks.id[i])}" data-sector="${esc(tracks.sector[i] ?? "")}" ` +
      `data-x="${tracks.x[i]}" data-y="${tracks.y[i]}">` +
      `<ellipse cx="${sx}" cy="${sy}" rx="${Math.max(tracks.major[i], 0.05)}" ry="${Math.max(tracks.minor[i], 0.05)}" ` +
      `transform="rotate(${-tracks.angle[i]} ${sx} ${sy})"/><circle cx="${sx}" cy="${sy}" r="0.18"/></g>`);
  }
  $("tracks").innerHTML = parts.join("");
  $("track-count").textContent = String(tracks.id.length);
}

function renderTechnician(data) {
  if (data.layout_version !== state.layoutVersion) { loadLayout(); return; }
  if (!state.box) return;
  const max = Math.max(1, ...Object.values(data.occupancy));
  for (const group of document.querySelectorAll("#sectors .sector")) {
    const n = data.occupancy[group.dataset.sector] ?? 0;
    group.dataset.occupancy = String(n);
    group.querySelector(".occ").textContent = String(n);
    group.querySelector("polygon").setAttribute("fill-opacity", (0.04 + 0.4 * n / max).toFixed(3));
  }
  for (const r of data.receivers) {
    const group = document.querySelector(`#receivers [data-receiver="${CSS.escape(r.id)}"]`);
    if (group) { group.setAttribute("class", `receiver ${r.health}`); group.dataset.health = r.health; }
  }
  renderTracks(data.tracks);
  $("receivers-table").tBodies[0].innerHTML = data.receivers.map((r) =>
    `<tr data-receiver="${esc(r.id)}"><td>${esc(r.id)}${r.node_name ? ` (${esc(r.node_name)})` : ""}</td>` +
    `<td>${esc(r.kind)}</td><td class="${esc(r.health)}">${esc(r.health)}</td>` +
    `<td>${ago(r.last_heard, data.t)}</td><td>${r.rate_per_s.toFixed(1)}</td></tr>`).join("");
  $("sources-table").tBodies[0].innerHTML = data.sources.map((s) =>
    `<tr data-source="${esc(s.name)}"><td>${esc(s.name)}</td><td>${esc(s.state)}${s.last_error ? `: ${esc(s.last_error)}` : ""}</td>` +
    `<td>${s.accepted}</td><td>${s.rate_per_s.toFixed(1)}</td>` +
    `<td>${Object.entries(s.dropped).map(([k, v]) => `${esc(k)} ${v}`).join(", ") || "none"}</td></tr>`).join("");
  const drops = Object.entries(data.dropped);
  $("agent-drops").textContent = drops.length ? `Agent drops: ${drops.map(([k, v]) => `${k} ${v}`).join(", ")}` : "";
  const d = data.delivery;
  $("delivery").innerHTML = `<dt>uplink</dt><dd id="uplink-state">${esc(d.uplink)}${d.last_error ? `: ${esc(d.last_error)}` : ""}</dd>` +
    `<dt>outbox</dt><dd id="outbox-depth">${d.outbox_depth} events</dd>` +
    `<dt>oldest unsent</dt><dd>${d.oldest_unsent === null ? "none" : ago(d.oldest_unsent, data.t)}</dd>`;
  $("recent").innerHTML = d.recent.map((e) =>
    `<li>${esc(new Date(e.ts).toLocaleTimeString())} ${esc(e.type)} ${esc((e.subject || "").slice(0, 10))}` +
    `${e.sector_id ? ` → ${esc(e.sector_id)}` : ""}</li>`).join("");
}

// -- staff view --------------------------------------------------------------------------------

function renderStaff(data) {
  $("no-cards").hidden = data.cards.length > 0;
  $("cards").innerHTML = data.cards.map((c) =>
    `<article class="card" data-loyalty="${esc(c.loyalty_id)}" data-sector="${esc(c.sector_id ?? "")}">` +
    `<h3>${esc(c.loyalty_id)}</h3><p class="where">${esc(c.sector ?? c.sector_id ?? "in the store")}</p>` +
    `<p class="text">${esc(c.text)}</p>` +
    `<p class="facts">${Object.entries(c.facts).map(([k, v]) => `${esc(k)}: ${esc(v)}`).join(" · ")}</p></article>`).join("");
}

// -- start -------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    sessionStorage.setItem(TOKEN_KEY, token);
    start(token);
  });
  $("logout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    if (state.source) state.source.close();
    location.reload();
  });
  start(takeToken());
});
