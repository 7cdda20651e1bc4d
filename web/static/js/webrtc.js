// WebRTC media for the console: the selected room's audio, the microphone under PTT, and
// video tiles, through the bridge's WebRTC gateway (socket.io /rooms: webrtc_offer,
// webrtc_candidate, webrtc_hangup).
//
// - One RTCPeerConnection per console session. The bridge's answer carries all of its
//   candidates (aiortc gathers before it answers: half-trickle); this page trickles its own.
// - The microphone track is enabled only while the console may talk: in an open room while
//   PTT is held, in a ptt room while its own leg holds the floor. Otherwise the track is
//   muted locally (the bridge does not mix it either).
// - aiortc has no ICE restart: when the connection fails or is closed, a new peer connection
//   with the same session id is offered at once; the bridge replaces the old leg with it.
// - Changing what video is published or viewed renegotiates with a new peer connection.
//   The old one stays open until the new answer is in: the bridge hands the old one's
//   audio leg to the new one (same user, session and room), so the console never leaves
//   the room and keeps a floor it holds. Closing the old one first would end its leg.

const RECONNECT_CHECK_MS = 250;
// A failed negotiation is tried again after 1 s, then 2, 4, ... up to 30 s.
const RETRY_FIRST_MS = 1000;
const RETRY_MAX_MS = 30000;
const STORE_SESSION = "ucb_webrtc_session";
const MEDIA_CONSTRAINTS = {
  audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
};

function sessionId() {
  let id = sessionStorage.getItem(STORE_SESSION);
  if (!id) {
    id = `c${Math.random().toString(36).slice(2, 12)}`;
    sessionStorage.setItem(STORE_SESSION, id);
  }
  return id;
}

export class WebRtcMedia {
  // The console's media, or null when the bridge runs no WebRTC gateway (see /health).
  static async create(emit, onMessage) {
    try {
      const health = await (await fetch("/health")).json();
      const gateways = health.gateways || [];
      if (!gateways.some((g) => g.name === "webrtc" && g.state === "running")) return null;
    } catch {
      return null;
    }
    return new WebRtcMedia({ emit, onMessage });
  }

  // emit(name, payload) -> Promise<answer>: a /rooms action with its acknowledgement.
  constructor({ emit, onMessage = () => {} }) {
    this.emit = emit;
    this.onMessage = onMessage;
    this.session = sessionId();
    this.room = null;
    this.pc = null;
    this.state = "idle";
    this.mic = null;
    this.camera = null;
    this.publishing = false;
    this.viewing = [];
    this.micOn = false;
    this.connects = 0;
    this.lastAnswer = null;
    this.error = null;
    this.audio = new Audio();
    this.audio.autoplay = true;
    this.context = null;
    this.analyser = null;
    this.tiles = new Map();
    this.tilesEl = null;
    this._negotiating = null;
    this._again = false;
    this._watch = setInterval(() => this._check(), RECONNECT_CHECK_MS);
    window.addEventListener("online", () => this._reconnect("network change"));
  }

  // Called by the console on every render of the PTT panel.
  sync(room, leg, ptt) {
    const roomId = room ? room.id : null;
    if (roomId !== this.room) {
      this.room = roomId;
      if (roomId) this.connect();
      else this.hangup();
    }
    let on = false;
    if (room && room.mode === "ptt") on = Boolean(leg && room.floor && room.floor.holder === leg.id);
    else if (room) on = Boolean(ptt && ptt.active);
    this.setMic(on);
  }

  setMic(on) {
    this.micOn = on;
    if (this.mic) for (const track of this.mic.getAudioTracks()) track.enabled = on;
  }

  async publishVideo(on) {
    this.publishing = on;
    if (!on && this.camera) {
      for (const track of this.camera.getTracks()) track.stop();
      this.camera = null;
    }
    await this.connect();
  }

  async view(sources) {
    this.viewing = [...sources];
    await this.connect();
  }

  async _media() {
    if (!this.mic) {
      this.mic = await navigator.mediaDevices.getUserMedia(MEDIA_CONSTRAINTS);
      this.setMic(this.micOn);
    }
    if (this.publishing && !this.camera) {
      this.camera = await navigator.mediaDevices.getUserMedia({
        video: { width: 320, height: 240, frameRate: 15 },
      });
    }
  }

  // (Re)negotiate: a new peer connection with the same session id replaces the old one.
  connect() {
    if (this._negotiating) {
      this._again = true;
      return this._negotiating;
    }
    this._negotiating = this._connect().finally(() => {
      this._negotiating = null;
      if (this._again) {
        this._again = false;
        this.connect();
      }
    });
    return this._negotiating;
  }

  async _connect() {
    const room = this.room;
    if (!room) return;
    this.state = "connecting";
    try {
      await this._media();
    } catch (err) {
      this._fail(`microphone: ${err.message}`);
      return;
    }
    const old = this.pc;
    const pc = new RTCPeerConnection({ bundlePolicy: "max-bundle" });
    this.pc = pc;
    const retire = () => {
      if (old && old.signalingState !== "closed") old.close();
    };
    for (const track of this.mic.getAudioTracks()) pc.addTransceiver(track, { direction: "sendrecv", streams: [this.mic] });
    if (this.publishing && this.camera) {
      for (const track of this.camera.getVideoTracks()) pc.addTransceiver(track, { direction: "sendonly" });
    }
    const viewing = [...this.viewing];
    for (let i = 0; i < viewing.length; i++) pc.addTransceiver("video", { direction: "recvonly" });
    pc.ontrack = (event) => this._onTrack(pc, event, viewing);
    const early = [];
    let answered = false;
    pc.onicecandidate = (event) => {
      const c = event.candidate;
      const payload = c
        ? { session: this.session, candidate: c.candidate, sdpMid: c.sdpMid, sdpMLineIndex: c.sdpMLineIndex }
        : { session: this.session, candidate: "" };
      if (answered) this.emit("webrtc_candidate", payload);
      else early.push(payload);
    };
    pc.onconnectionstatechange = () => {
      if (pc !== this.pc) return;
      this.state = pc.connectionState;
      if (pc.connectionState === "connected") this.connects += 1;
    };
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    const answer = await this.emit("webrtc_offer", {
      room,
      sdp: pc.localDescription.sdp,
      session: this.session,
      video_sources: viewing,
    });
    retire();
    if (pc !== this.pc) return;
    if (!answer || !answer.ok) {
      this._fail(answer ? answer.error : "no answer");
      return;
    }
    this.lastAnswer = { ...answer, sdp: undefined };
    this.error = null;
    this.failures = 0;
    await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
    answered = true;
    for (const payload of early) this.emit("webrtc_candidate", payload);
  }

  _fail(message) {
    this.error = message;
    this.failedAt = Date.now();
    this.failures = (this.failures || 0) + 1;
    this.state = "failed";
    this.onMessage(`WebRTC: ${message}`);
  }

  _onTrack(pc, event, viewing) {
    if (pc !== this.pc) return;
    if (event.track.kind === "audio") {
      const stream = event.streams[0] || new MediaStream([event.track]);
      this.audio.srcObject = stream;
      this.audio.play().catch(() => {});
      this._analyse(stream);
      return;
    }
    const index = pc.getTransceivers().filter((t) => t.receiver.track.kind === "video" && t.direction === "recvonly").indexOf(event.transceiver);
    const source = viewing[index] || event.track.id;
    this._tile(source, new MediaStream([event.track]));
  }

  _analyse(stream) {
    try {
      if (!this.context) this.context = new AudioContext();
      this.context.resume();
      const node = this.context.createMediaStreamSource(stream);
      this.analyser = this.context.createAnalyser();
      this.analyser.fftSize = 4096;
      node.connect(this.analyser);
    } catch {
      this.analyser = null;
    }
  }

  // Share of the room audio's power within 50 Hz of `freq` (for tests and meters).
  toneShare(freq) {
    if (!this.analyser) return 0;
    const bins = new Float32Array(this.analyser.frequencyBinCount);
    this.analyser.getFloatFrequencyData(bins);
    const hz = this.context.sampleRate / this.analyser.fftSize;
    let band = 0;
    let total = 0;
    bins.forEach((db, i) => {
      const power = 10 ** (db / 10);
      total += power;
      if (Math.abs(i * hz - freq) <= 50) band += power;
    });
    return total > 0 ? band / total : 0;
  }

  _tile(source, stream) {
    if (!this.tilesEl) {
      this.tilesEl = document.createElement("div");
      this.tilesEl.className = "video-tiles";
      this.tilesEl.setAttribute("aria-label", "Video");
      (document.getElementById("detail") || document.body).appendChild(this.tilesEl);
    }
    let tile = this.tiles.get(source);
    if (!tile) {
      tile = document.createElement("video");
      tile.autoplay = true;
      tile.muted = true;
      tile.playsInline = true;
      tile.title = source;
      tile.dataset.source = source;
      this.tilesEl.appendChild(tile);
      this.tiles.set(source, tile);
    }
    tile.srcObject = stream;
  }

  _check() {
    const pc = this.pc;
    if (!this.room || this._negotiating) return;
    // A negotiation that failed (no answer from a busy gateway, a camera that would not
    // start) is tried again after a pause, as a lost connection is.
    const pause = Math.min(RETRY_MAX_MS, RETRY_FIRST_MS * 2 ** ((this.failures || 1) - 1));
    if (this.state === "failed" && Date.now() - this.failedAt >= pause) {
      this._reconnect(`retry after: ${this.error}`);
      return;
    }
    if (!pc) return;
    if (pc.signalingState === "closed" || ["failed", "closed"].includes(pc.connectionState)) {
      this._reconnect(`peer connection ${pc.connectionState}`);
    }
  }

  _reconnect(reason) {
    if (!this.room) return;
    this.state = `reconnecting (${reason})`;
    this.connect();
  }

  hangup() {
    if (this.pc) {
      this.pc.close();
      this.pc = null;
      this.emit("webrtc_hangup", { session: this.session });
    }
    for (const tile of this.tiles.values()) tile.remove();
    this.tiles.clear();
    this.state = "idle";
  }

  async stats() {
    if (!this.pc) return {};
    const report = await this.pc.getStats();
    const out = { inboundVideo: [], inboundAudio: null, outboundAudio: null };
    report.forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "video")
        out.inboundVideo.push({ framesDecoded: s.framesDecoded || 0, codecId: s.codecId });
      if (s.type === "inbound-rtp" && s.kind === "audio") out.inboundAudio = { packetsReceived: s.packetsReceived };
      if (s.type === "outbound-rtp" && s.kind === "audio") out.outboundAudio = { packetsSent: s.packetsSent };
    });
    return out;
  }
}
