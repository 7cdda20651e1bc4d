// The dispatcher console: socket.io signalling (/rooms, /presence), the floor (PTT), the
// unit map, emergency alerts and recordings. Plain ES modules, no build step.
//
// Consistency: after connecting, the console calls `resume` with the last (epoch, seq) it
// applied and gets either the missed events or a full snapshot; live events are applied
// once each, in seq order, and a gap or a new epoch makes it resume again.

/* global io */

import { AlertState, ConsoleState, FloorState } from "./state.js";
import { UnitMap } from "./map.js";
import { Tones } from "./tones.js";
import { WebRtcMedia } from "./webrtc.js";
import { CameraConsole } from "./cameras.js";
import { Patches } from "./patches.js";
import { Calls } from "./calls.js";

const KIND = {
  sip: { icon: "i-phone", label: "SIP phone" },
  trunk: { icon: "i-handset", label: "PTT handset" },
  webrtc: { icon: "i-browser", label: "Browser" },
  camera: { icon: "i-camera", label: "Camera" },
  node: { icon: "i-node", label: "Node" },
  rtp: { icon: "i-rtp", label: "RTP leg" },
};
const LOG_LENGTH = 80;
const ACK_TIMEOUT_MS = 5000;
const DENIED_SHOWN_MS = 2500;
const DEFAULT_VOLUME = 80;
const AUTH_ERRORS = [
  "authentication required",
  "token is invalid",
  "token has expired",
  "token has an unknown role",
];
const STORE_TOKEN = "ucb_token";
const STORE_SELECTED = "ucb_selected_room";
const STORE_VOLUMES = "ucb_volumes";

// ------------------------------------------------------------------- helpers
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function icon(id, extra = "") {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", `icon ${extra}`.trim());
  svg.setAttribute("aria-hidden", "true");
  const use = document.createElementNS("http://www.w3.org/2000/svg", "use");
  use.setAttribute("href", `#${id}`);
  svg.append(use);
  return svg;
}

// Reuse DOM nodes by key so that focus and slider drags survive re-renders.
function reconcile(container, items, keyOf, create, update) {
  const existing = new Map([...container.children].map((node) => [node.dataset.key, node]));
  let previous = null;
  for (const item of items) {
    const key = String(keyOf(item));
    let node = existing.get(key);
    if (node) existing.delete(key);
    else {
      node = create(item);
      node.dataset.key = key;
    }
    update(node, item);
    const expected = previous ? previous.nextSibling : container.firstChild;
    if (node !== expected) container.insertBefore(node, expected);
    previous = node;
  }
  for (const node of existing.values()) node.remove();
}

const clockTime = (seconds) => new Date(seconds * 1000).toISOString().slice(11, 19);

function loadJSON(key, fallback) {
  try {
    return JSON.parse(localStorage.getItem(key)) ?? fallback;
  } catch {
    return fallback;
  }
}

// --------------------------------------------------------------------- state
const app = {
  token: sessionStorage.getItem(STORE_TOKEN),
  user: null,
  role: null,
  epoch: null,
  seq: null,
  state: new ConsoleState(),
  resuming: false,
  pending: [],
  selected: localStorage.getItem(STORE_SELECTED),
  volumes: loadJSON(STORE_VOLUMES, {}),
  log: [],
  ptt: { active: false, room: null, outcome: null, reason: "", position: null, shownUntil: 0 },
  options: { override: false, emergency: false },
  recordings: [],
  playing: null,
  conn: "connecting",
};
const tones = new Tones();
// Patches and monitoring (patches.js): function declarations below are hoisted.
const patches = new Patches({ api, flash: (text) => flash(text), changed: () => scheduleRender() });
// Phone calls of the selected room: dial box and hang-up (calls.js).
const calls = new Calls({ act: (name, payload) => act(name, payload), api, changed: () => scheduleRender() });
let map = null;
let media = null;
// Camera cones on the map and camera tiles (cameras.js).
const cameras = new CameraConsole({ api, flash: (text) => flash(text), map: () => map, media: () => media });
let rooms = null;
let presence = null;
let renderQueued = false;

// For tests and for the curious: a read-only view of the console.
window.ucb = {
  state: () => JSON.parse(JSON.stringify(app.state)),
  get epoch() {
    return app.epoch;
  },
  get seq() {
    return app.seq;
  },
  get connection() {
    return app.conn;
  },
  get user() {
    return { user: app.user, role: app.role };
  },
  get tones() {
    return [...tones.played];
  },
  get ptt() {
    return { ...app.ptt };
  },
  get webrtc() {
    return media;
  },
  get cameras() {
    return cameras;
  },
  get calls() {
    return calls;
  },
  units: () =>
    map
      ? Object.fromEntries(
          [...map.markers].map(([id, e]) => [
            id,
            { status: e.status, lat: e.marker.getLatLng().lat, lon: e.marker.getLatLng().lng },
          ]),
        )
      : {},
};

function isDispatcher() {
  return app.role === "dispatcher" || app.role === "admin";
}

function mayTalk() {
  return isDispatcher() || app.role === "officer";
}

function selectedRoom() {
  return app.selected ? app.state.rooms[app.selected] || null : null;
}

function ownLeg(room) {
  if (!room || !app.user) return null;
  return Object.values(room.participants).find((p) => p.name === app.user) || null;
}

// A unit as dispatchers know it: its id (MCPTT ID, else the leg's id) and its alias
// (functional alias, else the leg's name).
function displayName(room, participantId, alias = "", userId = "") {
  const p = room && participantId ? room.participants[participantId] : null;
  const unit = userId || participantId || "?";
  const shown = alias || (p && (p.alias || p.name)) || "";
  return { unit, alias: shown !== unit ? shown : "" };
}

// -------------------------------------------------------------------- events
function describe(e) {
  const room = app.state.rooms[e.room];
  const roomName = room ? room.name : e.room;
  const who = () => {
    const { unit, alias } = displayName(room, e.participant, e.alias, e.user_id);
    return alias || unit;
  };
  switch (e.event) {
    case "room_created":
      return ["system", `Talkgroup ${e.name} created`];
    case "room_deleted":
      return ["system", `Talkgroup ${roomName} removed`];
    case "recording":
      return ["system", `Recording ${e.recording ? "started" : "stopped"} on ${roomName}`];
    case "joined":
      return ["system", `${e.name || e.participant} joined ${roomName}`];
    case "left":
      return ["system", `${who()} left ${roomName}`];
    case "floor_granted":
      return [
        "floor",
        `Floor granted to ${who()} on ${roomName}${e.call_type && e.call_type !== "normal" ? ` (${e.call_type})` : ""}`,
      ];
    case "floor_idle":
      return ["floor", `Floor idle on ${roomName}`];
    case "floor_queued":
      return ["floor", `${who()} queued #${e.position} on ${roomName}`];
    case "floor_denied":
      return ["floor", `Floor denied to ${who()} on ${roomName}`];
    case "floor_revoked":
      return ["floor", `Floor revoked from ${who()} on ${roomName}`];
    case "floor_released":
      return ["floor", `${who()} released the floor on ${roomName}`];
    case "emergency_raised":
      return [
        "alert",
        `${(e.alert.call_type || "emergency").toUpperCase()}: ${alertWho(e.alert)} on ${roomName}`,
      ];
    case "emergency_acknowledged":
      return [
        "alert",
        `Alert from ${alertWho(e.alert)} acknowledged by ${e.alert.acknowledged_by || "a dispatcher"}`,
      ];
    case "emergency_cleared":
      return [
        "alert",
        `Alert from ${alertWho(e.alert)} cleared by ${e.alert.cleared_by || "a dispatcher"}`,
      ];
    case "worker_died":
      return ["system", `Media worker ${e.worker} died; restarting`];
    case "worker_restarted":
      return ["system", `Media worker ${e.worker} restarted`];
    default:
      return null;
  }
}

function alertWho(alert) {
  const { unit, alias } = displayName(
    app.state.rooms[alert.room],
    alert.participant,
    alert.alias,
    alert.user_id,
  );
  return alias || unit;
}

function logEvent(e) {
  const line = describe(e);
  if (!line) return;
  app.log.unshift({ key: `${e.epoch}:${e.seq}`, time: e.time, kind: line[0], text: line[1] });
  app.log.length = Math.min(app.log.length, LOG_LENGTH);
}

function applyEvent(e) {
  app.state.apply(e);
  app.seq = e.seq;
  logEvent(e);
  if (e.event === "emergency_raised") tones.alert();
  scheduleRender();
}

function onLiveEvent(name, e) {
  if (!e || typeof e.seq !== "number") return;
  if (app.resuming) {
    app.pending.push(e);
    return;
  }
  if (e.epoch !== app.epoch || e.seq > app.seq + 1) {
    resume();
    return;
  }
  if (e.seq <= app.seq) return;
  applyEvent(e);
}

function resume() {
  if (app.resuming || !rooms || !rooms.connected) return;
  app.resuming = true;
  app.pending = [];
  setConn(app.epoch ? "resyncing" : "connecting");
  const since = app.epoch ? { epoch: app.epoch, seq: app.seq } : {};
  rooms.timeout(ACK_TIMEOUT_MS).emit("resume", since, (err, answer) => {
    app.resuming = false;
    if (err || !answer || !answer.ok) {
      setConn("offline");
      setTimeout(resume, 1000);
      return;
    }
    app.user = answer.user;
    app.role = answer.role;
    if (answer.snapshot) {
      const snap = answer.snapshot;
      app.state = ConsoleState.fromSnapshot(snap);
      app.epoch = snap.epoch;
      app.seq = snap.seq;
      if (map && snap.presence) map.replaceAll(snap.presence);
    } else {
      for (const e of answer.replay) if (e.seq > app.seq) applyEvent(e);
      app.seq = Math.max(app.seq, answer.seq);
    }
    const pending = app.pending;
    app.pending = [];
    for (const e of pending) onLiveEvent(e.event, e);
    setConn("live");
    renderIdentity();
    scheduleRender();
    loadRecordings();
    patches.load();
    calls.reset();
  });
}

// --------------------------------------------------------------- connection
function setConn(conn) {
  app.conn = conn;
  const text = {
    live: "Live",
    connecting: "Connecting…",
    resyncing: "Resynchronising…",
    offline: "Offline — reconnecting",
  }[conn];
  $("conn").className = `conn conn-${conn}`;
  $("conn-text").textContent = text;
}

function authPayload(cb) {
  cb(app.token ? { token: app.token } : {});
}

function connect() {
  rooms = io("/rooms", { auth: authPayload });
  presence = io("/presence", { auth: authPayload });
  rooms.on("connect", resume);
  rooms.on("disconnect", () => {
    setConn("offline");
    if (app.ptt.active) pttRelease();
  });
  rooms.on("connect_error", (err) => {
    if (AUTH_ERRORS.includes(err.message))
      showLogin(err.message === "authentication required" ? "" : `Sign-in failed: ${err.message}`);
    else setConn("offline");
  });
  rooms.onAny(onLiveEvent);
  rooms.onAny((name) => patches.onEvent(name));
  rooms.onAny((name, event) => cameras.onEvent(name, event));
  rooms.onAny((name, event) => calls.onEvent(name, event));
  presence.on("connect", () => {
    presence.timeout(ACK_TIMEOUT_MS).emit("subscribe", {}, (err, answer) => {
      if (!err && answer && answer.ok && map) {
        map.replaceAll(answer);
        scheduleRender();
      }
    });
  });
  presence.on("presence", (batch) => {
    if (map) map.update(batch);
    scheduleRender();
  });
}

function reconnect() {
  for (const socket of [rooms, presence]) {
    if (socket) {
      socket.disconnect();
      socket.connect();
    }
  }
}

// ---------------------------------------------------------------------- login
function showLogin(message) {
  $("login").hidden = false;
  const error = $("login-error");
  error.hidden = !message;
  error.textContent = message || "";
  $("login-token").focus();
}

function setupLogin() {
  const params = new URLSearchParams(location.search);
  if (params.has("login_error")) {
    history.replaceState(null, "", location.pathname);
    showLogin(`The login link did not work: ${params.get("login_error")}`);
  }
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("login-token").value.trim();
    if (!token) return;
    app.token = token;
    sessionStorage.setItem(STORE_TOKEN, token);
    $("login").hidden = true;
    reconnect();
  });
  $("logout").addEventListener("click", async () => {
    sessionStorage.removeItem(STORE_TOKEN);
    app.token = null;
    await fetch("/logout", { method: "POST" });
    location.replace("/console");
  });
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (app.token) headers.Authorization = `Bearer ${app.token}`;
  return fetch(path, { ...options, headers });
}

// ------------------------------------------------------------------- actions
function act(name, payload) {
  return new Promise((resolve) => {
    rooms.timeout(ACK_TIMEOUT_MS).emit(name, payload, (err, answer) => {
      const result = err ? { ok: false, error: "no answer from the server" } : answer;
      if (!result.ok) flash(`${name.replace("_", " ")}: ${result.error}`);
      resolve(result);
    });
  });
}

function flash(text) {
  app.log.unshift({
    key: `local:${Date.now()}:${Math.random()}`,
    time: Date.now() / 1000,
    kind: "alert",
    text,
  });
  scheduleRender();
}

// ----------------------------------------------------------------------- PTT
function pttPress() {
  const room = selectedRoom();
  if (app.ptt.active || !room || !mayTalk()) return;
  const options = { ...app.options };
  app.ptt = {
    active: true,
    room: room.id,
    outcome: "pending",
    reason: "",
    position: null,
    shownUntil: 0,
  };
  tones.ensure();
  if (room.mode !== "ptt") return setPttOutcome("granted"); // open room: the mic is enough
  renderPtt();
  const payload = { room: room.id };
  if (options.override) payload.override = true;
  if (options.emergency) payload.emergency = true;
  act("ptt_press", payload).then((answer) => {
    if (app.ptt.room !== room.id) return;
    if (!answer.ok) {
      setPttOutcome("denied", answer.error);
      tones.deny();
    } else if (answer.result === "granted") {
      if (app.ptt.active) setPttOutcome("granted");
      tones.permit();
    } else if (answer.result === "queued") {
      if (app.ptt.active) setPttOutcome("queued", "", answer.position);
    } else if (answer.result === "denied") {
      setPttOutcome("denied", answer.reason || `cause ${answer.cause}`);
      tones.deny();
    } else if (app.ptt.active) {
      setPttOutcome("pending");
    }
    if (options.override || options.emergency) {
      app.options = { override: false, emergency: false };
      renderOptions();
    }
  });
}

function setPttOutcome(outcome, reason = "", position = null) {
  app.ptt = {
    ...app.ptt,
    outcome,
    reason,
    position,
    shownUntil: outcome === "denied" ? Date.now() + DENIED_SHOWN_MS : 0,
  };
  renderPtt();
  if (outcome === "denied") setTimeout(renderPtt, DENIED_SHOWN_MS + 50);
}

function pttRelease() {
  if (!app.ptt.active) return;
  const roomId = app.ptt.room;
  const keep = app.ptt.outcome === "denied";
  app.ptt = { ...app.ptt, active: false, outcome: keep ? "denied" : null };
  renderPtt();
  if (app.state.rooms[roomId]?.mode === "ptt") act("ptt_release", { room: roomId });
}

function isTyping(target) {
  if (!target || !target.tagName) return false;
  if (target.isContentEditable) return true;
  if (target.tagName === "TEXTAREA") return true;
  return (
    target.tagName === "INPUT" && !["range", "checkbox", "radio", "button"].includes(target.type)
  );
}

function setupPtt() {
  const button = $("ptt");
  button.addEventListener("pointerdown", (event) => {
    if (event.button !== 0) return;
    button.setPointerCapture(event.pointerId);
    pttPress();
  });
  button.addEventListener("pointerup", pttRelease);
  button.addEventListener("pointercancel", pttRelease);
  button.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.repeat) pttPress();
  });
  button.addEventListener("keyup", (event) => {
    if (event.key === "Enter") pttRelease();
  });
  document.addEventListener("keydown", (event) => {
    if (event.code !== "Space" || isTyping(event.target) || !$("login").hidden) return;
    event.preventDefault();
    if (!event.repeat) pttPress();
  });
  document.addEventListener("keyup", (event) => {
    if (event.code !== "Space" || isTyping(event.target) || !$("login").hidden) return;
    event.preventDefault();
    pttRelease();
  });
  window.addEventListener("blur", pttRelease);
  for (const [id, key] of [
    ["opt-override", "override"],
    ["opt-emergency", "emergency"],
  ]) {
    $(id).addEventListener("click", () => {
      app.options[key] = !app.options[key];
      renderOptions();
    });
  }
}

function renderOptions() {
  $("opt-override").setAttribute("aria-pressed", String(app.options.override));
  $("opt-emergency").setAttribute("aria-pressed", String(app.options.emergency));
}

function renderPtt() {
  const room = selectedRoom();
  const button = $("ptt");
  const status = $("ptt-status");
  $("ptt-room").textContent = room ? room.name : "—";
  const leg = ownLeg(room);
  const holderIsMe = Boolean(room && leg && room.floor.holder === leg.id);
  if (media) media.sync(room, leg, app.ptt);
  let outcome = app.ptt.outcome;
  if (outcome === "denied" && !app.ptt.active && Date.now() > app.ptt.shownUntil) outcome = null;
  if (app.ptt.active && holderIsMe) outcome = "granted";
  button.disabled = !room || !mayTalk();
  button.classList.toggle("pressed", app.ptt.active);
  button.setAttribute("aria-pressed", String(app.ptt.active));
  button.setAttribute("aria-label", room ? `Push to talk on ${room.name}` : "Push to talk");
  for (const name of ["granted", "queued", "denied"])
    button.classList.toggle(name, outcome === name);
  button.classList.toggle(
    "busy",
    Boolean(room && room.floor.state !== FloorState.IDLE && !holderIsMe),
  );
  status.className = `ptt-status${outcome ? ` s-${outcome}` : ""}`;
  if (!room) status.textContent = "Select a talkgroup to talk";
  else if (!mayTalk()) status.textContent = "Observers listen only";
  else if (outcome === "granted") status.textContent = "Talking — release to end";
  else if (outcome === "queued")
    status.textContent = `Queued — position ${app.ptt.position ?? "?"}`;
  else if (outcome === "denied") status.textContent = `Denied — ${app.ptt.reason}`;
  else if (outcome === "pending") status.textContent = "Requesting the floor…";
  else if (room.mode === "ptt" && !leg) status.textContent = `You have no leg in ${room.name} yet`;
  else status.innerHTML = "Hold <kbd>Space</kbd> or the button to talk";
}

// --------------------------------------------------------------------- render
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    render();
  });
}

function render() {
  const roomsList = Object.values(app.state.rooms).sort((a, b) => a.name.localeCompare(b.name));
  if (!selectedRoom() && roomsList.length) {
    app.selected = (roomsList.find((r) => r.mode === "ptt") || roomsList[0]).id;
  }
  renderRooms(roomsList);
  const own = ownLeg(selectedRoom());
  patches.render(roomsList, own ? { id: own.id, room: app.selected } : null, app.volumes);
  renderDetail();
  calls.render(selectedRoom(), isDispatcher());
  renderPtt();
  renderAlerts();
  renderLog();
  renderStats(roomsList);
  renderMapHighlight();
}

function renderIdentity() {
  $("who-user").textContent = app.user || "—";
  $("who-role").textContent = app.role || "—";
  document.body.classList.remove("role-dispatcher", "role-officer", "role-observer", "role-admin");
  if (app.role) document.body.classList.add(`role-${app.role}`);
  $("rooms-hint").textContent = mayTalk() ? "select to talk" : "monitoring";
}

function talkerOf(room) {
  if (room.floor.holder) {
    return {
      ...displayName(room, room.floor.holder, room.floor.alias, room.floor.user_id),
      callType: room.floor.call_type,
    };
  }
  if (room.talking.length) {
    const first = displayName(room, room.talking[0], "");
    const more = room.talking.length - 1;
    return { unit: first.unit + (more ? ` +${more}` : ""), alias: first.alias, callType: "normal" };
  }
  return null;
}

function renderRooms(roomsList) {
  $("rooms-empty").hidden = roomsList.length > 0;
  const alerting = new Set(
    Object.values(app.state.alerts)
      .filter((a) => a.state === AlertState.ACTIVE)
      .map((a) => a.room),
  );
  reconcile(
    $("rooms"),
    roomsList,
    (room) => room.id,
    (room) => {
      const volume = el("input", { type: "range", min: "0", max: "100", step: "5" });
      const output = el("output");
      volume.addEventListener("input", () => {
        app.volumes[room.id] = Number(volume.value);
        localStorage.setItem(STORE_VOLUMES, JSON.stringify(app.volumes));
        output.textContent = `${volume.value}%`;
        volume.setAttribute("aria-valuetext", `${volume.value} percent`);
      });
      volume.addEventListener("change", () => patches.volumeChanged());
      const select = el("button", { type: "button", class: "room-select" });
      select.addEventListener("click", () => {
        app.selected = room.id;
        localStorage.setItem(STORE_SELECTED, room.id);
        scheduleRender();
      });
      select.append(
        el(
          "span",
          { class: "room-title" },
          el("span", { class: "room-name" }),
          el("span", { class: "badge room-mode" }),
          el("span", { class: "badge badge-rec room-rec" }, icon("i-rec"), "REC"),
        ),
        el("span", { class: "room-meta" }),
        el(
          "span",
          { class: "talker" },
          el("span", { class: "eq", "aria-hidden": "true" }, el("i"), el("i"), el("i")),
          el("span", { class: "talker-text" }),
        ),
      );
      return el(
        "li",
        { class: "room" },
        select,
        el("label", { class: "room-vol" }, icon("i-volume"), volume, output),
      );
    },
    (node, room) => {
      const selected = room.id === app.selected;
      const talker = talkerOf(room);
      const queued = room.floor.queue.length;
      const members = Object.keys(room.participants).length;
      node.classList.toggle("selected", selected);
      node.classList.toggle("live", Boolean(talker));
      node.classList.toggle("alerting", alerting.has(room.id));
      const select = node.querySelector(".room-select");
      select.setAttribute("aria-pressed", String(selected));
      select.setAttribute(
        "aria-label",
        `${room.name}, ${room.mode === "ptt" ? "push-to-talk" : "open"} talkgroup, ${members} members${talker ? `, ${talker.alias || talker.unit} talking` : ""}`,
      );
      node.querySelector(".room-name").textContent = room.name;
      const mode = node.querySelector(".room-mode");
      mode.textContent = room.mode === "ptt" ? "PTT" : "Open";
      mode.classList.toggle("badge-ptt", room.mode === "ptt");
      node.querySelector(".room-rec").hidden = !room.record;
      node.querySelector(".room-meta").textContent =
        `${members} member${members === 1 ? "" : "s"}` +
        (queued ? ` · ${queued} queued` : "") +
        (room.floor.state === FloorState.REVOKING ? " · revoking" : "");
      const talkerNode = node.querySelector(".talker");
      talkerNode.classList.toggle("on", Boolean(talker));
      const text = node.querySelector(".talker-text");
      text.replaceChildren();
      if (talker) {
        if (talker.alias)
          text.append(el("span", { class: "talker-alias", text: talker.alias }), " ");
        text.append(el("span", { class: "talker-unit mono", text: talker.unit }));
        if (talker.callType && talker.callType !== "normal")
          text.append(" ", el("span", { class: "tag tag-emergency", text: talker.callType }));
      } else {
        text.textContent = room.mode === "ptt" ? "Floor idle" : "Quiet";
      }
      const volume = node.querySelector("input[type=range]");
      const value = app.volumes[room.id] ?? DEFAULT_VOLUME;
      if (document.activeElement !== volume) volume.value = String(value);
      volume.setAttribute("aria-label", `Monitor volume, ${room.name}`);
      volume.setAttribute("aria-valuetext", `${volume.value} percent`);
      node.querySelector("output").textContent = `${volume.value}%`;
      patches.decorate(node, room);
    },
  );
}

function participantStatus(room, p) {
  const chips = [];
  if (room.floor.holder === p.id) chips.push(["tag-floor", "Floor"]);
  if (room.talking.includes(p.id)) chips.push(["tag-talking", "Talking"]);
  const queued = room.floor.queue.find((q) => q.participant === p.id);
  if (queued) chips.push(["tag-queued", `Queued #${queued.position ?? "?"}`]);
  if (p.muted) chips.push(["tag-muted", "Muted"]);
  if (p.receive_only) chips.push(["tag-ro", "Listen only"]);
  return chips;
}

function renderDetail() {
  const room = selectedRoom();
  $("detail-title").textContent = room ? room.name : "No talkgroup selected";
  $("detail-mode").textContent = room ? (room.mode === "ptt" ? "PTT" : "Open") : "";
  $("detail-mode").className = `badge${room && room.mode === "ptt" ? " badge-ptt" : ""}`;
  $("detail-rec").hidden = !(room && room.record);
  const record = $("detail-record");
  record.hidden = !room || !isDispatcher();
  if (room) {
    record.textContent = room.record ? "Stop recording" : "Record";
    record.onclick = () => act("recording", { room: room.id, recording: !room.record });
  }
  const participants = room
    ? Object.values(room.participants).sort((a, b) =>
        (a.name || a.id).localeCompare(b.name || b.id),
      )
    : [];
  $("participants-empty").hidden = participants.length > 0;
  reconcile(
    $("participants"),
    participants,
    (p) => `${room.id}/${p.id}`,
    () =>
      el(
        "tr",
        {},
        el("td", { class: "c-kind" }),
        el("td", { class: "c-unit" }),
        el("td", { class: "c-status" }),
        el("td", { class: "c-actions dispatcher-only" }),
      ),
    (row, p) => {
      const kind = KIND[p.kind] || { icon: "i-rtp", label: p.kind };
      row.classList.toggle("is-holder", room.floor.holder === p.id);
      row
        .querySelector(".c-kind")
        .replaceChildren(
          el(
            "span",
            { class: "kind", title: kind.label },
            icon(kind.icon),
            el("span", { class: "sr-only", text: kind.label }),
          ),
        );
      const unitId = (room.floor.holder === p.id && room.floor.user_id) || p.id;
      row
        .querySelector(".c-unit")
        .replaceChildren(
          el("div", { class: "unit-name", text: p.alias || p.name || p.id }),
          el("div", { class: "unit-alias mono", text: unitId }),
        );
      row
        .querySelector(".c-status")
        .replaceChildren(
          el(
            "span",
            { class: "chips" },
            ...participantStatus(room, p).map(([cls, text]) =>
              el("span", { class: `tag ${cls}`, text }),
            ),
          ),
        );
      const actions = row.querySelector(".c-actions");
      if (!isDispatcher()) {
        actions.replaceChildren();
        return;
      }
      const label = p.name || p.id;
      const buttons = [];
      if (room.mode === "ptt") {
        buttons.push(
          el("button", {
            type: "button",
            class: "btn",
            text: "Grant",
            "aria-label": `Grant the floor to ${label}`,
            disabled: room.floor.holder === p.id,
            onclick: () => act("floor_grant", { room: room.id, participant: p.id }),
          }),
        );
        buttons.push(
          el("button", {
            type: "button",
            class: "btn",
            text: p.receive_only ? "Allow talk" : "RX only",
            title: p.receive_only
              ? "Let this unit request the floor again"
              : "Receive only: this unit may listen but not talk",
            "aria-label": `${p.receive_only ? "Allow" : "Stop"} ${label} talking`,
            onclick: () =>
              act("receive_only", {
                room: room.id,
                participant: p.id,
                receive_only: !p.receive_only,
              }),
          }),
        );
      }
      buttons.push(
        el("button", {
          type: "button",
          class: "btn",
          text: p.muted ? "Unmute" : "Mute",
          "aria-label": `${p.muted ? "Unmute" : "Mute"} ${label}`,
          onclick: () =>
            act("participant_patch", { room: room.id, participant: p.id, muted: !p.muted }),
        }),
      );
      buttons.push(
        el("button", {
          type: "button",
          class: "btn btn-danger",
          text: "✕",
          title: "Remove from the talkgroup",
          "aria-label": `Remove ${label} from ${room.name}`,
          onclick: () => act("kick", { room: room.id, participant: p.id }),
        }),
      );
      const wrap = actions.firstChild;
      const focused =
        wrap && wrap.contains(document.activeElement)
          ? document.activeElement.getAttribute("aria-label")
          : null;
      actions.replaceChildren(el("div", { class: "row-actions" }, ...buttons));
      if (focused) {
        const again = [...actions.querySelectorAll("button")].find(
          (b) => b.getAttribute("aria-label") === focused,
        );
        if (again) again.focus();
      }
    },
  );
  renderFloor(room);
}

function renderFloor(room) {
  const state = $("floor-state");
  const holder = $("floor-holder");
  const revoke = $("floor-revoke");
  if (!room) {
    state.textContent = "—";
    state.className = "floor-state";
    holder.replaceChildren();
    $("floor-queue").replaceChildren();
    revoke.disabled = true;
    return;
  }
  const floor = room.floor;
  const emergency = floor.call_type === "emergency" || floor.call_type === "imminent-peril";
  state.className = `floor-state floor-${floor.state}${floor.state !== FloorState.IDLE && emergency ? " floor-emergency" : ""}`;
  state.textContent =
    room.mode !== "ptt"
      ? "Open talk"
      : { idle: "Idle", taken: "Taken", revoking: "Revoking" }[floor.state] || floor.state;
  holder.replaceChildren();
  if (floor.holder) {
    const { unit, alias } = displayName(room, floor.holder, floor.alias, floor.user_id);
    holder.append(
      el("strong", { text: alias || unit }),
      el("div", { class: "muted mono small", text: alias ? unit : "" }),
    );
    if (floor.call_type !== "normal")
      holder.append(el("span", { class: "tag tag-emergency", text: floor.call_type }));
  }
  reconcile(
    $("floor-queue"),
    floor.queue,
    (q) => q.participant,
    () => el("li"),
    (li, q) => {
      const { unit, alias } = displayName(room, q.participant, q.alias, q.user_id);
      li.textContent = alias ? `${alias} (${unit})` : unit;
      if (q.call_type !== "normal")
        li.append(" ", el("span", { class: "tag tag-emergency", text: q.call_type }));
    },
  );
  $("floor-queue-empty").hidden = floor.queue.length > 0;
  revoke.disabled = !floor.holder;
  revoke.onclick = () => act("floor_revoke", { room: room.id });
}

function renderAlerts() {
  const alerts = Object.values(app.state.alerts).sort((a, b) => (a.raised || 0) - (b.raised || 0));
  const raised = alerts.filter((a) => a.state === AlertState.ACTIVE).length;
  $("alerts-count").textContent = String(alerts.length);
  $("alerts-panel").classList.toggle("active", raised > 0);
  $("alerts-empty").hidden = alerts.length > 0;
  reconcile(
    $("alerts"),
    alerts,
    (a) => a.id,
    () => el("li", { class: "alert" }),
    (li, a) => {
      const room = app.state.rooms[a.room];
      const { unit, alias } = displayName(room, a.participant, a.alias, a.user_id);
      li.classList.toggle("acknowledged", a.state === AlertState.ACKNOWLEDGED);
      li.setAttribute(
        "aria-label",
        `${a.call_type} alert from ${alias || unit} on ${room ? room.name : a.room}, ${a.state}`,
      );
      const sub = `${room ? room.name : a.room} · ${a.raised ? clockTime(a.raised) : ""} · ${a.state === AlertState.ACKNOWLEDGED ? `acknowledged${a.acknowledged_by ? ` by ${a.acknowledged_by}` : ""}` : a.call_type.toUpperCase()}`;
      const body = el(
        "div",
        {},
        el("div", { class: "alert-title", text: alias ? `${alias} · ${unit}` : unit }),
        el("div", { class: "alert-sub", text: sub }),
      );
      const actions = el("div", { class: "alert-actions dispatcher-only" });
      if (a.state === AlertState.ACTIVE) {
        actions.append(
          el("button", {
            type: "button",
            class: "btn btn-danger btn-small",
            text: "Acknowledge",
            "aria-label": `Acknowledge the alert from ${alias || unit}`,
            onclick: () => act("emergency_ack", { alert: a.id }),
          }),
        );
      }
      actions.append(
        el("button", {
          type: "button",
          class: "btn btn-small",
          text: "Clear",
          "aria-label": `Clear the alert from ${alias || unit}`,
          onclick: () => act("emergency_clear", { alert: a.id }),
        }),
      );
      const focused = li.contains(document.activeElement)
        ? document.activeElement.textContent
        : null;
      li.replaceChildren(icon("i-alert"), body, actions);
      if (focused) {
        const again =
          [...actions.querySelectorAll("button")].find((b) => b.textContent === focused) ||
          actions.querySelector("button");
        if (again) again.focus();
      }
    },
  );
}

function renderLog() {
  reconcile(
    $("log"),
    app.log,
    (line) => line.key,
    (line) =>
      el(
        "li",
        { class: `ev-${line.kind}` },
        el("time", { text: clockTime(line.time) }),
        el("span", { text: line.text }),
      ),
    () => {},
  );
  $("seq-info").textContent = app.epoch ? `seq ${app.seq}` : "";
}

function renderStats(roomsList) {
  $("stat-rooms").textContent = String(roomsList.length);
  $("stat-units").textContent = String(map ? map.markers.size : 0);
  $("stat-talking").textContent = String(roomsList.filter((r) => talkerOf(r)).length);
  const alerts = Object.values(app.state.alerts).filter(
    (a) => a.state === AlertState.ACTIVE,
  ).length;
  $("stat-alerts").textContent = String(alerts);
  $("stat-alerts-wrap").classList.toggle("active", alerts > 0);
}

function renderMapHighlight() {
  if (!map) return;
  const talking = { ids: [], aliases: [] };
  const alarm = { ids: [], aliases: [] };
  const add = (into, room, id, alias, userId) => {
    if (!id) return;
    const p = room ? room.participants[id] : null;
    into.ids.push(...[id, userId, p && p.name].filter(Boolean));
    into.aliases.push(...[alias, p && p.alias, p && p.name].filter(Boolean));
  };
  for (const room of Object.values(app.state.rooms)) {
    add(talking, room, room.floor.holder, room.floor.alias, room.floor.user_id);
    for (const id of room.talking) add(talking, room, id, "", "");
  }
  // A unit stays in alarm until its alert is cleared, acknowledged or not.
  for (const alert of Object.values(app.state.alerts)) {
    add(alarm, app.state.rooms[alert.room], alert.participant, alert.alias, alert.user_id);
  }
  map.setHighlight(
    { ids: [...new Set(talking.ids)], aliases: [...new Set(talking.aliases)] },
    { ids: [...new Set(alarm.ids)], aliases: [...new Set(alarm.aliases)] },
  );
}

// ----------------------------------------------------------------- recordings
async function loadRecordings() {
  if (!isDispatcher()) {
    $("recordings").replaceChildren();
    $("recordings-empty").textContent = "Recordings are for dispatchers.";
    $("recordings-empty").hidden = false;
    return;
  }
  const response = await api("/api/recordings");
  if (!response.ok) return;
  const { recordings } = await response.json();
  app.recordings = recordings.sort((a, b) => String(b.started).localeCompare(String(a.started)));
  $("recordings-empty").textContent = "No recordings.";
  $("recordings-empty").hidden = app.recordings.length > 0;
  reconcile(
    $("recordings"),
    app.recordings,
    (r) => r.id,
    (r) => {
      const play = el(
        "button",
        {
          type: "button",
          class: "btn",
          "aria-label": `Play the recording of ${r.room} from ${r.started || "unknown time"}`,
        },
        icon("i-play"),
      );
      play.addEventListener("click", () => playRecording(r));
      return el(
        "li",
        {},
        play,
        el("div", {}, el("div", { class: "rec-room" }), el("div", { class: "rec-when" })),
        el("span", { class: "rec-len mono small" }),
      );
    },
    (li, r) => {
      li.classList.toggle("playing", app.playing === r.id);
      li.querySelector(".rec-room").textContent = r.room;
      li.querySelector(".rec-when").textContent = r.started
        ? new Date(r.started).toLocaleString()
        : "—";
      li.querySelector(".rec-len").textContent = r.duration_s
        ? `${Math.floor(r.duration_s / 60)}:${String(Math.round(r.duration_s % 60)).padStart(2, "0")}`
        : "…";
    },
  );
}

async function playRecording(recording) {
  app.playing = recording.id;
  const audio = $("audio");
  $("player").hidden = false;
  $("player-title").textContent =
    `${recording.room} · ${recording.started ? new Date(recording.started).toLocaleString() : ""}`;
  const [file, bursts] = await Promise.all([
    api(`/api/recordings/${encodeURIComponent(recording.id)}`),
    recording.has_bursts ? api(`/api/recordings/${encodeURIComponent(recording.id)}/bursts`) : null,
  ]);
  if (!file.ok) {
    flash(`Cannot play ${recording.room}: ${file.status}`);
    return;
  }
  if (audio.src) URL.revokeObjectURL(audio.src);
  audio.src = URL.createObjectURL(await file.blob());
  const lines =
    bursts && bursts.ok
      ? (await bursts.text())
          .split("\n")
          .filter(Boolean)
          .map((line) => JSON.parse(line))
      : [];
  drawTimeline(lines, recording.duration_s || Math.max(1, ...lines.map((b) => b.end_offset_s)));
  audio.play().catch(() => {});
  loadRecordings();
}

function drawTimeline(bursts, duration) {
  const svg = $("timeline");
  const width = 1000;
  svg.setAttribute("viewBox", `0 0 ${width} 26`);
  svg.replaceChildren();
  const ns = "http://www.w3.org/2000/svg";
  for (const burst of bursts) {
    const rect = document.createElementNS(ns, "rect");
    const x = (burst.start_offset_s / duration) * width;
    rect.setAttribute("x", String(x));
    rect.setAttribute("y", "4");
    rect.setAttribute(
      "width",
      String(Math.max(2, ((burst.end_offset_s - burst.start_offset_s) / duration) * width)),
    );
    rect.setAttribute("height", "18");
    rect.setAttribute("class", `burst ${burst.call_type || ""}`);
    const title = document.createElementNS(ns, "title");
    title.textContent = `${burst.alias || burst.participant}: ${burst.start_offset_s.toFixed(1)}–${burst.end_offset_s.toFixed(1)} s`;
    rect.append(title);
    rect.addEventListener("click", () => {
      $("audio").currentTime = burst.start_offset_s;
    });
    svg.append(rect);
  }
  const cursor = document.createElementNS(ns, "line");
  cursor.setAttribute("class", "cursor");
  cursor.setAttribute("y1", "0");
  cursor.setAttribute("y2", "26");
  svg.append(cursor);
  $("audio").ontimeupdate = () => {
    const x = String(($("audio").currentTime / duration) * width);
    cursor.setAttribute("x1", x);
    cursor.setAttribute("x2", x);
  };
  svg.setAttribute(
    "aria-label",
    `${bursts.length} talk burst${bursts.length === 1 ? "" : "s"} in ${duration.toFixed(0)} s`,
  );
}

// ----------------------------------------------------------------------- boot
function tickClock() {
  $("clock").textContent = new Date().toISOString().slice(11, 19);
}

async function boot() {
  setupLogin();
  setupPtt();
  renderOptions();
  $("rec-refresh").addEventListener("click", loadRecordings);
  tickClock();
  setInterval(tickClock, 1000);
  let settings = {};
  try {
    settings = await (await fetch("/console/settings.json")).json();
  } catch {
    settings = {};
  }
  map = new UnitMap($("map"), settings);
  window.addEventListener("resize", () => map.invalidate());
  connect();
  media = await WebRtcMedia.create((name, payload) => ask(name, payload), flash);
  cameras.start();
  render();
}

function ask(name, payload) {
  return new Promise((resolve) => {
    rooms.timeout(ACK_TIMEOUT_MS).emit(name, payload, (err, answer) => {
      resolve(err ? { ok: false, error: "no answer from the server" } : answer);
    });
  });
}

boot();
