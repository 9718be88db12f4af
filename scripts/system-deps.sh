#!/usr/bin/env bash
# Installs the system packages the tests use as real peers, only when one is missing.
# Debian/Ubuntu with apt-get; run as root or with sudo available.
set -euo pipefail
need=()
command -v ffmpeg >/dev/null || need+=(ffmpeg)
command -v sox >/dev/null || need+=(sox)
command -v espeak-ng >/dev/null || need+=(espeak-ng)
command -v sipp >/dev/null || need+=(sip-tester)
command -v gst-launch-1.0 >/dev/null || need+=(gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good)
command -v promtool >/dev/null || need+=(prometheus)
command -v systemd-analyze >/dev/null || need+=(systemd)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v ip >/dev/null || need+=(iproute2)
ldconfig -p 2>/dev/null | grep -q "libopus.so.0" || need+=(libopus0)  # WHIP decodes Opus to 16 kHz with it
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing system packages: ${need[*]}"
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
