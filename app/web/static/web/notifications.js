// The notifications page: the list (get_notifications), new ones live, mark read, mark all read.

import { el, formatTime, page, startNotifications } from "./common.js";
import { newClientId } from "./realtime.js";

const PAGE_SIZE = 20;
const list = document.getElementById("notification-list");
const empty = document.getElementById("no-notifications");
const status = document.getElementById("notifications-status");
const more = document.getElementById("load-more");
const markAll = document.getElementById("mark-all-read");

const items = new Map(); // notification id -> li
const requests = new Map(); // client id -> "first" | "older"

function render(notification) {
  let li = items.get(notification.id);
  if (!li) {
    li = el("li", { className: "notification", attrs: { "data-testid": "notification" } });
    items.set(notification.id, li);
    const after = [...list.children].find((node) => Number(node.dataset.id) < notification.id);
    list.insertBefore(li, after || null);
  }
  li.dataset.id = String(notification.id);
  li.dataset.read = String(Boolean(notification.read));
  li.dataset.category = notification.category || "general";
  const heading = el("div", {
    className: "notification-head",
    children: [
      el("span", { className: `tag category-${li.dataset.category}`, text: li.dataset.category }),
      el("strong", { className: "notification-title", text: notification.title }),
      el("time", {
        className: "muted",
        text: formatTime(notification.timestamp),
        attrs: { datetime: notification.timestamp },
      }),
    ],
  });
  const children = [heading];
  if (notification.message) {
    children.push(el("p", { className: "notification-message", text: notification.message }));
  }
  if (!notification.read) {
    children.push(el("button", {
      className: "mark-read",
      text: "Mark read",
      attrs: {
        type: "button",
        "data-testid": "mark-read",
        "aria-label": `Mark “${notification.title}” read`,
      },
    }));
  } else {
    children.push(el("span", { className: "muted read-label", text: "Read" }));
  }
  li.replaceChildren(...children);
  empty.hidden = items.size > 0;
}

function markLocally(li) {
  li.dataset.read = "true";
  li.querySelector(".mark-read")?.replaceWith(el("span", { className: "muted read-label", text: "Read" }));
}

function request(kind, fields = {}) {
  const id = newClientId();
  if (connection.send({ type: "get_notifications", limit: PAGE_SIZE, ...fields, id })) {
    requests.set(id, kind);
  }
}

const connection = startNotifications();
page.notifications = connection;
connection.addEventListener("open", () => request("first"));
connection.addEventListener("frame", (event) => {
  const frame = event.detail;
  if (frame.type === "notifications_list") {
    const kind = requests.get(frame.client_id);
    requests.delete(frame.client_id);
    for (const notification of frame.notifications || []) render(notification);
    if (kind) more.hidden = (frame.notifications || []).length < PAGE_SIZE;
    empty.hidden = items.size > 0;
  } else if (frame.type === "notification") {
    render(frame);
  } else if (frame.type === "error") {
    status.textContent = frame.code === "not_found" ? "That notification no longer exists."
      : frame.message || "The server refused that.";
  }
});

list.addEventListener("click", (event) => {
  const button = event.target.closest("button.mark-read");
  if (!button) return;
  const li = button.closest("li");
  if (connection.send({ type: "mark_read", notification_id: Number(li.dataset.id), id: newClientId() })) {
    const next = li.nextElementSibling?.querySelector("button.mark-read") || markAll;
    markLocally(li);
    next.focus();
  } else {
    status.textContent = "Not connected; try again in a moment.";
  }
});

markAll.addEventListener("click", () => {
  if (connection.send({ type: "mark_all_read", id: newClientId() })) {
    for (const li of items.values()) markLocally(li);
    status.textContent = "All notifications marked read.";
  } else {
    status.textContent = "Not connected; try again in a moment.";
  }
});

more.addEventListener("click", () => {
  const ids = [...items.keys()];
  if (ids.length) request("older", { before: Math.min(...ids) });
});
