// Cameras in the console: a view cone per camera on the unit map (the camera itself is a
// presence unit of kind "camera"), and a tile per opened camera with its video through the
// WebRTC gateway (`video_sources` in the offer: webrtc.js), an online/offline badge and a
// "transcoding" badge. Every open tile is a view on the server (POST/DELETE
// /api/cameras/{name}/views), which the audit log keeps: who watched which camera, when.

/* global L */

const CONE_RANGE_M = 120;
const CONE_STEPS = 12;
const EARTH_RADIUS_M = 6371008.8;
const SNAPSHOT_REFRESH_MS = 30000;
const UNIT_PREFIX = "camera:";

function conePoints(lat, lon, heading, fov) {
  // A sector of CONE_RANGE_M around the view direction (small-distance flat-earth maths).
  const points = [[lat, lon]];
  const half = Math.min(fov, 359) / 2;
  for (let i = 0; i <= CONE_STEPS; i++) {
    const bearing = ((heading - half + (i * 2 * half) / CONE_STEPS) * Math.PI) / 180;
    const dLat = (CONE_RANGE_M * Math.cos(bearing)) / EARTH_RADIUS_M;
    const dLon = (CONE_RANGE_M * Math.sin(bearing)) / (EARTH_RADIUS_M * Math.cos((lat * Math.PI) / 180));
    points.push([lat + (dLat * 180) / Math.PI, lon + (dLon * 180) / Math.PI]);
  }
  return points;
}

function badge(text, kind) {
  const el = document.createElement("span");
  el.className = `badge camera-badge camera-badge-${kind}`;
  el.textContent = text;
  return el;
}

export class CameraConsole {
  // api(path, options) -> fetch Response with the console's token; map() and media() give
  // the UnitMap and the WebRtcMedia (or null) once the console has them.
  constructor({ api, flash, map, media }) {
    this.api = api;
    this.flash = flash;
    this.getMap = map;
    this.getMedia = media;
    this.cameras = new Map();
    this.cones = new Map();
    this.tiles = new Map(); // name -> { el, view, video }
    this.panel = null;
    this.enabled = false;
    window.addEventListener("pagehide", () => this.closeAll(true));
  }

  async start() {
    const map = this.getMap();
    if (map) {
      const previous = map.onSelect;
      map.onSelect = (id) => {
        if (id.startsWith(UNIT_PREFIX)) this.open(id.slice(UNIT_PREFIX.length));
        else if (previous) previous(id);
      };
    }
    await this.load();
  }

  async load() {
    let reply;
    try {
      reply = await this.api("/api/cameras");
    } catch {
      return;
    }
    this.enabled = reply.ok;
    if (!reply.ok) return; // no camera gateway, or a role that may not see cameras
    const { cameras } = await reply.json();
    const names = new Set(cameras.map((c) => c.name));
    for (const name of [...this.cameras.keys()]) if (!names.has(name)) this.forget(name);
    for (const camera of cameras) this.upsert(camera);
  }

  upsert(camera) {
    this.cameras.set(camera.name, camera);
    this.drawCone(camera);
    this.renderTile(camera.name);
  }

  forget(name) {
    this.cameras.delete(name);
    const cone = this.cones.get(name);
    if (cone) cone.remove();
    this.cones.delete(name);
    this.close(name);
  }

  drawCone(camera) {
    const map = this.getMap();
    if (!map || camera.lat == null || camera.lon == null || camera.heading == null) return;
    const points = conePoints(camera.lat, camera.lon, camera.heading, camera.fov || 60);
    let cone = this.cones.get(camera.name);
    if (!cone) {
      cone = L.polygon(points, { className: "camera-cone", weight: 1, fillOpacity: 0.15 });
      cone.bindTooltip("", { sticky: true });
      cone.on("click", () => this.open(camera.name));
      cone.addTo(map.map);
      this.cones.set(camera.name, cone);
    } else {
      cone.setLatLngs(points);
    }
    cone.setTooltipContent(`Camera ${camera.name} (${camera.state})`);
    const el = cone.getElement && cone.getElement();
    if (el) el.dataset.camera = camera.name;
  }

  // Live events from /rooms (socket.io).
  onEvent(name, event) {
    if (!event || !this.enabled) return;
    const camera = this.cameras.get(event.camera);
    if (name === "camera_online" && camera) {
      this.upsert({ ...camera, state: "online", transcoding: Boolean(event.transcoding) });
    } else if (name === "camera_offline" && camera) {
      this.upsert({ ...camera, state: "offline", last_error: event.reason });
    } else if (name === "camera_added" && event.camera && typeof event.camera === "object") {
      this.upsert(event.camera);
    } else if (name === "camera_removed") {
      this.forget(event.camera);
    } else if (name === "gateway_restarted" && event.gateway === "camera") {
      this.load();
    }
  }

  // ---------------------------------------------------------------- tiles
  async open(name) {
    if (this.tiles.has(name) || !this.cameras.has(name)) return;
    const reply = await this.api(`/api/cameras/${encodeURIComponent(name)}/views`, { method: "POST" });
    if (!reply.ok) {
      this.flash(`Camera ${name}: ${(await reply.json().catch(() => ({}))).error || reply.status}`);
      return;
    }
    const view = await reply.json();
    const el = document.createElement("figure");
    el.className = "camera-tile";
    el.dataset.camera = name;
    this.tiles.set(name, { el, view: view.view, source: view.source, video: null, snapshot: null });
    this.ensurePanel().appendChild(el);
    this.renderTile(name);
    await this.watch();
  }

  async close(name, leaving = false) {
    const tile = this.tiles.get(name);
    if (!tile) return;
    this.tiles.delete(name);
    if (tile.snapshot) clearInterval(tile.snapshot);
    tile.el.remove();
    const path = `/api/cameras/${encodeURIComponent(name)}/views/${tile.view}`;
    this.api(path, { method: "DELETE", keepalive: leaving }).catch(() => {});
    if (!leaving) await this.watch();
  }

  closeAll(leaving) {
    for (const name of [...this.tiles.keys()]) this.close(name, leaving);
  }

  // Ask the WebRTC gateway for exactly the open tiles' sources.
  async watch() {
    const media = this.getMedia();
    if (!media) {
      for (const name of this.tiles.keys()) this.renderTile(name);
      return;
    }
    const sources = [...this.tiles.values()].map((t) => t.source);
    try {
      await media.view(sources);
    } catch (err) {
      this.flash(`Camera video: ${err.message || err}`);
    }
    this.adoptVideos();
  }

  // webrtc.js makes one <video data-source> per source; move each into its tile.
  adoptVideos() {
    const media = this.getMedia();
    let missing = false;
    for (const [name, tile] of this.tiles) {
      const video = media && media.tiles.get(tile.source);
      if (!video) {
        missing = true;
        continue;
      }
      if (video.parentElement !== tile.el) {
        tile.video = video;
        tile.el.insertBefore(video, tile.el.firstChild);
        this.renderTile(name);
      }
    }
    if (missing && this.tiles.size) setTimeout(() => this.adoptVideos(), 200);
  }

  ensurePanel() {
    if (!this.panel) {
      this.panel = document.createElement("section");
      this.panel.className = "camera-tiles";
      this.panel.setAttribute("aria-label", "Camera tiles");
      (document.getElementById("detail") || document.body).appendChild(this.panel);
    }
    return this.panel;
  }

  renderTile(name) {
    const tile = this.tiles.get(name);
    const camera = this.cameras.get(name);
    if (!tile || !camera) return;
    let caption = tile.el.querySelector("figcaption");
    if (!caption) {
      caption = document.createElement("figcaption");
      tile.el.appendChild(caption);
    }
    caption.replaceChildren();
    const title = document.createElement("strong");
    title.textContent = name;
    caption.appendChild(title);
    const online = camera.state !== "offline";
    const state = badge(online ? "online" : "offline", online ? "online" : "offline");
    state.dataset.state = online ? "online" : "offline";
    if (!online && camera.last_error) state.title = camera.last_error;
    caption.appendChild(state);
    if (camera.transcoding) caption.appendChild(badge("transcoding", "transcoding"));
    const close = document.createElement("button");
    close.type = "button";
    close.className = "btn btn-small camera-close";
    close.textContent = "Close";
    close.setAttribute("aria-label", `Close camera ${name}`);
    close.addEventListener("click", () => this.close(name));
    caption.appendChild(close);
    if (!tile.video && !this.getMedia()) this.showSnapshot(name, tile);
  }

  // Without WebRTC, a tile shows the latest keyframe as a still, refreshed now and then.
  showSnapshot(name, tile) {
    let img = tile.el.querySelector("img");
    if (!img) {
      img = document.createElement("img");
      img.alt = `Latest picture of camera ${name}`;
      tile.el.insertBefore(img, tile.el.firstChild);
    }
    const load = async () => {
      const reply = await this.api(`/api/cameras/${encodeURIComponent(name)}/snapshot.jpg`);
      if (reply.ok) img.src = URL.createObjectURL(await reply.blob());
    };
    if (!tile.snapshot) {
      load();
      tile.snapshot = setInterval(load, SNAPSHOT_REFRESH_MS);
    }
  }

  // For tests and the stats panel: frames decoded per open camera tile.
  async stats() {
    const media = this.getMedia();
    const out = {};
    for (const [name, tile] of this.tiles) {
      const video = tile.video;
      const quality = video && video.getVideoPlaybackQuality ? video.getVideoPlaybackQuality() : null;
      out[name] = {
        state: this.cameras.get(name)?.state,
        frames: quality ? quality.totalVideoFrames : 0,
        width: video ? video.videoWidth : 0,
      };
    }
    if (media) out.webrtc = await media.stats();
    return out;
  }
}
