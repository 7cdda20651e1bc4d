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
import datetime
import os
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

from bench_common import load_average, write_section  # noqa: E402
from server import Server  # noqa: E402
from sip_peers import free_sip_ports, wait_sip  # noqa: E402
from sip_scenarios import _INVITE_HEAD, _scenario, _send  # noqa: E402

MARK_START: Final = "<!-- bench_sip:start -->"
MARK_END: Final = "<!-- bench_sip:end -->"
DEFAULT_OUTPUT: Final = HERE.parents[1] / "BENCHMARKS.md"
PCAP_DIR: Final = Path("/usr/share/sip-tester")
#: Seconds the idle bridge (workers started, no call) is measured before the load.
IDLE_WINDOW_S: Final = 3.0
#: The issue's bar: the mixer's ticks on time (%).
TARGET_ON_TIME: Final = 99.9
#: How much of SIPp's error log a run with failed calls prints.
ERROR_LOG_CHARS: Final = 4000
#: Calls one pjsua2 worker carries (the wheel's PJSUA_MAX_CALLS).
CALLS_PER_WORKER: Final = 4

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


#: Which part of the bridge a process is, by its command line.
ROLES: Final = (
    ("bridge.gateways.sip.worker", "pjsua2 workers"),
    ("bridge.gatewayprocess", "SIP gateway"),
    ("bridge.worker", "media worker"),
)


def role_of(cmdline: list[str]) -> str:
    for marker, role in ROLES:
        if marker in cmdline:
            return role
    return "control"


def tree_cpu(pid: int) -> dict[str, float]:
    """User+system CPU seconds of a process and its descendants alive now, by role."""
    total: dict[str, float] = {}
    try:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            try:
                times = proc.cpu_times()
                role = role_of(proc.cmdline())
            except psutil.NoSuchProcess:
                continue
            total[role] = total.get(role, 0.0) + times.user + times.system
    except psutil.NoSuchProcess:
        pass
    return total


def on_time(ticks: int, late: int) -> str:
    share = 100.0 * (ticks - late) / ticks if ticks else float("nan")
    return f"{share:.2f} % ({late} late of {ticks})"


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
    # Exactly the workers the calls need started ahead, and room for one spare more.
    workers = -(-args.concurrent // CALLS_PER_WORKER)
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load_at_start = load_average()[0]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        # One block of free ports for the front, the workers' SIP and RTP, and SIPp's
        # SIP and media ports, so that no range meets another.
        media_ports = 4 * args.concurrent + 4
        base = free_sip_ports(workers + 2 + (workers + 1) * 8 + 1 + media_ports)
        rtp = base + workers + 2
        sipp_port = rtp + (workers + 1) * 8
        toml = (
            "[gateways.sip]\nenabled = true\n"
            f"listen_port = {base}\nworker_port_base = {base + 1}\n"
            f"rtp_port_base = {rtp}\nrtp_ports_per_worker = 8\n"
            f"max_workers = {workers + 1}\nmin_workers = {workers}\n"
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
            assert server.process is not None
            time.sleep(IDLE_WINDOW_S)  # the processes' start-up is not the idle cost
            idle0, i0 = tree_cpu(server.process.pid), time.monotonic()
            time.sleep(IDLE_WINDOW_S)  # the bridge with its workers started and no call
            idle1, i1 = tree_cpu(server.process.pid), time.monotonic()
            before = server.get("/health")["workers"][0]
            sipp = subprocess.Popen(
                [
                    "sipp", f"127.0.0.1:{base}", "-sf", "load.xml", "-inf", "rooms.csv",
                    "-i", "127.0.0.1", "-p", str(sipp_port), "-mi", "127.0.0.1",
                    "-mp", str(sipp_port + 1),
                    "-m", str(args.calls), "-l", str(args.concurrent), "-r", str(args.rate),
                    "-nostdin", "-timeout", f"{int(args.hold * 3 + 120)}s", "-timeout_error",
                    "-trace_stat", "-stf", "stats.csv", "-trace_err",
                ],
                cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
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
            steady0 = server.get("/health")["workers"][0]
            cpu0, t0 = tree_cpu(server.process.pid), time.monotonic()
            time.sleep(window)  # measure the steady state
            cpu1, t1 = tree_cpu(server.process.pid), time.monotonic()
            steady1 = server.get("/health")["workers"][0]
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
            if failed:  # why, before the folder goes
                for log in tmp.glob("*_errors.log"):
                    print(log.read_text(errors="replace")[:ERROR_LOG_CHARS], file=sys.stderr)
        finally:
            server.stop()
    ticks = after["ticks"] - before["ticks"]
    late = after["late_ticks"] - before["late_ticks"]
    steady_ticks = steady1["ticks"] - steady0["ticks"]
    steady_late = steady1["late_ticks"] - steady0["late_ticks"]
    roles = {role: 100.0 * (cpu1[role] - cpu0.get(role, 0.0)) / (t1 - t0) for role in sorted(cpu1)}
    cpu_pct = sum(roles.values())
    idle_pct = 100.0 * (sum(idle1.values()) - sum(idle0.values())) / (i1 - i0)
    breakdown = ", ".join(f"{role} {pct:.1f}" for role, pct in roles.items())
    per_call = cpu_pct / up if up else float("nan")
    met = (
        ok == args.calls and failed == 0 and ticks > 0
        and 100.0 * (ticks - late) / ticks >= TARGET_ON_TIME
    )  # fmt: skip
    text = (
        f"{MARK_START}\n## SIP gateway: SIPp load (bench_sip)\n\n"
        f"`python tests/perf/bench_sip.py --calls {args.calls} --concurrent {args.concurrent}"
        f" --rooms {args.rooms} --rate {args.rate:g} --hold {args.hold:g}`; SIPp plays G.711 A-law"
        " RTP from a pcap into each call; the bridge's CPU is every process of `ucbridge serve`"
        " (control, media worker, SIP gateway and its pjsua2 workers), measured while all"
        " calls were up.\n\n"
        "| calls | concurrent (answered in window) | rooms | completed | failed | sipp exit |"
        " ticks on time (whole run) | ticks on time (all calls up) |"
        " bridge CPU (% of one core) | CPU per call (% of one core) |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
        f"| {args.calls} | {up} of {sip_calls} | {args.rooms} | {ok} | {failed} | {code} |"
        f" {on_time(ticks, late)} | {on_time(steady_ticks, steady_late)} |"
        f" {cpu_pct:.1f} | {per_call:.2f} |\n\n"
        f"Bridge CPU by process (% of one core): {breakdown}; the same bridge idle"
        f" ({workers} pjsua2 workers started, no call): {idle_pct:.1f}.\n\n"
        f"Measured {started} on {os.cpu_count()} CPUs (load average {load_at_start:.2f} at"
        f" the start). Target: every call completed and the mixer ≥ {TARGET_ON_TIME:g} % on"
        f" time over the whole run: **{'met' if met else 'not met'}**.\n"
        f"{MARK_END}\n"
    )
    print(text)
    write_section(args.output, text, MARK_START, MARK_END)


if __name__ == "__main__":
    main()
