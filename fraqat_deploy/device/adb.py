"""Phones over adb (adbutils and the adb server it talks to).

The adb server is the one on ``ANDROID_ADB_SERVER_PORT`` (adb's own variable, default 5037). Every string that
reaches the phone's shell goes through ``shlex.quote``: a prompt such as ``"; rm -rf /sdcard; echo "`` is data,
never a command (prompts travel in request.json anyway; paths and extras are quoted all the same).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fraqat_deploy.device.link import DeviceLink
from fraqat_deploy.device.protocol import ACTIVITY, FILES_DIR, PACKAGE
from fraqat_deploy.errors import ConfigError, DeviceError
from fraqat_deploy.runs import sha256_file

SCRIPTS_DIR = Path(__file__).resolve().parent.parent.parent / "device_scripts"
REMOTE_SCRIPTS = "/data/local/tmp/fraqat-deploy"
#: room left free beside a pushed file, so the app can still write its results
PUSH_RESERVE_BYTES = 1 << 20
#: adb is not on PATH after `pip install`: the adbutils wheel bundles it, `fraqat-deploy adb ...` runs that one
ADB_HINT = "`fraqat-deploy adb devices` (the adb bundled with the adbutils wheel)"
NO_PHONE_FIX = f"connect the phone by USB, enable USB debugging (Developer options) and check {ADB_HINT}"


def adb_binary() -> str:
    """The adb the adbutils wheel ships (or the one on PATH, if adbutils has none for this platform)."""
    import shutil

    import adbutils

    try:
        return str(adbutils.adb_path())
    except Exception:  # adbutils raises its own error when no binary fits the platform
        found = shutil.which("adb")
        if not found:
            raise DeviceError("no adb binary: the adbutils wheel has none for this platform and adb is not on PATH",
                              "install Android platform-tools and put adb on PATH") from None
        return found


def server_running() -> bool:
    """Is an adb server listening on the port adb uses (``ANDROID_ADB_SERVER_PORT``, default 5037)?"""
    import socket

    with contextlib.suppress(OSError), socket.create_connection(
            ("127.0.0.1", int(os.environ.get("ANDROID_ADB_SERVER_PORT", "5037"))), timeout=1):
        return True
    return False


def stop_server() -> None:
    with contextlib.suppress(Exception):
        client().server_kill()


def client():
    import adbutils

    return adbutils.AdbClient(host="127.0.0.1", port=int(os.environ.get("ANDROID_ADB_SERVER_PORT", "5037")))


def _list() -> list[Any]:
    try:
        return list(client().list())
    except Exception as e:  # adbutils raises its own and socket errors; the user needs one line
        raise DeviceError(f"cannot reach the adb server: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                          "start it with `fraqat-deploy adb start-server` (the adb bundled with adbutils)") from None


@dataclass
class PhoneInfo:
    serial: str
    state: str
    model: str | None = None
    soc: str | None = None
    android: str | None = None
    sdk: int | None = None
    free_mb: float | None = None
    app_version: str | None = None
    target: str | None = None

    @property
    def fix(self) -> str | None:
        if self.state == "unauthorized":
            return "unlock the phone and accept the 'Allow USB debugging' prompt"
        if self.state == "offline":
            return "reconnect the cable or run `fraqat-deploy adb reconnect`"
        if self.state != "device":
            return f"the phone is '{self.state}': reconnect it"
        return None


def _shell(device, cmd: str, timeout: float = 60) -> tuple[int, str, str]:
    try:
        r = device.shell2(cmd, timeout=timeout, v2=True)
    except Exception as e:
        raise ConnectionError(str(e) or type(e).__name__) from None
    return r.returncode, r.stdout if r.stdout is not None else r.output, r.stderr or ""


def describe(device) -> PhoneInfo:
    """Model, SoC, Android version, free storage and our app's version of a connected phone."""
    from fraqat_deploy.targets import match_phone_model

    props = {}
    for key in ("ro.product.model", "ro.soc.model", "ro.build.version.release", "ro.build.version.sdk"):
        _, out, _ = _shell(device, f"getprop {shlex.quote(key)}")
        props[key] = out.strip() or None
    info = PhoneInfo(device.serial, "device", props["ro.product.model"], props["ro.soc.model"],
                     props["ro.build.version.release"],
                     int(props["ro.build.version.sdk"]) if (props["ro.build.version.sdk"] or "").isdigit() else None)
    info.free_mb = free_mb(device, "/sdcard")
    info.app_version = app_version(device)
    target = match_phone_model(info.model or "")
    info.target = target.alias if target else None
    return info


def free_mb(device, path: str) -> float | None:
    code, out, _ = _shell(device, f"df -k {shlex.quote(path)}")
    lines = [line.split() for line in out.strip().splitlines()]
    if code != 0 or len(lines) < 2:
        return None
    header, row = lines[0], lines[-1]
    for name in ("Available", "Avail"):
        # the header's last column is two words ("Mounted on"): index from the left
        if name in header and len(row) > header.index(name) and row[header.index(name)].isdigit():
            return int(row[header.index(name)]) / 1024.0
    return None


def app_version(device) -> str | None:
    code, out, _ = _shell(device, f"dumpsys package {shlex.quote(PACKAGE)}")
    if code != 0:
        return None
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("versionName="):
            return line.split("=", 1)[1]
    return None


def list_phones() -> list[PhoneInfo]:
    phones = []
    for entry in _list():
        info = PhoneInfo(entry.serial, entry.state)
        if entry.state == "device":
            try:
                info = describe(client().device(entry.serial))
            except ConnectionError:
                info.state = "offline"
        phones.append(info)
    return phones


def select_device(spec: str):
    """The adbutils device for ``spec``: a serial, or a target alias (``s25u``) matched by phone model."""
    from fraqat_deploy.targets import get_target, match_phone_model

    entries = _list()
    by_serial = [e for e in entries if e.serial == spec]
    if by_serial:
        entry = by_serial[0]
        info = PhoneInfo(entry.serial, entry.state)
        if info.fix:
            raise DeviceError(f"phone {entry.serial} is {entry.state}", info.fix)
        return client().device(entry.serial)
    try:
        target = get_target(spec)
    except ConfigError:
        raise DeviceError(f"no phone with serial '{spec}' and no target called '{spec}'",
                          "pass a serial from `fraqat-deploy devices`, a target alias (s25u), or sim") from None
    if not entries:
        raise DeviceError(f"no phone connected (looking for {target.name})", NO_PHONE_FIX)
    blocked = [e for e in entries if e.state != "device"]
    matches = []
    for entry in entries:
        if entry.state != "device":
            continue
        device = client().device(entry.serial)
        _, model, _ = _shell(device, "getprop ro.product.model")
        if match_phone_model(model.strip()) is target:
            matches.append(device)
    if len(matches) > 1:
        raise DeviceError(f"{len(matches)} phones match {target.alias}: {', '.join(d.serial for d in matches)}",
                          "pass --device <serial>")
    if not matches:
        if blocked:
            info = PhoneInfo(blocked[0].serial, blocked[0].state)
            raise DeviceError(f"no usable {target.name}: {blocked[0].serial} is {blocked[0].state}", info.fix)
        raise DeviceError(f"no {target.name} connected (found: {', '.join(e.serial for e in entries)})",
                          f"connect one, or pass --device <serial> / --device sim; {NO_PHONE_FIX}")
    return matches[0]


class AdbLink(DeviceLink):
    kind = "adb"

    def __init__(self, device, target: str | None = None, package: str = PACKAGE) -> None:
        from fraqat_deploy.targets import get_target, match_phone_model

        self.device = device
        self.package = package
        self.files_dir = f"/sdcard/Android/data/{package}/files" if package != PACKAGE else FILES_DIR
        self.info_cache: PhoneInfo | None = None
        if target is None:
            _, model, _ = _shell(device, "getprop ro.product.model")
            matched = match_phone_model(model.strip())
            if matched is None:
                raise DeviceError(f"phone {device.serial} ({model.strip() or 'unknown model'}) is not in the target "
                                  "catalogue", "pass --target <alias> to run the binaries compiled for that SoC")
            target = matched.alias
        self.target = get_target(target).alias
        self.label = self.target  # results go to bench/<target alias>/<id>/, as for --device s25u
        self.pid: str | None = None

    def _remote(self, rel: str) -> str:
        return f"{self.files_dir}/{rel}"

    def _check(self, cmd: str, what: str) -> str:
        code, out, err = _shell(self.device, cmd)
        if code != 0:
            if "No space left" in err or "No space left" in out:
                raise DeviceError(f"the phone's storage is full ({what})", "free storage on the phone and re-run")
            raise DeviceError(f"{what} failed on {self.device.serial}: {(err or out).strip().splitlines()[-1:]}",
                              "check the phone's storage and that the app is installed")
        return out

    def info(self) -> dict[str, Any]:
        self.info_cache = self.info_cache or describe(self.device)
        i = self.info_cache
        return {"manufacturer": "", "model": i.model or "", "soc": i.soc or "", "android_sdk": i.sdk,
                "runtime": "htp", "qnn_version": None, "onnxruntime_version": None}

    def prepare(self, apk: Path | None) -> None:
        if apk is not None:
            install(self.device, apk)
        code, _, _ = _shell(self.device, f"pm path {shlex.quote(self.package)}")
        if code != 0:
            raise DeviceError(f"the fraqat-deploy app ({self.package}) is not installed on {self.device.serial}",
                              "build android_app (README) and pass --apk <path>, or run "
                              "`fraqat-deploy app install --apk <path>`")
        for script in sorted(SCRIPTS_DIR.glob("*.sh")):
            remote = f"{REMOTE_SCRIPTS}/{script.name}"
            if self.sha256_abs(remote) != sha256_file(script):
                self._push_abs(script, remote)

    def sha256_abs(self, remote: str) -> str | None:
        code, out, _ = _shell(self.device, f"sha256sum {shlex.quote(remote)} 2>/dev/null")
        return out.split()[0] if code == 0 and out.split() else None

    def sha256(self, remote: str) -> str | None:
        return self.sha256_abs(self._remote(remote))

    def _storage_full(self, local: Path, folder: str) -> bool:
        free = free_mb(self.device, folder)
        return free is not None and free * (1 << 20) < local.stat().st_size + PUSH_RESERVE_BYTES

    def _push_abs(self, local: Path, remote: str) -> None:
        folder = remote.rsplit("/", 1)[0]
        self._check(f"mkdir -p {shlex.quote(folder)}", "creating a folder")
        full = DeviceError(f"the phone's storage is full: {local.name} ({local.stat().st_size / (1 << 20):.1f} MB) "
                           "does not fit", "free storage on the phone and re-run (files already pushed are reused)")
        if self._storage_full(local, folder):
            raise full
        try:
            self.device.sync.push(str(local), remote)
        except Exception as e:
            text = str(e)
            # adbutils reports a device-side failure as a bare "FAIL": ask the phone whether it is full
            if "No space left" in text or "ENOSPC" in text or self._storage_full(local, folder):
                raise full from None
            raise ConnectionError(f"push of {local.name} failed: {text or type(e).__name__}") from None
        if self.sha256_abs(remote) != sha256_file(local):
            raise ConnectionError(f"{local.name} arrived damaged on the phone")

    def push(self, local: Path, remote: str) -> None:
        self._push_abs(local, self._remote(remote))

    def pull(self, remote: str, local: Path) -> bool:
        if self.sha256(remote) is None:
            return False
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.device.sync.pull(self._remote(remote), str(local))
        except Exception as e:
            raise ConnectionError(f"pull of {remote} failed: {e}") from None
        return True

    def read_text(self, remote: str) -> str | None:
        code, out, _ = _shell(self.device, f"cat {shlex.quote(self._remote(remote))} 2>/dev/null")
        return out if code == 0 else None

    def remove(self, remote: str) -> None:
        _shell(self.device, f"rm -f {shlex.quote(self._remote(remote))}")

    def start(self, request_remote: str) -> None:
        self._memory_file = f"{REMOTE_SCRIPTS}/memory-{Path(request_remote).parent.name}.txt"
        args = " ".join(shlex.quote(a) for a in (self.package, ACTIVITY, self._remote(request_remote)))
        out = self._check(f"sh {REMOTE_SCRIPTS}/launch.sh {args}", "starting the app")
        self.pid = out.strip().split()[-1] if out.strip() else None
        sampler = " ".join(shlex.quote(a) for a in (self.package, self._memory_file, "0.5"))
        _shell(self.device, f"nohup sh {REMOTE_SCRIPTS}/memsample.sh {sampler} >/dev/null 2>&1 &")

    def running(self) -> bool:
        code, out, _ = _shell(self.device, f"pidof {shlex.quote(self.package)}")
        return code == 0 and bool(out.strip())

    def stop(self) -> None:
        _shell(self.device, f"am force-stop {shlex.quote(self.package)}")

    def logs(self) -> str:
        _, out, _ = _shell(self.device, "logcat -d -v threadtime", timeout=120)
        return out

    def crash_count(self) -> int:
        # Android keeps each FATAL EXCEPTION in logcat's crash buffer, one "Process: <package>, PID: n" line each
        marker = f"Process: {self.package}, PID: "
        code, out, _ = _shell(self.device, f"logcat -d -b crash -e {shlex.quote('^' + re.escape(marker))}")
        return sum(marker in line for line in out.splitlines()) if code == 0 else 0

    def thermal_status(self) -> int | None:
        _, out, _ = _shell(self.device, f"sh {REMOTE_SCRIPTS}/thermal.sh")
        return int(out.strip()) if out.strip().isdigit() else None

    def memory(self) -> dict[str, float | None]:
        text = self.read_abs(getattr(self, "_memory_file", ""))
        values = dict(line.split("=", 1) for line in (text or "").splitlines() if "=" in line)
        mb = {k: int(v) / 1024.0 for k, v in values.items() if k.endswith("_kb") and v.strip().isdigit()}
        return {"peak_pss": mb.get("peak_pss_kb") or None, "peak_rss": mb.get("peak_rss_kb") or mb.get("vmhwm_kb")}

    def read_abs(self, remote: str) -> str | None:
        if not remote:
            return None
        code, out, _ = _shell(self.device, f"cat {shlex.quote(remote)} 2>/dev/null")
        return out if code == 0 else None


def install(device, apk: Path) -> None:
    apk = Path(apk)
    if not apk.is_file():
        raise DeviceError(f"no APK at {apk}", "build it with `./gradlew assembleDebug` in android_app/ (README)")
    try:
        device.install(str(apk), nolaunch=True, silent=True)
    except TypeError:
        device.install(str(apk))
    except Exception as e:
        raise DeviceError(f"installing {apk.name} failed: {str(e).splitlines()[0] if str(e) else e}",
                          "check the phone's storage and that the APK is a debug build of android_app") from None
