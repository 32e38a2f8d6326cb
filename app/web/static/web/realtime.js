// The chanfleet WebSocket protocol (docs/protocol.md) for the browser: one small module.
//
// Connection: one route's socket. It answers heartbeats, reconnects with jittered exponential
// backoff, honours the server's `reconnect` frame (drain) and close codes, and reports a
// connection state: connecting, connected, reconnecting or offline.
// RoomClient: a chat room on top of it. It keeps the room position (`seq`), resumes with
// ?last_seq= after any disconnect, drops duplicates (by seq, and by message id for history)
// and repairs a gap by resuming again, so the page sees every stored event exactly once.
//
// Frames are handed to the page as parsed objects; rendering them (as text) is the page's job.

export const State = Object.freeze({
  CONNECTING: "connecting",
  CONNECTED: "connected",
  RECONNECTING: "reconnecting",
  OFFLINE: "offline",
});

// Close codes after which retrying cannot help (docs/protocol.md, "Close codes").
export const FINAL_CLOSES = Object.freeze({
  4001: "Not signed in: log in again.",
  4003: "Not allowed to join (private room, banned, or the room is full).",
  4004: "No such room.",
});

const SEQ_EVENTS = new Set(["message", "message_edited", "message_deleted", "reaction"]);

/** Delay before reconnect attempt `attempt` (0, 1, 2, ...): exponential, capped, jittered. */
export function backoffDelay(attempt, { base = 500, cap = 30000, random = Math.random } = {}) {
  const ceiling = Math.min(cap, base * 2 ** Math.min(attempt, 16));
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
}

/** The ws:// or wss:// URL of a route on this host, with query parameters. */
export function socketUrl(path, params = {}) {
  const url = new URL(path, window.location.href);
  url.protocol = window.location.protocol === "https:" ? "wss:" : "ws:";
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null) url.searchParams.set(key, String(value));
  }
  return url.href;
}

let clientIds = 0;

/** A correlation id for a client frame, unique on this page (echoed back as `client_id`). */
export function newClientId() {
  clientIds += 1;
  const random = Math.random().toString(36).slice(2, 10);
  return `c${Date.now().toString(36)}${random}${clientIds}`;
}

/**
 * One WebSocket route, kept connected.
 *
 * Events (CustomEvent, payload in `detail`):
 *  - "state"     {state, code, reason, final}  the connection state changed
 *  - "open"      {}                            a socket opened (a refusal may still follow)
 *  - "frame"     frame                         every parsed server frame, heartbeats included
 *  - "reconnect" frame                         the server is draining; we will come back
 */
export class Connection extends EventTarget {
  constructor(path, { params = () => ({}), idleTimeoutMs = 65000, WebSocketImpl } = {}) {
    super();
    this.path = path;
    this.params = params;
    this.idleTimeoutMs = idleTimeoutMs;
    this.WebSocketImpl = WebSocketImpl || window.WebSocket;
    this.state = State.CONNECTING;
    this.detail = {};
    this.socket = null;
    this.attempt = 0;
    this.everConnected = false;
    this.stopped = true;
    this.drain = null;
    this.retryTimer = null;
    this.idleTimer = null;
    this.waitingForUser = null;
    this.connects = 0;
    this.drains = 0; // `reconnect` frames honoured
    this.onOnline = () => this.reconnectNow();
    this.onOffline = () => {
      this.abandon();
      this.setState(State.OFFLINE, { reason: "network offline" });
    };
  }

  /** Open the socket and keep it open until stop(). */
  start() {
    if (!this.stopped) return this;
    this.stopped = false;
    window.addEventListener("online", this.onOnline);
    window.addEventListener("offline", this.onOffline);
    if (navigator.onLine === false) this.onOffline();
    else this.open();
    return this;
  }

  /** Close for good (page unload); no reconnect. */
  stop() {
    this.stopped = true;
    window.removeEventListener("online", this.onOnline);
    window.removeEventListener("offline", this.onOffline);
    this.cancelUserWait();
    clearTimeout(this.retryTimer);
    this.abandon(1000, "page closed");
    this.setState(State.OFFLINE, { reason: "stopped" });
  }

  /** Send one frame as JSON; false when not connected (the caller keeps what it meant to send). */
  send(frame) {
    const socket = this.socket;
    if (!socket || socket.readyState !== 1) return false;
    socket.send(JSON.stringify(frame));
    return true;
  }

  get isOpen() {
    return this.socket !== null && this.socket.readyState === 1;
  }

  /** Drop the socket and reconnect at once, resuming (used to repair a sequence gap). */
  restart(reason = "restart") {
    this.abandon(4000, reason);
    this.scheduleReconnect(0);
  }

  /** Reconnect immediately (the network came back, or the user returned). */
  reconnectNow() {
    if (this.stopped) return;
    this.cancelUserWait();
    clearTimeout(this.retryTimer);
    if (this.socket && this.socket.readyState <= 1) return;
    this.attempt = 0;
    this.open();
  }

  open() {
    clearTimeout(this.retryTimer);
    if (this.stopped) return;
    this.setState(this.everConnected ? State.RECONNECTING : State.CONNECTING);
    let socket;
    try {
      socket = new this.WebSocketImpl(socketUrl(this.path, this.params()));
    } catch (error) {
      this.scheduleReconnect(backoffDelay(this.attempt++));
      return;
    }
    this.socket = socket;
    this.connects += 1;
    let welcomed = false;
    socket.onopen = () => {
      this.armIdle();
      this.dispatchEvent(new CustomEvent("open", { detail: {} }));
    };
    socket.onmessage = (event) => {
      if (socket !== this.socket) return;
      this.armIdle();
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      if (!frame || typeof frame !== "object" || typeof frame.type !== "string") return;
      if (!welcomed) {
        // A refusal is accept + close with no frame, so the first frame means "really in".
        welcomed = true;
        this.attempt = 0;
        this.everConnected = true;
        this.setState(State.CONNECTED);
      }
      if (frame.type === "heartbeat") {
        this.send({ type: "pong", ts: frame.ts });
      } else if (frame.type === "reconnect") {
        // The process is draining. Leave now and come back after retry_after_ms rather than
        // wait for its 1012 close: a close that never comes must not keep us on a process
        // that is going away (daphne cannot even send 1012, see the tests).
        this.drain = frame;
        this.drains += 1;
        this.dispatchEvent(new CustomEvent("reconnect", { detail: frame }));
        this.dispatchEvent(new CustomEvent("frame", { detail: frame }));
        this.abandon(1000, "drain");
        this.closed(1012, "service restart");
        return;
      } else if (frame.type === "connected" && typeof frame.heartbeat_interval === "number") {
        this.idleTimeoutMs = Math.max(10000, frame.heartbeat_interval * 2000 + 15000);
        this.armIdle();
      }
      this.dispatchEvent(new CustomEvent("frame", { detail: frame }));
    };
    socket.onclose = (event) => {
      if (socket !== this.socket) return;
      this.socket = null;
      clearTimeout(this.idleTimer);
      this.closed(event.code, event.reason || "");
    };
    socket.onerror = () => {}; // onclose follows with the code
  }

  /** Decide what to do after a close, by its code (docs/protocol.md, "Close codes"). */
  closed(code, reason) {
    if (this.stopped) return;
    const detail = { code, reason };
    if (code in FINAL_CLOSES) {
      this.setState(State.OFFLINE, { ...detail, final: true, message: FINAL_CLOSES[code] });
      return;
    }
    if (code === 4000) {
      // Closed for inactivity: come back when the user does.
      this.setState(State.OFFLINE, { ...detail, message: "Paused while you were away." });
      this.waitForUser();
      return;
    }
    let delay;
    if (this.drain) {
      // A drain: the server chose the (jittered) delay; this is not a failure to back off from.
      delay = Math.max(0, Number(this.drain.retry_after_ms) || 0);
      this.drain = null;
      this.attempt = 0;
    } else if (code === 1008) {
      delay = Math.max(10000, backoffDelay(this.attempt++)); // frame flood: not at once
    } else if (code === 4029) {
      delay = Math.max(5000, backoffDelay(this.attempt++)); // too many connections
    } else if (code === 4503) {
      delay = 1000 + Math.random() * 4000; // channel layer failover: 1-5 s
      this.attempt += 1;
    } else {
      delay = backoffDelay(this.attempt++);
    }
    this.setState(State.RECONNECTING, { ...detail, retryInMs: Math.round(delay) });
    this.scheduleReconnect(delay);
  }

  scheduleReconnect(delay) {
    clearTimeout(this.retryTimer);
    if (this.stopped) return;
    if (this.state !== State.RECONNECTING) this.setState(State.RECONNECTING, { retryInMs: delay });
    this.retryTimer = setTimeout(() => this.open(), delay);
  }

  /** Forget the current socket without waiting for its closing handshake. */
  abandon(code = 1000, reason = "") {
    clearTimeout(this.idleTimer);
    const socket = this.socket;
    this.socket = null;
    if (socket) {
      socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
      try {
        socket.close(code, reason);
      } catch {
        socket.close();
      }
    }
  }

  /** A server that says nothing for two heartbeats is gone (a silent network drop). */
  armIdle() {
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => {
      this.abandon(4000, "no heartbeat");
      this.closed(1006, "no heartbeat");
    }, this.idleTimeoutMs);
  }

  waitForUser() {
    this.cancelUserWait();
    const back = () => {
      if (document.visibilityState === "visible") this.reconnectNow();
    };
    const events = ["pointerdown", "keydown", "focus", "visibilitychange"];
    for (const name of events) window.addEventListener(name, back);
    this.waitingForUser = () => {
      for (const name of events) window.removeEventListener(name, back);
    };
  }

  cancelUserWait() {
    if (this.waitingForUser) this.waitingForUser();
    this.waitingForUser = null;
  }

  setState(state, detail = {}) {
    const changed = state !== this.state;
    this.state = state;
    this.detail = detail;
    if (changed || detail.final || detail.message) {
      this.dispatchEvent(new CustomEvent("state", { detail: { state, ...detail } }));
    }
  }
}

/**
 * A chat room (ws/chat/<room>/) with exactly-once, in-order room events.
 *
 * Events:
 *  - "event"    frame   a stored room event (message, message_edited, message_deleted,
 *                       reaction), each once, in seq order; history messages come first
 *  - "synced"   {mode: "history"|"resume", seq, replayed}
 *  - "presence" frame   user_list, user_joined, user_left, user_status
 *  - "typing"   frame
 *  - "welcome"  frame   `connected`
 *  - "error"    frame   an `error` frame (the connection stays open)
 * plus the Connection's "state".
 */
export class RoomClient extends EventTarget {
  constructor(room, options = {}) {
    super();
    this.room = room;
    this.position = null; // seq of the last room event applied
    this.resumeFrom = null; // where the next connection starts (a drain may set it lower)
    this.applied = []; // every seq applied, in order (diagnostics and tests)
    this.dropped = 0; // duplicates dropped
    this.gaps = 0;
    this.syncs = [];
    this.user = null;
    this.userId = null;
    this.connection = new Connection(`/ws/chat/${encodeURIComponent(room)}/`, {
      ...options,
      params: () => this.resumeParams(),
    });
    this.connection.addEventListener("frame", (event) => this.onFrame(event.detail));
    this.connection.addEventListener("reconnect", (event) => this.onDrain(event.detail));
    this.connection.addEventListener("state", (event) =>
      this.dispatchEvent(new CustomEvent("state", { detail: event.detail })),
    );
  }

  start() {
    this.connection.start();
    return this;
  }

  stop() {
    this.connection.stop();
  }

  get state() {
    return this.connection.state;
  }

  resumeParams() {
    const from = this.resumeFrom ?? this.position;
    return from === null ? {} : { last_seq: from };
  }

  onDrain(frame) {
    // Resume from the server's position, or ours if it is older: never skip an event.
    if (Number.isInteger(frame.last_seq) && this.position !== null) {
      this.resumeFrom = Math.min(this.position, frame.last_seq);
    }
  }

  /** Send a client frame with a fresh `id`; returns the id, or null when not connected. */
  send(type, fields = {}) {
    const id = newClientId();
    return this.connection.send({ type, ...fields, id }) ? id : null;
  }

  onFrame(frame) {
    const emit = (name, detail = frame) => this.dispatchEvent(new CustomEvent(name, { detail }));
    switch (frame.type) {
      case "connected":
        this.user = frame.user;
        this.userId = frame.user_id;
        emit("welcome");
        return;
      case "history_end":
        this.resumeFrom = null;
        this.position = frame.seq;
        this.syncs.push({ mode: "history", seq: frame.seq });
        emit("synced", { mode: "history", seq: frame.seq, replayed: 0 });
        return;
      case "resume_end":
        this.resumeFrom = null;
        if (this.position !== null && frame.seq > this.position) {
          this.repairGap(frame.seq);
          return;
        }
        this.syncs.push({ mode: "resume", seq: frame.seq, replayed: frame.replayed });
        emit("synced", { mode: "resume", seq: frame.seq, replayed: frame.replayed });
        return;
      case "user_list":
      case "user_joined":
      case "user_left":
      case "user_status":
        emit("presence");
        return;
      case "typing":
        emit("typing");
        return;
      case "error":
        emit("error");
        return;
      default:
        if (SEQ_EVENTS.has(frame.type)) this.onRoomEvent(frame);
    }
  }

  onRoomEvent(frame) {
    const emit = () => this.dispatchEvent(new CustomEvent("event", { detail: frame }));
    if (frame.history || !Number.isInteger(frame.seq)) {
      // History: each message in its current state, without seq. A second history (after a
      // reconnect that had no position yet) repeats messages: the page updates them by id.
      emit();
      return;
    }
    if (this.position !== null && frame.seq <= this.position) {
      this.dropped += 1; // seen already (replayed twice, or a retried broadcast)
      return;
    }
    if (this.position !== null && frame.seq > this.position + 1) {
      this.repairGap(frame.seq);
      return;
    }
    this.position = frame.seq;
    this.applied.push(frame.seq);
    if (this.applied.length > 5000) this.applied.splice(0, this.applied.length - 5000);
    emit();
  }

  /** Events are missing before `seq`: reconnect and resume from the last one applied. */
  repairGap(seq) {
    this.gaps += 1;
    this.resumeFrom = this.position;
    this.connection.restart(`gap before ${seq}`);
  }
}
