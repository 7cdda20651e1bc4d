// The console's state: rooms, participants, floor, talkers and alerts, folded from the
// server's events. This mirrors ConsoleState in web/sio.py rule for rule, so that a console
// that applies the same events from the same snapshot ends with exactly the server's state.
// Applying an event twice leaves the state as applying it once.

export const FloorState = Object.freeze({ IDLE: "idle", TAKEN: "taken", REVOKING: "revoking" });
export const AlertState = Object.freeze({ ACTIVE: "active", ACKNOWLEDGED: "acknowledged" });
export const CallType = Object.freeze({
  NORMAL: "normal",
  IMMINENT_PERIL: "imminent-peril",
  EMERGENCY: "emergency",
});

function idleFloor() {
  return {
    state: FloorState.IDLE,
    holder: null,
    user_id: "",
    alias: "",
    call_type: CallType.NORMAL,
    priority: null,
    cause: null,
    queue: [],
  };
}

function participant(id, kind, name) {
  return { id, kind, name, alias: "", gain: 1.0, muted: false, receive_only: false };
}

const given = (value) => value !== undefined && value !== null;
const byPosition = (a, b) => {
  const an = a.position === null || a.position === undefined;
  const bn = b.position === null || b.position === undefined;
  if (an !== bn) return an ? 1 : -1;
  if ((a.position || 0) !== (b.position || 0)) return (a.position || 0) - (b.position || 0);
  return a.participant < b.participant ? -1 : a.participant > b.participant ? 1 : 0;
};

export class ConsoleState {
  constructor() {
    this.rooms = {};
    this.alerts = {};
  }

  static fromSnapshot(snapshot) {
    const state = new ConsoleState();
    state.rooms = structuredClone(snapshot.rooms || {});
    state.alerts = structuredClone(snapshot.alerts || {});
    return state;
  }

  toJSON() {
    return { rooms: this.rooms, alerts: this.alerts };
  }

  room(id, fields) {
    let room = this.rooms[id];
    if (!room) {
      room = {
        id,
        name: id,
        mode: "open",
        record: false,
        participants: {},
        floor: idleFloor(),
        talking: [],
      };
      this.rooms[id] = room;
    }
    for (const [key, value] of Object.entries(fields || {})) {
      if (given(value)) room[key] = value;
    }
    return room;
  }

  apply(e) {
    const handler = HANDLERS[e.event];
    if (!handler || typeof e.room !== "string") return false;
    if (e.event !== "room_created" && !(e.room in this.rooms)) return false;
    handler(this, e.room, e);
    return true;
  }
}

function floorTaken(s, roomId, e) {
  const floor = s.rooms[roomId].floor;
  Object.assign(floor, {
    state: FloorState.TAKEN,
    holder: given(e.participant) ? e.participant : null,
    user_id: e.user_id || "",
    alias: e.alias || "",
    call_type: e.call_type || CallType.NORMAL,
    priority: given(e.priority) ? e.priority : null,
    cause: null,
  });
  floor.queue = floor.queue.filter((q) => q.participant !== e.participant);
}

function floorIdle(s, roomId) {
  const queue = s.rooms[roomId].floor.queue;
  s.rooms[roomId].floor = { ...idleFloor(), queue };
}

function dequeue(s, roomId, e) {
  const floor = s.rooms[roomId].floor;
  floor.queue = floor.queue.filter((q) => q.participant !== e.participant);
}

function alertChanged(s, roomId, e) {
  if (e.alert && typeof e.alert === "object" && "id" in e.alert) {
    s.alerts[String(e.alert.id)] = structuredClone(e.alert);
  }
}

const HANDLERS = {
  room_created(s, roomId, e) {
    s.room(roomId, { name: e.name, mode: e.mode, record: e.record });
  },
  room_deleted(s, roomId) {
    delete s.rooms[roomId];
    for (const [id, alert] of Object.entries(s.alerts)) {
      if (alert.room === roomId) delete s.alerts[id];
    }
  },
  recording(s, roomId, e) {
    s.rooms[roomId].record = Boolean(e.recording);
  },
  joined(s, roomId, e) {
    const id = String(e.participant);
    const participants = s.rooms[roomId].participants;
    if (!(id in participants)) {
      participants[id] = participant(id, String(e.kind ?? ""), String(e.name ?? ""));
    }
  },
  left(s, roomId, e) {
    const room = s.rooms[roomId];
    delete room.participants[e.participant];
    room.talking = room.talking.filter((id) => id !== e.participant);
  },
  participant_updated(s, roomId, e) {
    const p = s.rooms[roomId].participants[e.participant];
    if (!p) return;
    for (const key of ["gain", "muted", "receive_only", "alias", "name"]) {
      if (given(e[key])) p[key] = e[key];
    }
  },
  talking(s, roomId, e) {
    const talking = s.rooms[roomId].talking;
    if (typeof e.participant === "string" && !talking.includes(e.participant)) {
      talking.push(e.participant);
      talking.sort();
    }
  },
  stopped_talking(s, roomId, e) {
    const room = s.rooms[roomId];
    room.talking = room.talking.filter((id) => id !== e.participant);
  },
  floor_granted: floorTaken,
  floor_taken: floorTaken,
  floor_idle: floorIdle,
  floor_released(s, roomId, e) {
    if (s.rooms[roomId].floor.holder === e.participant) floorIdle(s, roomId);
  },
  floor_revoked(s, roomId, e) {
    const floor = s.rooms[roomId].floor;
    if (floor.holder !== null) {
      floor.state = FloorState.REVOKING;
      floor.cause = given(e.cause) ? e.cause : null;
    }
  },
  floor_queued(s, roomId, e) {
    const floor = s.rooms[roomId].floor;
    const queue = floor.queue.filter((q) => q.participant !== e.participant);
    queue.push({
      participant: given(e.participant) ? e.participant : null,
      user_id: e.user_id || "",
      alias: e.alias || "",
      position: given(e.position) ? e.position : null,
      call_type: e.call_type || CallType.NORMAL,
      priority: given(e.priority) ? e.priority : null,
    });
    queue.sort(byPosition);
    floor.queue = queue;
  },
  floor_queue_cancelled: dequeue,
  floor_denied: dequeue,
  // Emergency alerts: each event carries the whole alert, as the server keeps it.
  emergency_raised: alertChanged,
  emergency_acknowledged: alertChanged,
  emergency_cleared(s, roomId, e) {
    if (e.alert && typeof e.alert === "object") delete s.alerts[String(e.alert.id)];
  },
};
