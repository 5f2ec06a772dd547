"""The virtual phone through the real adb server (the adbutils wheel's adb) and adbutils, as production uses them."""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import stat
import threading
import time
import zipfile

import adbutils
import pytest
from adbutils import AdbError

PKG = "com.fraqat.bench"
ACTIVITY = f"{PKG}/.BenchmarkActivity"


def _device(serial: str) -> adbutils.AdbDevice:
    """The client production code builds: the port comes from the environment the session set."""
    client = adbutils.AdbClient(host="127.0.0.1", port=int(os.environ.get("ANDROID_ADB_SERVER_PORT", "5037")))
    return client.device(serial)


def _sh(device: adbutils.AdbDevice, command: str) -> adbutils.ShellReturn:
    return device.shell2(command, v2=True, timeout=10)


def _poll(condition, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)
    return value


def _pidof(device: adbutils.AdbDevice) -> int | None:
    result = _sh(device, f"pidof {PKG}")
    return int(result.stdout) if result.returncode == 0 else None


def _waiting_app(proc, extras: dict[str, str]) -> None:
    proc.log(f"benchmark started: {extras.get('request')}")
    proc.set_memory(pss_kb=250_000)
    while not proc.wait(0.01):
        pass


# ---- transport, listing, files
def test_devices_list_shows_model_and_state(virtual_phone, adb_server):
    phone = virtual_phone()
    assert os.environ["ANDROID_ADB_SERVER_PORT"] == str(adb_server.port)
    assert adbutils.adb.port == adb_server.port  # the module-level client was re-pointed too
    line = next(ln for ln in adb_server.run("devices", "-l").stdout.splitlines() if ln.startswith(phone.serial))
    assert line.split()[1] == "device"
    assert "model:SM_S938B" in line and "product:pa3qxxx" in line and "device:pa3q" in line
    assert [(d.serial, d.state) for d in adbutils.adb.list() if d.serial == phone.serial] == [(phone.serial, "device")]
    device = _device(phone.serial)
    assert device.prop.model == "SM-S938B"
    assert {"shell_v2", "stat_v2", "cmd"} <= set(device.get_features().split(","))


def test_push_pull_few_mb_identical(virtual_phone, adb_server, tmp_path):
    phone = virtual_phone()
    device = _device(phone.serial)
    payload = os.urandom(3 * 1024 * 1024 + 123)
    source = tmp_path / "model.bin"
    source.write_bytes(payload)
    remote = f"/sdcard/Android/data/{PKG}/files/runs/r1/model.bin"
    assert device.sync.push(source, remote, mode=0o644) == len(payload)
    assert phone.host_path(remote).read_bytes() == payload  # fixed_push_mkdir made the folders
    assert device.sync.read_bytes(remote) == payload
    device.sync.pull(remote, tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == payload
    # the adb command line: STA2/LST2 + SEND/RECV, and the /storage/emulated/0 alias
    pushed = adb_server.run("-s", phone.serial, "push", str(source), "/storage/emulated/0/Download/cli.bin")
    assert pushed.returncode == 0, pushed.stderr
    assert phone.host_path("/sdcard/Download/cli.bin").read_bytes() == payload
    pulled = adb_server.run("-s", phone.serial, "pull", "/sdcard/Download/cli.bin", str(tmp_path / "cli.bin"))
    assert pulled.returncode == 0, pulled.stderr
    assert (tmp_path / "cli.bin").read_bytes() == payload
    assert _sh(device, "sha256sum /sdcard/Download/cli.bin").stdout.split()[0] == hashlib.sha256(payload).hexdigest()


def test_stat_and_list(virtual_phone, adb_server, tmp_path):
    phone = virtual_phone()
    device = _device(phone.serial)
    device.sync.push(b"x" * 1000, "/data/local/tmp/a.txt", mode=0o640)
    info = device.sync.stat("/data/local/tmp/a.txt")
    assert stat.S_ISREG(info.mode) and info.size == 1000 and stat.S_IMODE(info.mode) == 0o640
    assert stat.S_ISDIR(device.sync.stat("/sdcard").mode)
    assert device.sync.stat("/sdcard/missing").mode == 0
    assert not device.sync.exists("/sdcard/missing")
    names = {f.path for f in device.sync.list("/data/local/tmp")}
    assert names == {".", "..", "a.txt"}
    phone.host_path("/sdcard/Download/sub").mkdir()
    phone.host_path("/sdcard/Download/sub/b.bin").write_bytes(b"bb")
    listed = adb_server.run("-s", phone.serial, "pull", "/sdcard/Download", str(tmp_path))  # LIS2 + RECV
    assert listed.returncode == 0, listed.stderr
    assert (tmp_path / "Download" / "sub" / "b.bin").read_bytes() == b"bb"
    assert _sh(device, "stat -c '%s %a' /data/local/tmp/a.txt").stdout == "1000 640\n"
    assert _sh(device, "ls /sdcard/Download/sub").stdout == "b.bin\n"


# ---- shell
def test_shell_v2_exit_codes_and_separate_stderr(virtual_phone):
    device = _device(virtual_phone().serial)
    assert _sh(device, "exit 3").returncode == 3
    assert _sh(device, "false").returncode == 1
    assert _sh(device, "true").returncode == 0
    result = _sh(device, "echo out; echo err >&2; ls /sdcard/nothing; exit 7")
    assert (result.returncode, result.stdout) == (7, "out\n")
    assert result.stderr == "err\nls: /sdcard/nothing: No such file or directory\n"
    missing = _sh(device, "no_such_tool --x")
    assert missing.returncode == 127 and "no_such_tool: inaccessible or not found" in missing.stderr
    script = ("cd /data/local/tmp && for n in 1 2 3; do echo line$n >> f.txt; done; "
              "[ -f f.txt ] && echo \"count=$(wc -l < f.txt)\" || echo none; cat f.txt | grep -c line")
    assert _sh(device, script).stdout == "count=3\n3\n"
    assert _sh(device, "sh -c 'exit 4'; echo $?").stdout == "4\n"
    assert device.shell("echo legacy; echo e >&2") == "legacy\ne"  # shell: (v1) merges both streams


def test_getprop_values(virtual_phone):
    device = _device(virtual_phone().serial)
    expected = {"ro.product.model": "SM-S938B", "ro.soc.model": "SM8750", "ro.soc.manufacturer": "QTI",
                "ro.product.manufacturer": "samsung", "ro.build.version.sdk": "35",
                "ro.build.version.release": "15"}
    for key, value in expected.items():
        assert device.shell(["getprop", key]) == value
    listing = _sh(device, "getprop").stdout
    for key, value in expected.items():
        assert f"[{key}]: [{value}]\n" in listing
    assert device.shell("getprop ro.no.such.prop") == ""


def test_unauthorized_phone_shows_unauthorized(virtual_phone, adb_server):
    phone = virtual_phone(authorized=False)
    assert adb_server.state(phone.serial) == "unauthorized"
    with pytest.raises(AdbError, match="unauthorized"):
        _device(phone.serial).shell("echo hi")


# ---- storage and faults
def test_storage_full_fails_push_like_a_full_phone(virtual_phone, adb_server, tmp_path):
    phone = virtual_phone(free_bytes=1_000_000)
    device = _device(phone.serial)
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(2_000_000))
    result = adb_server.run("-s", phone.serial, "push", str(source), "/sdcard/Download/big.bin")
    assert result.returncode != 0
    assert "No space left on device" in result.stderr
    assert not phone.host_path("/sdcard/Download/big.bin").exists()  # the partial file is removed
    with pytest.raises(AdbError):
        device.sync.push(source, "/sdcard/Download/big.bin")
    df = _sh(device, "df /sdcard").stdout.splitlines()
    assert df[0].split()[:4] == ["Filesystem", "1K-blocks", "Used", "Available"]
    assert df[1].split()[3] == str(1_000_000 // 1024) and df[1].split()[-1] == "/storage/emulated"
    available, block = map(int, _sh(device, "stat -f -c '%a %S' /sdcard").stdout.split())
    assert available * block == 1_000_000 // 4096 * 4096
    device.sync.push(b"s" * 600_000, "/sdcard/Download/small.bin")  # what fits still fits
    assert phone.free_bytes == 400_000
    full = _sh(device, "echo more > /sdcard/Download/x; cp /sdcard/Download/small.bin /sdcard/Download/copy")
    assert full.returncode == 1 and "No space left on device" in full.stderr


def test_mid_push_drop_errors_on_host_and_phone_reconnects(virtual_phone):
    phone = virtual_phone(drop_after_push_bytes=1_000_000)
    device = _device(phone.serial)
    payload = os.urandom(3_000_000)
    with pytest.raises((AdbError, OSError)):
        device.sync.push(payload, "/sdcard/Download/model.bin")
    assert not phone.host_path("/sdcard/Download/model.bin").exists()
    phone.reconnect()
    device = _device(phone.serial)
    device.sync.push(payload, "/sdcard/Download/model.bin")
    assert phone.host_path("/sdcard/Download/model.bin").read_bytes() == payload


def test_disconnect_on_demand_while_app_runs(virtual_phone, adb_server):
    phone = virtual_phone(apps={PKG: "1.0"})
    phone.register_app(PKG, _waiting_app)
    device = _device(phone.serial)
    _sh(device, f"am start -n {ACTIVITY} --es request /sdcard/r.json")
    pid = _poll(lambda: _pidof(device))
    outcome: list = []

    def long_command() -> None:
        try:
            outcome.append(device.shell2("sleep 20; echo finished", v2=True, timeout=30))
        except (AdbError, OSError, EOFError) as exc:  # adbutils' shell2 raises EOFError on a cut stream
            outcome.append(exc)

    worker = threading.Thread(target=long_command)
    worker.start()
    _poll(lambda: ("shell", "sleep 20; echo finished") in phone.history)
    phone.disconnect(stay_offline=True)
    worker.join(10)
    assert not worker.is_alive()
    assert isinstance(outcome[0], EOFError)
    adb_server.wait_state(phone.serial, "offline")  # the adb server retries, but the phone refuses
    phone.reconnect()
    assert _pidof(_device(phone.serial)) == pid  # a pulled cable does not kill the app


def test_two_phones_at_once(virtual_phone, adb_server):
    first, second = virtual_phone(), virtual_phone(props={"ro.serialno": "R5CX2"})
    assert first.serial != second.serial
    states = {d.serial: d.state for d in adb_server.client.list()}
    assert states[first.serial] == states[second.serial] == "device"
    _device(first.serial).sync.push(b"one", "/sdcard/who.txt")
    _device(second.serial).sync.push(b"two\n", "/sdcard/who.txt")
    assert first.host_path("/sdcard/who.txt").read_bytes() == b"one"
    assert _device(second.serial).shell("cat /sdcard/who.txt; getprop ro.serialno") == "two\nR5CX2"


def test_hostile_commands_stay_in_the_sandbox(virtual_phone, tmp_path):
    phone = virtual_phone()
    device = _device(phone.serial)
    outside = phone.fs.root.parent / "outside.txt"
    outside.write_text("host file")
    phone.host_path("/sdcard/Download/keep.txt").write_text("keep")
    result = _sh(device, "rm -rf /; rm -rf /sdcard; cat /../../../etc/hostname; cd /../../..; rm -rf *; "
                         "rm -rf ../outside.txt /sdcard/../../outside.txt; ls /")
    assert result.returncode == 0
    assert "Read-only file system" in result.stderr and "No such file or directory" in result.stderr
    assert outside.read_text() == "host file"
    assert phone.host_path("/sdcard/Download/keep.txt").read_text() == "keep"
    assert set(result.stdout.split()) == {"data", "dev", "proc", "sdcard", "storage", "system", "vendor"}
    assert _sh(device, "rm -rf /sdcard/*; ls /sdcard").stdout == ""  # the shell user may empty its own storage
    phone.host_path("/sdcard/link").symlink_to(outside)  # planted on the host side: still no way out
    assert "Permission denied" in _sh(device, "cat /sdcard/link").stderr
    with pytest.raises(AdbError):
        device.sync.read_bytes("/sdcard/link")
    assert _sh(device, "rm /sdcard/link").returncode == 1 and outside.exists()


# ---- apps
def test_am_start_passes_exact_extras_and_hostile_values_arrive_verbatim(virtual_phone):
    phone = virtual_phone(apps={PKG: "0.3.1"})
    calls: list[dict[str, str]] = []
    phone.register_app(PKG, lambda proc, extras: calls.append(extras))
    keep = phone.host_path("/sdcard/Download/keep.txt")
    keep.write_text("keep")
    device = _device(phone.serial)
    extras = {"request": f"/sdcard/Android/data/{PKG}/files/runs/abc 1/request.json",
              "hostile": '"; rm -rf /sdcard; echo "', "quotes": "it's $HOME `id` \\ ;|& *", "empty": ""}
    command = f"am start -S -W -n {shlex.quote(ACTIVITY)}" + "".join(
        f" --es {shlex.quote(k)} {shlex.quote(v)}" for k, v in extras.items())
    result = _sh(device, command)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:3] == [f"Stopping: {PKG}", f"Starting: Intent {{ cmp={ACTIVITY} (has extras) }}",
                                              "Status: ok"]
    phone.wait_for_app(PKG)
    assert calls == [extras]
    assert keep.read_text() == "keep"
    unknown = _sh(device, "am start -n com.nope/.BenchmarkActivity")
    assert unknown.returncode == 0  # as on Android: the error is on stderr only
    assert "Error type 3" in unknown.stderr


def test_pidof_logcat_meminfo_and_force_stop(virtual_phone):
    phone = virtual_phone(apps={PKG: "1.0"}, thermal_status=2)
    phone.register_app(PKG, _waiting_app)
    device = _device(phone.serial)
    _sh(device, f"am start -n {ACTIVITY} --es request /sdcard/r.json")
    pid = _poll(lambda: _pidof(device))
    assert phone.pidof(PKG) == pid
    _poll(lambda: "benchmark started" in _sh(device, f"logcat -d --pid {pid}").stdout)
    log = _sh(device, f"logcat -d --pid={pid} -v threadtime").stdout.splitlines()
    assert re.fullmatch(rf"\d\d-\d\d [\d:.]+ +{pid} +\d+ I BenchmarkActivity: benchmark started: /sdcard/r.json",
                        log[-1])
    meminfo = _sh(device, f"dumpsys meminfo {PKG}").stdout
    assert f"** MEMINFO in pid {pid} [{PKG}] **" in meminfo and "App Summary" in meminfo
    pss = int(re.search(r"TOTAL PSS:\s+(\d+)", meminfo).group(1))
    rss = int(re.search(r"TOTAL RSS:\s+(\d+)", meminfo).group(1))
    assert pss == 250_000 and rss > pss
    status = _sh(device, f"cat /proc/{pid}/status").stdout
    assert int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) >= rss
    assert "Thermal Status: 2" in _sh(device, "dumpsys thermalservice").stdout
    assert _sh(device, f"am force-stop {PKG}").returncode == 0
    assert _sh(device, f"pidof {PKG}").returncode == 1
    assert phone.wait_for_app(PKG).crash is None
    assert _sh(device, f"cat /proc/{pid}/status").returncode == 1
    assert _sh(device, f"dumpsys meminfo {PKG}").stdout == f"No process found for: {PKG}\n"


def test_logcat_follows_until_the_host_closes(virtual_phone):
    phone = virtual_phone(apps={PKG: "1.0"})
    phone.register_app(PKG, _waiting_app)
    device = _device(phone.serial)
    command = "logcat -v brief -s BenchmarkActivity:I"
    stream = device.shell(command, stream=True)
    stream.conn.settimeout(5)
    _sh(device, f"am start -n {ACTIVITY} --es request /sdcard/live.json")
    received = b""
    while b"\n" not in received:
        received += stream.conn.recv(4096)
    assert received.decode() == f"I/BenchmarkActivity({phone.pidof(PKG):5d}): benchmark started: /sdcard/live.json\n"
    service = f"vphone-{phone.port}-shell:{command}"
    assert service in {t.name for t in threading.enumerate()}
    stream.close()
    _poll(lambda: service not in {t.name for t in threading.enumerate()})  # the device side stopped following


def test_crash_becomes_fatal_exception_and_the_process_disappears(virtual_phone):
    phone = virtual_phone(apps={PKG: "1.0"})

    def crashing_app(proc, extras):
        proc.log("loading model")
        raise FileNotFoundError("model.bin is missing")

    phone.register_app(PKG, crashing_app)
    device = _device(phone.serial)
    _sh(device, f"am start -S -n {ACTIVITY} --es request /sdcard/r.json")
    run = phone.wait_for_app(PKG)
    assert isinstance(run.crash, FileNotFoundError)
    assert _sh(device, f"pidof {PKG}").returncode == 1
    log = _sh(device, f"logcat -d --pid {run.pid}").stdout
    assert "E AndroidRuntime: FATAL EXCEPTION: main" in log
    assert f"E AndroidRuntime: Process: {PKG}, PID: {run.pid}" in log
    assert "FileNotFoundError: model.bin is missing" in log
    assert "loading model" in log
    assert f"Process {PKG} (pid {run.pid}) has died" in _sh(device, "logcat -d -s ActivityManager").stdout
    assert _sh(device, "logcat -c; logcat -d").stdout == ""


def test_install_apk_and_package_queries(virtual_phone, adb_server, tmp_path):
    phone = virtual_phone()
    apk = tmp_path / "bench.apk"
    with zipfile.ZipFile(apk, "w") as archive:
        archive.writestr("AndroidManifest.xml", f'<manifest package="{PKG}" android:versionCode="7" '
                                                'android:versionName="0.7.0"/>')
        archive.writestr("classes.dex", b"dex\n035\0")
    installed = adb_server.run("-s", phone.serial, "install", "-r", str(apk))  # streamed: exec:cmd package install
    assert installed.returncode == 0 and "Success" in installed.stdout, installed.stderr
    device = _device(phone.serial)
    assert _sh(device, "pm list packages -3").stdout == f"package:{PKG}\n"
    path = _sh(device, f"pm path {PKG}").stdout
    assert re.fullmatch(rf"package:/data/app/~~[\w-]+==/{PKG}-[\w-]+==/base\.apk\n", path)
    assert "versionName=0.7.0" in _sh(device, f"dumpsys package {PKG}").stdout
    info = device.app_info(PKG)
    assert (info.version_name, info.version_code) == ("0.7.0", 7)
    device.sync.push(apk, "/data/local/tmp/again.apk")
    assert _sh(device, "pm install -r -t /data/local/tmp/again.apk").stdout == "Success\n"
    assert phone.installed_apks == [(PKG, hashlib.sha256(apk.read_bytes()).hexdigest())] * 2
    assert _sh(device, "pm install /data/local/tmp/missing.apk").returncode == 1
    assert _sh(device, f"pm uninstall {PKG}").stdout == "Success\n"
    assert _sh(device, f"pm path {PKG}").returncode == 1


def test_shell_parser_units(tmp_path):
    """The interpreter without adb: quoting and expansion details that are easy to get wrong."""
    from virtual_phone import VirtualPhone
    from virtual_phone.interp import IO, BufferOut, In, Shell

    phone = VirtualPhone(tmp_path / "p")

    def run(src: str) -> tuple[int, str, str]:
        out, err = BufferOut(), BufferOut()
        status = Shell(phone).run(src, IO(In(), out, err))
        return status, out.buffer.decode(), err.buffer.decode()

    assert run("x='a  b'; printf '[%s]' $x \"$x\"") == (0, "[a][b][a  b]", "")
    assert run("echo \"$(echo 'in $(sub)')\" ${UNSET:-dflt} $((2 + 3 * 4))")[1] == "in $(sub) dflt 14\n"
    assert run("f() { echo \"args:$#:$1\"; return 5; }; f 'one two' three; echo $?")[1] == "args:2:one two\n5\n"
    assert run("if false; then echo a; elif true; then echo b; else echo c; fi")[1] == "b\n"
    assert run("i=0; while [ $i -lt 3 ]; do i=$((i+1)); done; echo $i")[1] == "3\n"
    assert run("echo a | { read v; echo got:$v; }")[1] == "got:a\n"
    assert run("echo 'unterminated")[0] != 0
    assert run("cat <<EOF\nx\nEOF")[0] != 0  # here-documents are refused, never handed to a host shell
    status, out, _ = run("touch /sdcard/a.bin /sdcard/b.bin; echo /sdcard/*.bin '/sdcard/*.bin'")
    assert out == "/sdcard/a.bin /sdcard/b.bin /sdcard/*.bin\n"
