// Console tones through WebAudio: the talk-permit chirp, the deny buzz and the emergency
// alert. Radio consoles use short, distinct tones so a dispatcher knows without looking
// whether the floor was granted. Each tone played is also recorded in `played` (for tests).

const PERMIT = [
  { freq: 1200, start: 0.0, length: 0.06 },
  { freq: 1600, start: 0.08, length: 0.08 },
];
const DENY = [{ freq: 330, start: 0.0, length: 0.35, type: "square" }];
const ALERT = [
  { freq: 960, start: 0.0, length: 0.18 },
  { freq: 640, start: 0.2, length: 0.18 },
  { freq: 960, start: 0.4, length: 0.18 },
  { freq: 640, start: 0.6, length: 0.18 },
];
const RAMP_S = 0.008;
const LEVEL = 0.18;

export class Tones {
  constructor() {
    this.context = null;
    this.volume = 1.0;
    this.played = [];
  }

  ensure() {
    if (!this.context) {
      const Context = window.AudioContext || window.webkitAudioContext;
      if (!Context) return null;
      this.context = new Context();
    }
    if (this.context.state === "suspended") this.context.resume();
    return this.context;
  }

  play(name, notes) {
    this.played.push(name);
    const ctx = this.ensure();
    if (!ctx) return;
    const t0 = ctx.currentTime + 0.01;
    for (const note of notes) {
      const osc = ctx.createOscillator();
      const gain = ctx.createGain();
      osc.type = note.type || "sine";
      osc.frequency.value = note.freq;
      const start = t0 + note.start;
      const end = start + note.length;
      const level = LEVEL * this.volume * (note.type === "square" ? 0.4 : 1.0);
      gain.gain.setValueAtTime(0, start);
      gain.gain.linearRampToValueAtTime(level, start + RAMP_S);
      gain.gain.setValueAtTime(level, end - RAMP_S);
      gain.gain.linearRampToValueAtTime(0, end);
      osc.connect(gain).connect(ctx.destination);
      osc.start(start);
      osc.stop(end + 0.01);
    }
  }

  permit() {
    this.play("permit", PERMIT);
  }

  deny() {
    this.play("deny", DENY);
  }

  alert() {
    this.play("alert", ALERT);
  }
}
