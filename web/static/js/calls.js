// Phone calls of the selected talkgroup: the SIP gateway's dial-out and hang-up.
//
// - The dial box (dispatchers) calls a SIP URI or a number into the selected room over
//   socket.io `dial` ({room, uri}); the REST twin is POST /api/rooms/{room}/calls.
// - The call list shows the room's calls (GET /api/rooms/{room}/calls, then the core's
//   `call_state` events: dialling, ringing, answered, failed, ended; inbound calls too)
//   with a Hang up button (socket.io `call_hangup` {room, call}) while a call is live.

const LIVE = new Set(["new", "incoming", "dialling", "ringing", "pin", "joining", "answered"]);
const STATE_TEXT = {
  dialling: "Dialling…",
  ringing: "Ringing",
  answered: "Connected",
  failed: "Failed",
  ended: "Ended",
  incoming: "Incoming",
  pin: "Entering PIN",
  joining: "Joining",
};
// Ended and failed calls stay listed this long, so that the dispatcher sees the outcome.
const KEEP_ENDED_MS = 60000;

const $ = (id) => document.getElementById(id);

export class Calls {
  // act(name, payload) -> Promise of the server's answer; api(path) -> Response;
  // changed() re-renders the console.
  constructor({ act, api, changed }) {
    this.act = act;
    this.api = api;
    this.changed = changed;
    this.calls = new Map(); // call id -> call (with room id)
    this.loaded = new Set(); // rooms whose call list was fetched
    this.room = null;
    this.setupForm();
  }

  setupForm() {
    const form = $("dial-form");
    if (!form) return;
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const input = $("dial-uri");
      const uri = input.value.trim();
      if (!this.room || !uri) return;
      const button = $("dial-button");
      button.disabled = true;
      try {
        const answer = await this.act("dial", { room: this.room, uri });
        if (answer.ok) {
          this.update(answer.call);
          input.value = "";
        }
      } finally {
        button.disabled = false;
      }
    });
  }

  update(call) {
    if (!call || !call.id) return;
    const known = this.calls.get(call.id) || {};
    const merged = { ...known, ...call, seen: Date.now() };
    this.calls.set(call.id, merged);
    this.changed();
  }

  onEvent(name, event) {
    if (name === "call_state") this.update({ ...event, id: event.call || event.id });
    else if (name === "room_deleted") {
      for (const [id, call] of this.calls) if (call.room === event.room) this.calls.delete(id);
      this.changed();
    }
  }

  // After a resume the list may have missed events: fetch it again when next shown.
  reset() {
    this.loaded.clear();
  }

  async load(room) {
    this.loaded.add(room);
    try {
      const response = await this.api(`/api/rooms/${encodeURIComponent(room)}/calls`);
      if (!response.ok) return; // no SIP gateway here: the list stays empty
      for (const call of (await response.json()).calls) this.update(call);
    } catch {
      this.loaded.delete(room);
    }
  }

  list(room) {
    const now = Date.now();
    return [...this.calls.values()]
      .filter((c) => c.room === room && (LIVE.has(c.state) || now - c.seen < KEEP_ENDED_MS))
      .sort((a, b) => (a.created || 0) - (b.created || 0));
  }

  render(room, dispatcher) {
    this.room = room ? room.id : null;
    const card = $("calls-card");
    if (!card) return;
    card.hidden = !room;
    if (!room) return;
    if (!this.loaded.has(room.id)) this.load(room.id);
    const calls = this.list(room.id);
    $("calls-empty").hidden = calls.length > 0;
    $("dial-form").hidden = !dispatcher;
    $("dial-button").title = `Dial into ${room.name}`;
    $("calls").replaceChildren(
      ...calls.map((call) => {
        const item = document.createElement("li");
        item.className = `call call-${call.state}`;
        item.dataset.call = call.id;
        const who = document.createElement("span");
        who.className = "call-remote";
        who.textContent = `${call.direction === "in" ? "←" : "→"} ${call.remote || "unknown"}`;
        const state = document.createElement("span");
        state.className = "call-state";
        state.textContent = STATE_TEXT[call.state] || call.state;
        if (call.state === "failed" && call.code) state.title = `${call.code} ${call.reason || ""}`;
        item.append(who, state);
        if (dispatcher && LIVE.has(call.state)) {
          const hangup = document.createElement("button");
          hangup.type = "button";
          hangup.className = "btn btn-small btn-warn call-hangup";
          hangup.textContent = "Hang up";
          hangup.setAttribute("aria-label", `Hang up ${call.remote || "the call"}`);
          hangup.addEventListener("click", () =>
            this.act("call_hangup", { room: room.id, call: call.id }),
          );
          item.append(hangup);
        }
        return item;
      }),
    );
  }
}
