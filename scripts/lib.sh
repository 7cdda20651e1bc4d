# Shared by scripts/serve and scripts/test. Sourced, not run.
# Everything the project needs is installed from here, every time, so a fresh
# Debian bookworm with python3, python3-venv, pip, git and curl is enough.

# Debian packages the test suite drives as real peers.
# chromium is the dispatcher console's browser (driven by playwright, never downloaded).
TEST_DEBIAN_PACKAGES=(janus tshark sox chromium baresip-core sip-tester espeak-ng)
# A real RTSP camera (GStreamer's RTSP server, run by the system python3 with GI) and
# ffmpeg (the video test fixtures).
TEST_DEBIAN_PACKAGES+=(gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-good
    gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-tools ffmpeg)

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_debian_packages() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "ucbridge: installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq
    # tshark asks whether non-root users may capture; answer no, non-interactively.
    echo "wireshark-common wireshark-common/install-setuid boolean false" \
        | as_root debconf-set-selections
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}"
    # Debian starts janus as a service listening on every interface; the tests run
    # their own loopback-only instance, so keep the packaged one stopped.
    if [ -x /usr/bin/systemctl ] && systemctl is-active --quiet janus 2>/dev/null; then
        as_root systemctl disable --now janus || true
    fi
}

setup_venv() {
    local extras="${1:-}"
    if [ ! -x .venv/bin/python ]; then
        python3 -m venv .venv
    fi
    .venv/bin/python -m pip install -q --disable-pip-version-check -U "pip>=23.2"
    local spec="."
    [ -n "$extras" ] && spec=".[$extras]"
    .venv/bin/python -m pip install -q --disable-pip-version-check \
        -e "$spec" --config-settings editable_mode=strict
}
