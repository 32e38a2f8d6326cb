// Shared page parts: DOM helpers (text only, never HTML), the connection indicator and the
// notifications bell in the header. Every page module imports this first.

import { Connection, State } from "./realtime.js";

/** Create an element; `text` is set with textContent, attributes with setAttribute. */
export function el(tag, { text, className, attrs = {}, children = [] } = {}) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== undefined && value !== null && value !== false) {
      node.setAttribute(name, value === true ? "" : String(value));
    }
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

export const me = {
  name: document.body.dataset.user || "",
  id: Number(document.body.dataset.userId || 0),
};

export function csrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

/** POST JSON to the API with the CSRF token; resolves to {status, data}. */
export async function postJson(url, payload) {
  const response = await fetch(url, {
    method: "POST",
    credentials: "same-origin",
    headers: {
      "Content-Type": "application/json",
      "X-CSRFToken": csrfToken(),
      Accept: "application/json",
    },
    body: JSON.stringify(payload),
  });
  let data = {};
  try {
    data = await response.json();
  } catch {
    data = {};
  }
  return { status: response.status, data };
}

export function formatTime(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  const today = new Date();
  const sameDay = date.toDateString() === today.toDateString();
  return sameDay
    ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : date.toLocaleString([], { dateStyle: "short", timeStyle: "short" });
}

/** Say something to screen readers without showing it. */
export function announce(text) {
  let region = document.getElementById("announcer");
  if (!region) {
    region = el("div", {
      className: "visually-hidden",
      attrs: { id: "announcer", "aria-live": "polite", "aria-atomic": "true" },
    });
    document.body.append(region);
  }
  region.textContent = "";
  window.setTimeout(() => {
    region.textContent = text;
  }, 50);
}

// ------------------------------------------------------------------------ page state
// The page's connections and a log of the combined state, for people (the indicator) and for
// the browser tests (window.chanfleet).
const RANK = {
  [State.OFFLINE]: 3,
  [State.RECONNECTING]: 2,
  [State.CONNECTING]: 1,
  [State.CONNECTED]: 0,
};
const LABEL = {
  [State.CONNECTED]: "Connected",
  [State.CONNECTING]: "Connecting…",
  [State.RECONNECTING]: "Reconnecting…",
  [State.OFFLINE]: "Offline",
};

export const page = {
  connections: new Map(),
  state: State.CONNECTING,
  stateLog: [],
  details: {},
};
window.chanfleet = page;

/** Track a Connection (or RoomClient) under a name; the indicator shows the worst state. */
export function track(name, source) {
  page.connections.set(name, source);
  source.addEventListener("state", (event) => {
    page.details[name] = event.detail;
    refreshIndicator();
  });
  refreshIndicator();
  return source;
}

function refreshIndicator() {
  let worst = State.CONNECTED;
  for (const source of page.connections.values()) {
    if (RANK[source.state] > RANK[worst]) worst = source.state;
  }
  if (page.connections.size === 0) worst = State.CONNECTING;
  const indicator = document.getElementById("conn-state");
  if (worst !== page.state || page.stateLog.length === 0) {
    page.state = worst;
    page.stateLog.push({ state: worst, at: Date.now() });
  }
  if (!indicator) return;
  indicator.dataset.state = worst;
  const final = Object.values(page.details).find((d) => d && d.final);
  const text = indicator.querySelector(".conn-text");
  text.textContent = LABEL[worst];
  indicator.title = final && worst === State.OFFLINE ? final.message : `Live: ${LABEL[worst]}`;
}

// Leaving the page closes its sockets on purpose: no "reconnecting" flash on navigation.
window.addEventListener("pagehide", () => {
  for (const source of page.connections.values()) source.stop();
});
window.addEventListener("pageshow", (event) => {
  if (event.persisted) for (const source of page.connections.values()) source.start();
});

// ------------------------------------------------------------------------ bell
export function setUnread(count) {
  const badge = document.getElementById("unread-count");
  const bell = document.getElementById("bell");
  if (!badge || !bell) return;
  const value = Math.max(0, Number(count) || 0);
  badge.textContent = String(value);
  badge.hidden = value === 0;
  bell.setAttribute("aria-label", `Notifications, ${value} unread`);
  bell.dataset.unread = String(value);
}

/** The notifications socket behind the bell; pages may listen to its frames too. */
export function startNotifications() {
  const connection = new Connection("/ws/notifications/");
  connection.addEventListener("frame", (event) => {
    const frame = event.detail;
    if (frame.type === "count_update") setUnread(frame.unread_count);
    if (frame.type === "notification") announce(`New notification: ${frame.title}`);
  });
  track("notifications", connection);
  connection.start();
  return connection;
}
