"""The SIP gateway's voice prompts and floor tones, as package data.

They are generated once by ``python -m bridge.gateways.sip.prompts`` (espeak-ng for the
speech, sox to bring it to 16 kHz mono 16-bit; the tones are synthesised here) and kept
under ``assets/``. The SIP workers play them into a call at the conference bridge's rate.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt

ASSETS = Path(__file__).resolve().parent / "assets"
RATE = 16000

#: Prompt name -> the words spoken.
SPEECH = {
    "enter_pin": "Please enter the conference PIN, then press hash.",
    "pin_wrong": "That PIN is not correct. Please try again.",
    "goodbye": "Goodbye.",
    "joined": "You are now in the conference.",
}

#: Tone name -> (frequency Hz, on ms, off ms) steps: TS 22.179 asks for an audible
#: indication of floor grant, deny and queueing; these follow common PTT practice.
TONES: dict[str, list[tuple[float, int, int]]] = {
    "floor_granted": [(1400.0, 80, 40), (1800.0, 80, 0)],
    "floor_denied": [(400.0, 120, 60), (400.0, 120, 0)],
    "floor_queued": [(1000.0, 100, 80), (1000.0, 100, 80), (1000.0, 100, 0)],
    "floor_released": [(1000.0, 60, 0)],
    "floor_revoked": [(600.0, 200, 60), (400.0, 200, 0)],
}

NAMES = (*SPEECH, *TONES)


def synth_tone(steps: list[tuple[float, int, int]], rate: int = RATE) -> npt.NDArray[np.int16]:
    parts: list[npt.NDArray[np.float64]] = []
    for freq, on_ms, off_ms in steps:
        n = rate * on_ms // 1000
        t = np.arange(n) / rate
        ramp = np.minimum(1.0, np.minimum(np.arange(n), n - 1 - np.arange(n)) / (rate * 0.005))
        parts.append(0.35 * 32767 * np.sin(2 * np.pi * freq * t) * ramp)
        parts.append(np.zeros(rate * off_ms // 1000))
    return np.concatenate(parts).astype(np.int16)


def write_wav(path: Path, samples: npt.NDArray[np.int16], rate: int = RATE) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())


def generate(target: Path = ASSETS) -> list[Path]:
    """Write every prompt and tone into ``target``; espeak-ng and sox must be installed."""
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is needed to generate the prompts")
    target.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, words in SPEECH.items():
            raw = Path(tmp) / f"{name}.wav"
            out = target / f"{name}.wav"
            subprocess.run(["espeak-ng", "-s", "150", "-w", str(raw), words], check=True)
            subprocess.run(
                ["sox", str(raw), "-r", str(RATE), "-c", "1", "-b", "16", str(out)], check=True
            )
            written.append(out)
    for name, steps in TONES.items():
        out = target / f"{name}.wav"
        write_wav(out, synth_tone(steps))
        written.append(out)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", type=Path, default=ASSETS)
    args = parser.parse_args()
    for path in generate(args.target):
        print(path.name)


if __name__ == "__main__":
    main()
