// The unit map: Leaflet with a configurable tile layer, and without one (a console may have
// no internet) a graticule drawn on canvas tiles, with a metric scale bar. Units are GeoJSON
// features (RFC 7946) from /api/presence and the /presence socket.io namespace.

/* global L */

const GRATICULE_STEPS = [
  30, 10, 5, 2, 1, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001, 0.0005, 0.0002, 0.0001,
];
const LINES_PER_TILE = 3;
const LABEL_HEIGHT_PX = 14;
const FIT_MAX_ZOOM = 16;
const FIT_PADDING_PX = 48;

export const STATUS_LABEL = Object.freeze({
  idle: "Idle",
  talking: "Talking",
  emergency: "Emergency",
  "imminent-peril": "Imminent peril",
  stale: "Not reporting",
});

function formatDegrees(value, step, positive, negative) {
  const decimals = Math.max(0, Math.ceil(-Math.log10(step)));
  const hemisphere = value >= 0 ? positive : negative;
  return `${Math.abs(value).toFixed(decimals)}°${value === 0 ? "" : hemisphere}`;
}

const Graticule = L.GridLayer.extend({
  options: { tileSize: 256, lineColor: "rgba(120, 160, 200, 0.22)", textColor: "#7f93a8" },

  createTile(coords) {
    const size = this.getTileSize();
    const tile = L.DomUtil.create("canvas", "graticule-tile");
    const ratio = window.devicePixelRatio || 1;
    tile.width = size.x * ratio;
    tile.height = size.y * ratio;
    const ctx = tile.getContext("2d");
    ctx.scale(ratio, ratio);
    const map = this._map;
    const nw = coords.scaleBy(size);
    const se = nw.add(size);
    const northWest = map.unproject(nw, coords.z);
    const southEast = map.unproject(se, coords.z);
    const span = Math.max(southEast.lng - northWest.lng, 1e-9);
    const step =
      GRATICULE_STEPS.find((s) => span / s >= LINES_PER_TILE - 1) ??
      GRATICULE_STEPS[GRATICULE_STEPS.length - 1];
    ctx.strokeStyle = this.options.lineColor;
    ctx.fillStyle = this.options.textColor;
    ctx.lineWidth = 1;
    ctx.font = "10px system-ui, sans-serif";
    for (let lon = Math.ceil(northWest.lng / step) * step; lon <= southEast.lng; lon += step) {
      const x = Math.round(map.project([northWest.lat, lon], coords.z).x - nw.x) + 0.5;
      ctx.beginPath();
      ctx.moveTo(x, 0);
      ctx.lineTo(x, size.y);
      ctx.stroke();
      const label = formatDegrees(lon, step, "E", "W");
      if (x + 3 + ctx.measureText(label).width < size.x) ctx.fillText(label, x + 3, size.y - 4);
    }
    for (let lat = Math.ceil(southEast.lat / step) * step; lat <= northWest.lat; lat += step) {
      const y = Math.round(map.project([lat, northWest.lng], coords.z).y - nw.y) + 0.5;
      ctx.beginPath();
      ctx.moveTo(0, y);
      ctx.lineTo(size.x, y);
      ctx.stroke();
      if (y > LABEL_HEIGHT_PX && y < size.y - LABEL_HEIGHT_PX) {
        ctx.fillText(formatDegrees(lat, step, "N", "S"), 3, y - 3);
      }
    }
    return tile;
  },
});

function escapeHtml(text) {
  return String(text ?? "").replace(
    /[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c],
  );
}

export class UnitMap {
  constructor(element, settings) {
    this.map = L.map(element, {
      center: [settings.center_lat ?? 0, settings.center_lon ?? 0],
      zoom: settings.zoom ?? 2,
      worldCopyJump: true,
      zoomControl: true,
      attributionControl: Boolean(settings.tile_url),
      keyboard: true,
    });
    // The graticule is always drawn: with a tile URL it shows through tiles that fail to
    // load (a tile server out of reach), so the map stays usable offline.
    new Graticule({ maxZoom: 22 }).addTo(this.map);
    if (settings.tile_url) {
      L.tileLayer(settings.tile_url, {
        maxZoom: settings.tile_max_zoom ?? 19,
        attribution: settings.tile_attribution || "",
      }).addTo(this.map);
      element.classList.add("has-tiles");
    }
    L.control.scale({ imperial: false, position: "bottomleft" }).addTo(this.map);
    this.markers = new Map();
    this.features = new Map();
    this.highlight = { ids: new Set(), aliases: new Set() };
    this.alarm = { ids: new Set(), aliases: new Set() };
    this.fitted = false;
    this.onSelect = null;
    const FitControl = L.Control.extend({
      options: { position: "topright" },
      onAdd: () => {
        const button = L.DomUtil.create("button", "map-fit");
        button.type = "button";
        button.textContent = "Fit units";
        button.setAttribute("aria-label", "Zoom the map to all units");
        L.DomEvent.disableClickPropagation(button);
        L.DomEvent.on(button, "click", () => this.fit(true));
        return button;
      },
    });
    new FitControl().addTo(this.map);
  }

  invalidate() {
    this.map.invalidateSize();
  }

  statusOf(feature) {
    const p = feature.properties;
    if (p.status === "emergency" || p.status === "imminent-peril") return p.status;
    if (this.alarm.ids.has(p.unit) || (p.alias && this.alarm.aliases.has(p.alias)))
      return "emergency";
    if (
      p.status === "talking" ||
      this.highlight.ids.has(p.unit) ||
      (p.alias && this.highlight.aliases.has(p.alias))
    ) {
      return "talking";
    }
    return p.stale ? "stale" : "idle";
  }

  icon(feature, status) {
    const p = feature.properties;
    const label = escapeHtml(p.alias || p.unit);
    return L.divIcon({
      className: `unit-marker status-${status}`,
      html: `<span class="unit-dot" aria-hidden="true"></span><span class="unit-label">${label}</span>`,
      iconSize: [18, 18],
      iconAnchor: [9, 9],
    });
  }

  tooltip(feature, status) {
    const p = feature.properties;
    const rows = [
      `<strong>${escapeHtml(p.alias || p.unit)}</strong> <span class="muted">${escapeHtml(p.unit)}</span>`,
      `${escapeHtml(p.kind)} · ${escapeHtml(STATUS_LABEL[status] || status)}`,
    ];
    if (p.room) rows.push(`room ${escapeHtml(p.room)}`);
    if (p.speed !== null && p.speed !== undefined) {
      rows.push(
        `${(p.speed * 3.6).toFixed(0)} km/h` +
          (p.heading !== null ? ` · ${p.heading.toFixed(0)}°` : ""),
      );
    }
    if (p.accuracy !== null && p.accuracy !== undefined) rows.push(`±${p.accuracy.toFixed(0)} m`);
    rows.push(`<span class="muted">${escapeHtml(p.time)}</span>`);
    return rows.join("<br>");
  }

  upsert(feature) {
    const [lon, lat] = feature.geometry.coordinates;
    const status = this.statusOf(feature);
    this.features.set(feature.id, feature);
    let entry = this.markers.get(feature.id);
    if (!entry) {
      const marker = L.marker([lat, lon], {
        icon: this.icon(feature, status),
        keyboard: true,
        title: feature.properties.alias || feature.properties.unit,
        alt: `Unit ${feature.properties.alias || feature.properties.unit}`,
        riseOnHover: true,
      });
      marker.bindTooltip("", { direction: "top", offset: [0, -10] });
      marker.on("click", () => this.onSelect && this.onSelect(feature.id));
      marker.addTo(this.map);
      entry = { marker, status: null, label: null };
      this.markers.set(feature.id, entry);
    } else {
      entry.marker.setLatLng([lat, lon]);
    }
    const label = feature.properties.alias || feature.properties.unit;
    if (entry.status !== status || entry.label !== label) {
      entry.marker.setIcon(this.icon(feature, status));
      entry.marker.setZIndexOffset(status === "idle" || status === "stale" ? 0 : 1000);
      entry.status = status;
      entry.label = label;
    }
    entry.marker.setTooltipContent(this.tooltip(feature, status));
  }

  remove(unitId) {
    const entry = this.markers.get(unitId);
    if (entry) entry.marker.remove();
    this.markers.delete(unitId);
    this.features.delete(unitId);
  }

  replaceAll(collection) {
    const keep = new Set(collection.features.map((f) => f.id));
    for (const id of [...this.markers.keys()]) if (!keep.has(id)) this.remove(id);
    this.update(collection);
  }

  update(collection) {
    for (const feature of collection.features || []) this.upsert(feature);
    for (const id of collection.removed || []) this.remove(id);
    if (!this.fitted && this.markers.size) this.fit(false);
  }

  // Units matching talkers (by unit id or alias) are highlighted; those matching an active
  // emergency alert are shown in alarm.
  setHighlight(talking, alarm) {
    const same = (a, b) => a.size === b.length && b.every((x) => a.has(x));
    if (
      same(this.highlight.ids, talking.ids) &&
      same(this.highlight.aliases, talking.aliases) &&
      same(this.alarm.ids, alarm.ids) &&
      same(this.alarm.aliases, alarm.aliases)
    ) {
      return;
    }
    this.highlight = { ids: new Set(talking.ids), aliases: new Set(talking.aliases) };
    this.alarm = { ids: new Set(alarm.ids), aliases: new Set(alarm.aliases) };
    for (const feature of this.features.values()) this.upsert(feature);
  }

  fit(animate) {
    if (!this.markers.size) return;
    const bounds = L.latLngBounds([...this.markers.values()].map((e) => e.marker.getLatLng()));
    this.map.fitBounds(bounds, {
      padding: [FIT_PADDING_PX, FIT_PADDING_PX],
      maxZoom: FIT_MAX_ZOOM,
      animate,
    });
    this.fitted = true;
  }

  counts() {
    const counts = { total: 0, talking: 0, emergency: 0, stale: 0 };
    for (const entry of this.markers.values()) {
      counts.total += 1;
      if (entry.status === "talking") counts.talking += 1;
      if (entry.status === "emergency" || entry.status === "imminent-peril") counts.emergency += 1;
      if (entry.status === "stale") counts.stale += 1;
    }
    return counts;
  }
}
