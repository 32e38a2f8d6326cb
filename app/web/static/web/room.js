// A chat room page: history and live messages, replies, reactions, edit and delete of one's own
// messages, typing indicators and the member list with presence. All text goes in as text.

import { announce, el, formatTime, me, page, startNotifications, track } from "./common.js";
import { RoomClient, State } from "./realtime.js";

const EMOJI = ["👍", "❤️", "😂", "🎉", "😮", "👀"];
const TYPING_SEND_EVERY_MS = 3000;
const TYPING_IDLE_MS = 4000;
const TYPING_SHOW_MS = 6000;
const ERRORS = {
  rate_limited: (f) => `You are sending too fast. Try again in ${Math.ceil(f.retry_after || 1)} s.`,
  too_long: (f) => `That message is too long (at most ${f.limit} characters).`,
  empty_message: () => "The message is empty.",
  blocked_content: () => "The message was blocked by the content filter.",
  forbidden: () => "Only the author can change that message.",
  not_found: () => "That message no longer exists.",
  unavailable: () => "The service is briefly unavailable. Try again in a moment.",
  database_unavailable: (f) =>
    `The message could not be saved just now. Try again in ${Math.ceil(f.retry_after || 2)} s.`,
  broadcast_failed: () => "Saved, but the live update was delayed; it will appear shortly.",
  internal: () => "Something went wrong on the server.",
};
const RESTORE_ON = new Set(["rate_limited", "too_long", "empty_message", "blocked_content",
  "unavailable", "database_unavailable", "internal"]);

const roomName = document.getElementById("room").dataset.room;
const list = document.getElementById("messages");
const template = document.getElementById("message-template");
const input = document.getElementById("message-input");
const composer = document.getElementById("composer");
const context = document.getElementById("composer-context");
const contextText = document.getElementById("composer-context-text");
const composerStatus = document.getElementById("composer-status");
const notice = document.getElementById("room-notice");
const typingLine = document.getElementById("typing");
const memberList = document.getElementById("members");
const memberCount = document.getElementById("member-count");
const statusSelect = document.getElementById("my-status");

/** message id -> {id, seq, user, userId, content, replyTo, timestamp, edited, deleted, reactions, el} */
const messages = new Map();
const members = new Map(); // user id -> {user, status}
const typing = new Map(); // user name -> timer
const pending = new Map(); // client id -> text we sent (restored if refused)
let mode = null; // null | {kind: "reply"|"edit", id}

const client = new RoomClient(roomName);
page.room = client;
page.messages = () => [...list.querySelectorAll("li[data-message-id]")].map((li) => ({
  id: Number(li.dataset.messageId),
  seq: li.dataset.seq ? Number(li.dataset.seq) : null,
  user: li.dataset.user,
  text: li.querySelector(".msg-text").textContent,
  edited: li.dataset.edited === "true",
  deleted: li.dataset.deleted === "true",
  reactions: Object.fromEntries([...li.querySelectorAll(".reaction")].map(
    (b) => [b.dataset.emoji, Number(b.dataset.count)])),
}));

// ------------------------------------------------------------------------ rendering
function nearBottom() {
  return list.scrollHeight - list.scrollTop - list.clientHeight < 80;
}

function scrollToEnd() {
  list.scrollTop = list.scrollHeight;
}

function excerpt(text, length = 80) {
  return text.length > length ? `${text.slice(0, length - 1)}…` : text;
}

function replyLabel(replyTo) {
  const original = messages.get(replyTo);
  if (!original) return "↪ Reply to an earlier message";
  if (original.deleted) return `↪ Reply to ${original.user}: (deleted message)`;
  return `↪ Reply to ${original.user}: ${excerpt(original.content)}`;
}

function render(message) {
  const li = message.el;
  li.dataset.messageId = String(message.id);
  if (message.seq !== null) li.dataset.seq = String(message.seq);
  li.dataset.user = message.user;
  li.dataset.edited = String(message.edited);
  li.dataset.deleted = String(message.deleted);
  li.classList.toggle("mine", message.userId === me.id);
  li.classList.toggle("deleted", message.deleted);
  li.querySelector(".msg-user").textContent = message.user;
  const time = li.querySelector(".msg-time");
  time.textContent = formatTime(message.timestamp);
  time.setAttribute("datetime", message.timestamp || "");
  li.querySelector(".msg-edited").hidden = !message.edited || message.deleted;
  const text = li.querySelector(".msg-text");
  text.textContent = message.deleted ? "This message was deleted." : message.content;
  const reply = li.querySelector(".msg-reply");
  reply.hidden = message.replyTo === null || message.replyTo === undefined;
  if (!reply.hidden) reply.textContent = replyLabel(message.replyTo);
  for (const button of li.querySelectorAll(".act")) {
    const own = button.classList.contains("own");
    button.hidden = message.deleted || (own && message.userId !== me.id);
  }
  renderReactions(message);
}

function renderReactions(message) {
  const box = message.el.querySelector(".reactions");
  const buttons = [];
  for (const [emoji, users] of message.reactions) {
    if (users.size === 0 || message.deleted) continue;
    const mine = users.has(me.name);
    const names = [...users].sort().join(", ");
    buttons.push(el("button", {
      className: "reaction",
      attrs: {
        type: "button",
        "data-emoji": emoji,
        "data-count": users.size,
        "aria-pressed": mine ? "true" : "false",
        "aria-label": `${emoji} ${users.size}: ${names}${mine ? " (you; press to remove)" : ""}`,
        title: names,
      },
      children: [el("span", { text: emoji, attrs: { "aria-hidden": "true" } }),
        el("span", { className: "reaction-count", text: users.size, attrs: { "aria-hidden": "true" } })],
    }));
  }
  box.replaceChildren(...buttons);
}

function refreshReplies(id) {
  for (const message of messages.values()) {
    if (message.replyTo === id) render(message);
  }
}

/** Insert or update a message from a `message` frame (history, replay or live). */
function upsertMessage(frame) {
  const atEnd = nearBottom();
  let message = messages.get(frame.message_id);
  if (!message) {
    const li = template.content.firstElementChild.cloneNode(true);
    message = { id: frame.message_id, seq: null, reactions: new Map(), el: li };
    messages.set(message.id, message);
    // Keep the list in message-id order whatever order the frames came in.
    const after = [...list.children].find((node) => Number(node.dataset.messageId) > message.id);
    list.insertBefore(li, after || null);
  }
  if (Number.isInteger(frame.seq)) message.seq = frame.seq;
  Object.assign(message, {
    user: frame.user,
    userId: frame.user_id,
    content: frame.content ?? frame.message ?? "",
    replyTo: frame.reply_to ?? null,
    timestamp: frame.timestamp,
    edited: Boolean(frame.is_edited),
    deleted: Boolean(frame.is_deleted),
  });
  render(message);
  refreshReplies(message.id);
  if (atEnd || frame.user_id === me.id) scrollToEnd();
}

function applyEvent(frame) {
  if (frame.type === "message") {
    upsertMessage(frame);
    if (frame.client_id && pending.has(frame.client_id) && frame.user_id === me.id) {
      pending.delete(frame.client_id);
    }
    if (!frame.history && !frame.replay && frame.user_id !== me.id) {
      clearTyping(frame.user);
    }
    return;
  }
  const message = messages.get(frame.message_id);
  if (!message) return; // an event about a message older than the loaded history
  if (frame.type === "message_edited") {
    message.content = frame.content ?? frame.message ?? "";
    message.edited = true;
  } else if (frame.type === "message_deleted") {
    message.deleted = true;
    message.content = "";
    if (mode && mode.id === message.id) leaveMode();
  } else if (frame.type === "reaction") {
    const users = message.reactions.get(frame.emoji) || new Set();
    if (frame.action === "remove") users.delete(frame.user);
    else users.add(frame.user);
    message.reactions.set(frame.emoji, users);
  }
  render(message);
  if (frame.type !== "reaction") refreshReplies(message.id);
}

// ------------------------------------------------------------------------ members and typing
function renderMembers() {
  const sorted = [...members.entries()].sort((a, b) => a[1].user.localeCompare(b[1].user));
  memberList.replaceChildren(...sorted.map(([id, member]) => el("li", {
    attrs: { "data-user": member.user, "data-status": member.status, "data-testid": "member" },
    children: [
      el("span", { className: `dot status-${member.status}`, attrs: { "aria-hidden": "true" } }),
      el("span", { className: "member-name", text: member.user }),
      Number(id) === me.id ? el("span", { className: "muted", text: " (you)" }) : null,
      el("span", { className: "member-status", text: member.status }),
    ],
  })));
  memberCount.textContent = `(${members.size})`;
}

function onPresence(frame) {
  if (frame.type === "user_list") {
    members.clear();
    for (const entry of frame.users || []) {
      members.set(entry.user_id, { user: entry.user, status: entry.status || "online" });
    }
    if (members.has(me.id)) statusSelect.value = members.get(me.id).status;
  } else if (frame.type === "user_joined") {
    if (!members.has(frame.user_id)) {
      members.set(frame.user_id, { user: frame.user, status: "online" });
      announce(`${frame.user} joined`);
    }
  } else if (frame.type === "user_left") {
    members.delete(frame.user_id);
    clearTyping(frame.user);
    announce(`${frame.user} left`);
  } else if (frame.type === "user_status") {
    const member = members.get(frame.user_id);
    if (member) member.status = frame.status;
  }
  renderMembers();
}

function renderTyping() {
  const names = [...typing.keys()].sort();
  let text = "";
  if (names.length === 1) text = `${names[0]} is typing…`;
  else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
  else if (names.length > 2) text = "Several people are typing…";
  typingLine.textContent = text;
}

function clearTyping(user) {
  clearTimeout(typing.get(user));
  typing.delete(user);
  renderTyping();
}

function onTyping(frame) {
  if (frame.user_id === me.id) return;
  clearTimeout(typing.get(frame.user));
  typing.delete(frame.user);
  if (frame.is_typing) {
    typing.set(frame.user, setTimeout(() => clearTyping(frame.user), TYPING_SHOW_MS));
  }
  renderTyping();
}

let typingSentAt = 0;
let typingIdle = null;

function typingStopped() {
  clearTimeout(typingIdle);
  if (typingSentAt) client.send("typing", { is_typing: false });
  typingSentAt = 0;
}

input.addEventListener("input", () => {
  resizeInput();
  if (!input.value.trim() || mode?.kind === "edit") {
    if (typingSentAt) typingStopped();
    return;
  }
  const now = Date.now();
  if (now - typingSentAt > TYPING_SEND_EVERY_MS && client.send("typing", { is_typing: true })) {
    typingSentAt = now;
  }
  clearTimeout(typingIdle);
  typingIdle = setTimeout(typingStopped, TYPING_IDLE_MS);
});

function resizeInput() {
  input.style.height = "auto";
  input.style.height = `${Math.min(input.scrollHeight, 160)}px`;
}

// ------------------------------------------------------------------------ composing
function setStatus(text, kind = "") {
  composerStatus.textContent = text;
  composerStatus.className = `form-status ${kind}`;
}

function enterMode(kind, id) {
  const message = messages.get(id);
  if (!message || message.deleted) return;
  mode = { kind, id };
  context.hidden = false;
  context.dataset.mode = kind;
  if (kind === "edit") {
    contextText.textContent = "Editing your message";
    input.value = message.content;
  } else {
    contextText.textContent = `Replying to ${message.user}: ${excerpt(message.content, 60)}`;
  }
  resizeInput();
  input.focus();
}

function leaveMode() {
  if (mode?.kind === "edit") input.value = "";
  mode = null;
  context.hidden = true;
  delete context.dataset.mode;
  resizeInput();
}

document.getElementById("composer-cancel").addEventListener("click", () => {
  leaveMode();
  input.focus();
});

function submit() {
  const text = input.value.trim();
  if (!text) return;
  if (client.state !== State.CONNECTED) {
    setStatus("Not connected. Your message is kept; send it again once connected.", "error");
    return;
  }
  let id;
  if (mode?.kind === "edit") {
    id = client.send("edit", { message_id: mode.id, content: text });
  } else {
    const fields = { message: text };
    if (mode?.kind === "reply") fields.reply_to = mode.id;
    id = client.send("message", fields);
  }
  if (!id) {
    setStatus("Not connected. Your message is kept; send it again once connected.", "error");
    return;
  }
  pending.set(id, text);
  typingStopped();
  setStatus("");
  input.value = "";
  leaveMode();
  input.focus();
}

composer.addEventListener("submit", (event) => {
  event.preventDefault();
  submit();
});

input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    submit();
  } else if (event.key === "Escape" && mode) {
    event.preventDefault();
    leaveMode();
  } else if (event.key === "ArrowUp" && !input.value) {
    const mine = [...messages.values()].filter((m) => m.userId === me.id && !m.deleted);
    if (mine.length) {
      event.preventDefault();
      enterMode("edit", mine[mine.length - 1].id);
    }
  }
});

// ------------------------------------------------------------------------ message actions
function closePickers(except) {
  for (const picker of list.querySelectorAll(".emoji-picker:not([hidden])")) {
    if (picker === except) continue;
    picker.hidden = true;
    picker.closest("li").querySelector('[data-action="react"]').setAttribute("aria-expanded", "false");
  }
}

function react(message, emoji) {
  const mine = message.reactions.get(emoji)?.has(me.name);
  client.send("reaction", { message_id: message.id, emoji, action: mine ? "remove" : "add" });
}

list.addEventListener("click", (event) => {
  const button = event.target.closest("button");
  if (!button || !list.contains(button)) return;
  const li = button.closest("li[data-message-id]");
  const message = li && messages.get(Number(li.dataset.messageId));
  if (!message) return;
  if (button.classList.contains("reaction")) {
    react(message, button.dataset.emoji);
    return;
  }
  if (button.dataset.emoji) {
    react(message, button.dataset.emoji);
    closePickers();
    li.querySelector('[data-action="react"]').focus();
    return;
  }
  switch (button.dataset.action) {
    case "reply":
      enterMode("reply", message.id);
      break;
    case "edit":
      enterMode("edit", message.id);
      break;
    case "react": {
      const picker = li.querySelector(".emoji-picker");
      if (!picker.childElementCount) {
        picker.append(...EMOJI.map((emoji) => el("button", {
          className: "emoji",
          text: emoji,
          attrs: { type: "button", "data-emoji": emoji, "aria-label": `React with ${emoji}` },
        })));
      }
      const opening = picker.hidden;
      closePickers(picker);
      picker.hidden = !opening;
      button.setAttribute("aria-expanded", String(opening));
      if (opening) picker.querySelector("button").focus();
      break;
    }
    case "delete":
      if (button.dataset.confirm === "1") {
        client.send("delete", { message_id: message.id });
        delete button.dataset.confirm;
        button.textContent = "Delete";
      } else {
        button.dataset.confirm = "1";
        button.textContent = "Confirm delete";
        setTimeout(() => {
          if (button.dataset.confirm === "1") {
            delete button.dataset.confirm;
            button.textContent = "Delete";
          }
        }, 4000);
      }
      break;
    default:
  }
});

list.addEventListener("keydown", (event) => {
  if (event.key === "Escape") {
    const open = list.querySelector(".emoji-picker:not([hidden])");
    if (open) {
      closePickers();
      open.closest("li").querySelector('[data-action="react"]').focus();
    }
  }
});

statusSelect.addEventListener("change", () => {
  if (client.send("status", { status: statusSelect.value })) {
    const member = members.get(me.id);
    if (member) {
      member.status = statusSelect.value;
      renderMembers();
    }
  }
});

// ------------------------------------------------------------------------ the connection
client.addEventListener("event", (event) => applyEvent(event.detail));
client.addEventListener("presence", (event) => onPresence(event.detail));
client.addEventListener("typing", (event) => onTyping(event.detail));
client.addEventListener("synced", (event) => {
  list.setAttribute("aria-busy", "false");
  list.dataset.position = String(event.detail.seq);
  list.dataset.synced = event.detail.mode;
  if (event.detail.mode === "history") scrollToEnd();
});
client.addEventListener("error", (event) => {
  const frame = event.detail;
  const describe = ERRORS[frame.code];
  setStatus(describe ? describe(frame) : frame.message || "The server refused that.", "error");
  const text = frame.client_id && pending.get(frame.client_id);
  if (text && RESTORE_ON.has(frame.code) && !input.value) {
    input.value = text;
    resizeInput();
  }
  if (frame.client_id) pending.delete(frame.client_id);
});
client.addEventListener("state", (event) => {
  const detail = event.detail;
  if (detail.state === State.OFFLINE && detail.final) {
    notice.hidden = false;
    notice.textContent = detail.message;
    if (detail.code === 4001) {
      notice.append(" ", el("a", { text: "Log in", attrs: { href: `/login/?next=${encodeURIComponent(location.pathname)}` } }));
    }
    input.disabled = true;
  } else if (detail.state === State.CONNECTED) {
    notice.hidden = true;
    input.disabled = false;
    typing.clear();
    renderTyping();
  }
});
list.setAttribute("aria-busy", "true");
track("room", client);
client.start();
startNotifications();
