// Talkgroup patches and dispatcher monitoring in the console.
//
// - The Patches panel lists the patches (GET /api/patches) with an Unpatch button each,
//   and patches two talkgroups chosen from the room list (POST /api/patches). The list is
//   reloaded on the core's patch_created / patch_removed events and after every resume.
// - Patched rooms are marked in the room list with the names they are patched with.
// - Per-talkgroup volume: the room list's sliders set the gain at which the console's own
//   dispatcher leg hears each room, with a priority room that ducks the others while it is
//   live (PUT /api/rooms/{room}/participants/{leg}/monitor). Without a dispatcher leg of
//   its own the console keeps the volumes locally.

const PATCH_EVENTS = new Set(["patch_created", "patch_removed", "room_created", "room_deleted"]);
const DEFAULT_DUCK_DB = 12;

const $ = (id) => document.getElementById(id);

function option(value, text) {
  const node = document.createElement("option");
  node.value = value;
  node.textContent = text;
  return node;
}

export class Patches {
  // api(path, options) -> Response; flash(text) shows an error; changed() re-renders.
  constructor({ api, flash, changed }) {
    this.api = api;
    this.flash = flash;
    this.changed = changed;
    this.patches = [];
    this.byRoom = new Map();
    this.rooms = [];
    this.leg = null;
    this.volumes = {};
    this.loading = null;
    this.setupForms();
  }

  async load() {
    if (this.loading) return this.loading;
    this.loading = (async () => {
      try {
        const response = await this.api("/api/patches");
        if (!response.ok) return;
        this.patches = (await response.json()).patches;
        this.byRoom = new Map();
        for (const patch of this.patches) {
          for (const room of patch.rooms) {
            const others = patch.names.filter((_, i) => patch.rooms[i] !== room);
            this.byRoom.set(room, [...(this.byRoom.get(room) || []), ...others]);
          }
        }
        this.changed();
      } finally {
        this.loading = null;
      }
    })();
    return this.loading;
  }

  onEvent(name) {
    if (PATCH_EVENTS.has(name)) this.load();
  }

  isPatched(roomId) {
    return this.byRoom.has(roomId);
  }

  // A room-list entry: mark it while patched, naming the rooms it is patched with.
  decorate(node, room) {
    const others = this.byRoom.get(room.id) || [];
    node.classList.toggle("patched", others.length > 0);
    let badge = node.querySelector(".room-patch");
    if (!badge) {
      badge = document.createElement("span");
      badge.className = "badge badge-patch room-patch";
      const title = node.querySelector(".room-title");
      (title || node).append(badge);
    }
    badge.hidden = others.length === 0;
    badge.textContent = others.length ? `⇄ ${others.join(", ")}` : "";
    badge.title = others.length ? `Patched with ${others.join(", ")}` : "";
  }

  render(roomsList, ownLeg, volumes) {
    this.rooms = roomsList;
    this.leg = ownLeg;
    this.volumes = volumes;
    const list = $("patches");
    if (!list) return;
    $("patches-empty").hidden = this.patches.length > 0;
    list.replaceChildren(
      ...this.patches.map((patch) => {
        const item = document.createElement("li");
        item.className = "patch";
        item.dataset.patch = patch.id;
        const label = document.createElement("span");
        label.className = "patch-names";
        label.textContent = patch.names.join(" ⇄ ");
        const unpatch = document.createElement("button");
        unpatch.type = "button";
        unpatch.className = "btn btn-small btn-quiet dispatcher-only patch-remove";
        unpatch.textContent = "Unpatch";
        unpatch.setAttribute("aria-label", `Unpatch ${patch.names.join(" and ")}`);
        unpatch.addEventListener("click", () => this.remove(patch.id));
        item.append(label, unpatch);
        return item;
      }),
    );
    for (const id of ["patch-a", "patch-b", "monitor-priority"]) {
      const select = $(id);
      if (!select || document.activeElement === select) continue;
      const chosen = select.value;
      const first = id === "monitor-priority" ? [option("", "No priority")] : [];
      select.replaceChildren(...first, ...roomsList.map((r) => option(r.id, r.name)));
      if ([...select.options].some((o) => o.value === chosen)) select.value = chosen;
      else if (id === "patch-b" && roomsList.length > 1) select.selectedIndex = 1;
    }
    const monitor = $("monitor-form");
    if (monitor) monitor.classList.toggle("no-leg", !ownLeg);
  }

  setupForms() {
    const form = $("patch-form");
    if (form) {
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        this.create([$("patch-a").value, $("patch-b").value]);
      });
    }
    const monitor = $("monitor-form");
    if (monitor) {
      monitor.addEventListener("submit", (event) => {
        event.preventDefault();
        this.applyMonitor();
      });
    }
  }

  async create(rooms) {
    const response = await this.api("/api/patches", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ rooms }),
    });
    if (!response.ok) this.flash(`patch: ${(await response.json()).error}`);
    await this.load();
  }

  async remove(id) {
    const response = await this.api(`/api/patches/${encodeURIComponent(id)}`, {
      method: "DELETE",
    });
    if (!response.ok) this.flash(`unpatch: ${(await response.json()).error}`);
    await this.load();
  }

  // A slider moved: with a dispatcher leg of its own, the console's mix follows it.
  volumeChanged() {
    if (this.leg) this.applyMonitor();
  }

  async applyMonitor() {
    const leg = this.leg;
    if (!leg) {
      this.flash("monitor: this console has no leg of its own in the selected talkgroup");
      return;
    }
    const rooms = {};
    for (const [room, percent] of Object.entries(this.volumes)) {
      if (this.rooms.some((r) => r.id === room)) rooms[room] = percent / 100;
    }
    const priority = $("monitor-priority") ? $("monitor-priority").value : "";
    const duck = Number($("monitor-duck") ? $("monitor-duck").value : DEFAULT_DUCK_DB);
    if (priority && !(priority in rooms) && priority !== leg.room) rooms[priority] = 1;
    const path =
      `/api/rooms/${encodeURIComponent(leg.room)}` +
      `/participants/${encodeURIComponent(leg.id)}/monitor`;
    const response = await this.api(path, {
      method: "PUT",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ rooms, priority_room: priority || null, duck_db: duck }),
    });
    if (!response.ok) this.flash(`monitor: ${(await response.json()).error}`);
  }
}
