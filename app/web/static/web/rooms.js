// The room list: create a room (POST /api/rooms) and the live-updates panel (topic `rooms`).

import { el, formatTime, page, postJson, startNotifications, track } from "./common.js";
import { Connection, newClientId } from "./realtime.js";

const ROOM_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$/;
const TOPICS = ["rooms"];

const list = document.getElementById("room-list");
const updates = document.getElementById("live-updates");
const form = document.getElementById("create-room");
const status = document.getElementById("create-status");

function roomUrl(name) {
  return `/rooms/${encodeURIComponent(name)}/`;
}

/** Add or update a room in the list, kept sorted by name. */
function showRoom(room) {
  if (!room || typeof room.name !== "string") return;
  document.getElementById("no-rooms")?.remove();
  const label = room.display_name || room.name;
  let item = [...list.children].find((li) => li.dataset.room === room.name);
  if (!item) {
    item = el("li", { attrs: { "data-room": room.name } });
    const after = [...list.children].find((li) => (li.dataset.room || "") > room.name);
    list.insertBefore(item, after || null);
  }
  item.replaceChildren(el("a", { text: label, attrs: { href: roomUrl(room.name) } }));
  if (room.description) item.append(el("p", { className: "muted", text: room.description }));
}

function showUpdate(frame) {
  const payload = frame.payload || {};
  const room = payload.room || {};
  const what = payload.event === "created" ? "created" : "updated";
  const when = new Date((Number(frame.timestamp) || Date.now() / 1000) * 1000);
  const item = el("li", {
    attrs: { "data-testid": "live-update", "data-room": room.name || "" },
    children: [
      el("time", {
        className: "muted",
        text: formatTime(when.toISOString()),
        attrs: { datetime: when.toISOString() },
      }),
      document.createTextNode(" Room "),
      room.name ? el("a", { text: room.display_name || room.name, attrs: { href: roomUrl(room.name) } })
        : el("span", { text: "?" }),
      document.createTextNode(` ${what}`),
    ],
  });
  updates.prepend(item);
  while (updates.children.length > 50) updates.lastElementChild.remove();
  if (room.name) showRoom(room);
}

// ------------------------------------------------------------------------ live updates
const live = new Connection("/ws/live-updates/");
live.addEventListener("open", () => {
  for (const topic of TOPICS) live.send({ type: "subscribe", topic, id: newClientId() });
});
live.addEventListener("frame", (event) => {
  const frame = event.detail;
  if (frame.type === "update" && TOPICS.includes(frame.topic)) showUpdate(frame);
  if (frame.type === "subscribed") page.subscribed = [...new Set([...(page.subscribed || []), frame.topic])];
});
track("live", live);
live.start();
startNotifications();

// ------------------------------------------------------------------------ create a room
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const name = form.elements.name.value.trim();
  const nameInput = form.elements.name;
  if (!ROOM_NAME.test(name)) {
    nameInput.setAttribute("aria-invalid", "true");
    status.textContent = "The name must be 1-100 letters, digits, _ . or -, starting with a letter or digit.";
    status.className = "form-status error";
    nameInput.focus();
    return;
  }
  nameInput.removeAttribute("aria-invalid");
  const button = form.querySelector('button[type="submit"]');
  button.disabled = true;
  status.className = "form-status";
  status.textContent = "Creating…";
  try {
    const { status: code, data } = await postJson("/api/rooms", {
      name,
      display_name: form.elements.display_name.value.trim() || undefined,
      description: form.elements.description.value.trim() || undefined,
      is_private: form.elements.is_private.checked,
    });
    if (code === 201) {
      window.location.assign(roomUrl(data.room.name));
      return;
    }
    status.className = "form-status error";
    status.textContent = code === 409 ? "A room with this name exists already."
      : data.message || `Could not create the room (HTTP ${code}).`;
  } catch {
    status.className = "form-status error";
    status.textContent = "Could not reach the server. Try again.";
  } finally {
    button.disabled = false;
  }
});
