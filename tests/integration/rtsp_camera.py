"""A real RTSP camera for tests: GStreamer's RTSP server (Debian packages), H.264 + PCMU.

Run by the system ``python3`` (GObject introspection comes from Debian's python3-gi, not
from the venv): ``python3 rtsp_camera.py --port 8554 --mount /cam1``. It prints ``ready``
once it listens on 127.0.0.1. :class:`RtspCamera` starts it from a test and stops it by PID.

Every mount streams ``videotestsrc`` (a moving ball) encoded by x264 (zero latency, an IDR
every ``--gop`` frames, SPS/PPS in band) or as JPEG (``--video jpeg``, for the transcoding
path), and a sine tone of ``--tone`` Hz as PCMU at 8 kHz. With ``--one-pipeline`` every
mount and client shares one encoder, so a benchmark's load generator stays small.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

#: Debian's python3 with GObject introspection; the venv's python has no ``gi``.
SYSTEM_PYTHON = "/usr/bin/python3"
READY = "ready"
HERE = Path(__file__).resolve().parent


def launch_line(
    video: str,
    width: int,
    height: int,
    fps: int,
    gop: int,
    tone: float,
    pattern: str = "ball",
    bitrate: int = 1500,
) -> str:
    """``pattern`` is videotestsrc's: ``ball`` (little motion, a few hundred kbit/s at
    720p) or ``snow`` (noise: x264 spends the whole ``bitrate``, kbit/s, like a busy
    scene on a real camera)."""
    caps = f"video/x-raw,width={width},height={height},framerate={fps}/1"
    if video == "jpeg":
        # RFC 2435 JPEG carries 4:2:0 or 4:2:2 only.
        caps += ",format=I420"
        encode = "jpegenc quality=60 ! rtpjpegpay name=pay0 pt=26"
    else:
        encode = (
            f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={gop} bitrate={bitrate}"
            " ! video/x-h264,profile=baseline ! rtph264pay name=pay0 pt=96 config-interval=-1"
        )
    audio = (
        f"audiotestsrc is-live=true wave=sine freq={tone} volume=0.5"
        " ! audio/x-raw,rate=8000,channels=1 ! mulawenc ! rtppcmupay name=pay1 pt=0"
    )
    return f"( videotestsrc is-live=true pattern={pattern} ! {caps} ! {encode} {audio} )"


def serve(args: argparse.Namespace) -> None:  # runs under the system python3
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    line = launch_line(
        args.video,
        args.width,
        args.height,
        args.fps,
        args.gop,
        args.tone,
        args.pattern,
        args.bitrate,
    )

    class OnePipeline(GstRtspServer.RTSPMediaFactory):  # type: ignore[misc]
        def do_gen_key(self, url: object) -> str:
            return "one"

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    mounts = server.get_mount_points()
    shared = OnePipeline() if args.one_pipeline else None
    for mount in args.mount:
        factory = shared or GstRtspServer.RTSPMediaFactory()
        factory.set_launch(line)
        factory.set_shared(True)
        mounts.add_factory(mount, factory)
    if server.attach(None) == 0:
        raise SystemExit(f"cannot listen on 127.0.0.1:{args.port}")
    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    print(READY, flush=True)
    loop.run()


class RtspCamera:
    """The server above as a subprocess of a test, on 127.0.0.1."""

    def __init__(
        self,
        port: int,
        mounts: tuple[str, ...] = ("/cam1",),
        *,
        video: str = "h264",
        width: int = 320,
        height: int = 240,
        fps: int = 25,
        gop: int = 25,
        tone: float = 1000.0,
        pattern: str = "ball",
        bitrate: int = 1500,
        one_pipeline: bool = False,
        log: Path | None = None,
    ) -> None:
        self.port = port
        self.args = [
            "--port", str(port), "--video", video, "--width", str(width),
            "--height", str(height), "--fps", str(fps), "--gop", str(gop), "--tone", str(tone),
            "--pattern", pattern, "--bitrate", str(bitrate),
        ]  # fmt: skip
        for mount in mounts:
            self.args += ["--mount", mount]
        if one_pipeline:
            self.args.append("--one-pipeline")
        self.log = log
        self.process: subprocess.Popen[str] | None = None

    def url(self, mount: str = "/cam1") -> str:
        return f"rtsp://127.0.0.1:{self.port}{mount}"

    def start(self, timeout: float = 10.0) -> None:
        self.process = subprocess.Popen(
            [SYSTEM_PYTHON, str(HERE / "rtsp_camera.py"), *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL if self.log is None else self.log.open("ab"),
            text=True,
        )
        assert self.process.stdout is not None
        # The first line is "ready", or nothing when it fails (EOF).
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline().strip() if ready else "(no answer)"
        if line != READY:
            self.stop()
            raise RuntimeError(f"the RTSP camera did not start on port {self.port}: {line!r}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()

    def __enter__(self) -> RtspCamera:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def available() -> bool:
    """Whether the system python3 has GStreamer's RTSP server (Debian packages)."""
    probe = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0');"
        "from gi.repository import GstRtspServer"
    )
    try:
        return subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mount", action="append", default=[])
    parser.add_argument("--video", choices=("h264", "jpeg"), default="h264")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--gop", type=int, default=25)
    parser.add_argument("--tone", type=float, default=1000.0)
    parser.add_argument("--one-pipeline", action="store_true")
    parser.add_argument("--pattern", choices=("ball", "snow", "smpte"), default="ball")
    parser.add_argument("--bitrate", type=int, default=1500, help="x264 kbit/s")
    args = parser.parse_args()
    if not args.mount:
        args.mount = ["/cam1"]
    serve(args)


if __name__ == "__main__":
    sys.exit(main())
