"""SIP gateway load: SIPp calls with G.711 RTP (pcap play) into rooms, CPU per call.

``python tests/perf/bench_sip.py`` starts a real ``ucbridge serve`` with the SIP gateway,
creates ``--rooms`` rooms, and has SIPp (Debian ``sip-tester``) place ``--calls`` calls at
``--rate`` per second, at most ``--concurrent`` at once, each playing
``/usr/share/sip-tester/g711a.pcap`` (G.711 A-law) for ``--hold`` seconds, spread
over the rooms. It reports whether every call completed, the media worker's ticks on
time, and the CPU of the whole bridge (control, media worker, SIP gateway and its pjsua2
workers) per concurrent call while all of them were up. The table goes to BENCHMARKS.md
between the ``bench_sip`` markers.

Short check: ``python tests/perf/bench_sip.py --calls 8 --concurrent 8 --rooms 2 --hold 4
--output /tmp/b.md``. The issue's figure: ``--calls 100 --concurrent 100 --rooms 10``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "integration"))
sys.path.insert(0, str(HERE))

from bench_common import write_section  # noqa: E402
from server import Server  # noqa: E402
from sip_peers import free_sip_ports, wait_sip  # noqa: E402
from sip_scenarios import _INVITE_HEAD, _scenario, _send  # noqa: E402

MARK_START: Final = "<!-- bench_sip:start -->"
MARK_END: Final = "<!-- bench_sip:end -->"
DEFAULT_OUTPUT: Final = HERE.parents[1] / "BENCHMARKS.md"
PCAP_DIR: Final = Path("/usr/share/sip-tester")

SDP_PCMA = """v=0
o=sipp 1 1 IN IP4 [media_ip]
s=-
c=IN IP4 [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 8 101
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
"""


def scenario(hold_ms: int) -> str:
    """uac_pcap with the room from the injection file: INVITE, pcap play, hold, BYE."""
    invite = _INVITE_HEAD.replace("[service]", "[field0]") + "\n" + SDP_PCMA
    ack = """ACK [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
[last_To:]
[routes]
Call-ID: [call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0
"""
    bye = ack.replace("ACK [next_url]", "BYE [next_url]").replace("CSeq: 1 ACK", "CSeq: 2 BYE")
    return _scenario(
        "sip load",
        _send(invite, retrans=True)
        + '\n<recv response="100" optional="true"/>\n<recv response="180" optional="true"/>\n'
        + '<recv response="200" rrs="true"/>\n'
        + _send(ack)
        + '\n<nop><action><exec play_pcap_audio="pcap/g711a.pcap"/></action></nop>\n'
        + f'<pause milliseconds="{hold_ms}"/>\n'
        + _send(bye, retrans=True)
        + '\n<recv response="200"/>',
    )


def tree_cpu(pid: int) -> float:
    """User+system CPU seconds of a process and all its descendants alive now."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                continue
    except psutil.NoSuchProcess:
        pass
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--concurrent", type=int, default=100)
    parser.add_argument("--rooms", type=int, default=10)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--hold", type=float, default=30.0, help="seconds each call lasts")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    if shutil.which("sipp") is None:
        raise SystemExit("sipp is not installed (Debian package sip-tester)")
    workers = args.concurrent // 4 + 2
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        base = free_sip_ports(workers + 1)
        rtp = free_sip_ports(workers * 8)
        toml = (
            "[gateways.sip]\nenabled = true\n"
            f"listen_port = {base}\nworker_port_base = {base + 1}\n"
            f"rtp_port_base = {rtp}\nrtp_ports_per_worker = 8\n"
            f"max_workers = {workers}\nmin_workers = {workers}\n"
            f"max_calls = {args.concurrent + 8}\nmax_calls_per_room = {args.concurrent}\n"
            f"invite_rate = {max(args.rate * 2, 20.0)}\ninvite_burst = {args.concurrent}\n"
        )
        server = Server(tmp, extra_toml=toml, gateways=("sip",))
        server.start(timeout=120)
        try:
            wait_sip(base, timeout=120)
            rooms = [f"load{i}" for i in range(args.rooms)]
            for room in rooms:
                server.ok("POST", "/api/rooms", {"name": room})
            (tmp / "rooms.csv").write_text("SEQUENTIAL\n" + "".join(f"{r};\n" for r in rooms))
            (tmp / "pcap").symlink_to(PCAP_DIR)
            (tmp / "load.xml").write_text(scenario(int(args.hold * 1000)))
            before = server.get("/health")["workers"][0]
            sipp = subprocess.Popen(
                [
                    "sipp", f"127.0.0.1:{base}", "-sf", "load.xml", "-inf", "rooms.csv",
                    "-i", "127.0.0.1", "-p", str(free_sip_ports(1)), "-mi", "127.0.0.1",
                    "-mp", str(free_sip_ports(4 * args.concurrent + 4)),
                    "-m", str(args.calls), "-l", str(args.concurrent), "-r", str(args.rate),
                    "-nostdin", "-timeout", f"{int(args.hold * 3 + 120)}s", "-timeout_error",
                    "-trace_stat", "-stf", "stats.csv", "-trace_err",
                ],
                cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            assert server.process is not None
            # The steady window: from when every call is up to a little before they end.
            ramp = min(args.calls, args.concurrent) / args.rate
            time.sleep(ramp + 2.0)  # the calls are being placed at the given rate
            window = max(1.0, args.hold - 4.0)
            sip_calls = sum(len(server.get(f"/api/rooms/{r}/calls")["calls"]) for r in rooms)
            up = sum(
                1
                for r in rooms
                for c in server.get(f"/api/rooms/{r}/calls")["calls"]
                if c["state"] == "answered"
            )
            cpu0, t0 = tree_cpu(server.process.pid), time.monotonic()
            time.sleep(window)  # measure the steady state
            cpu1, t1 = tree_cpu(server.process.pid), time.monotonic()
            code = sipp.wait(timeout=args.hold * 3 + 180)
            after = server.get("/health")["workers"][0]
            stats = (
                (tmp / "stats.csv").read_text().splitlines() if (tmp / "stats.csv").exists() else []
            )
            header = stats[0].split(";") if stats else []
            last = stats[-1].split(";") if len(stats) > 1 else []
            field = dict(zip(header, last, strict=False))
            ok = int(field.get("SuccessfulCall(C)", 0) or 0)
            failed = int(field.get("FailedCall(C)", 0) or 0)
        finally:
            server.stop()
    ticks = after["ticks"] - before["ticks"]
    late = after["late_ticks"] - before["late_ticks"]
    cpu_pct = 100.0 * (cpu1 - cpu0) / (t1 - t0)
    per_call = cpu_pct / up if up else float("nan")
    text = (
        f"{MARK_START}\n## SIP gateway: SIPp load (bench_sip)\n\n"
        f"`python tests/perf/bench_sip.py --calls {args.calls} --concurrent {args.concurrent}"
        f" --rooms {args.rooms} --rate {args.rate:g} --hold {args.hold:g}`; SIPp plays G.711 A-law"
        " RTP from a pcap into each call; the bridge's CPU is every process of `ucbridge serve`"
        " (control, media worker, SIP gateway and its pjsua2 workers), measured while all"
        " calls were up.\n\n"
        "| calls | concurrent (answered in window) | rooms | completed | failed | sipp exit |"
        " ticks on time | bridge CPU (% of one core) | CPU per call (% of one core) |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
        f"| {args.calls} | {up} of {sip_calls} | {args.rooms} | {ok} | {failed} | {code} |"
        f" {100.0 * (ticks - late) / ticks if ticks else float('nan'):.2f} % ({late} late of"
        f" {ticks}) | {cpu_pct:.1f} | {per_call:.2f} |\n"
        f"{MARK_END}\n"
    )
    print(text)
    write_section(args.output, text, MARK_START, MARK_END)


if __name__ == "__main__":
    main()
