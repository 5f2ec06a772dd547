"""Android's own shell commands: getprop, pm/cmd package, am, pidof, kill, ps, and /proc files.

``dumpsys`` lives in ``dumpsys.py``, ``logcat`` and ``log`` in ``logcat.py``. Output formats follow Android 15
on a Galaxy S25 Ultra closely enough for parsers written against the real phone (``am start`` answers 0 even on
errors, which go to stderr).
"""

from __future__ import annotations

import hashlib
import io as _io
import re
import time
import zipfile

from .apps import SYSTEM_SERVER_PID
from .interp import IO, Shell, command


@command("getprop")
def _getprop(sh: Shell, argv: list[str], io: IO) -> int:
    props = sh.phone.props
    if len(argv) == 1:
        io.out("".join(f"[{k}]: [{v}]\n" for k, v in sorted(props.items())))
    else:
        io.out(props.get(argv[1], argv[2] if len(argv) > 2 else "") + "\n")
    return 0


@command("setprop")
def _setprop(sh: Shell, argv: list[str], io: IO) -> int:
    if len(argv) != 3:
        io.err("setprop: Need 2 arguments\n")
        return 1
    if argv[1].startswith("ro."):
        io.err(f"Failed to set property '{argv[1]}' to '{argv[2]}'.\nSee dmesg for error reason.\n")
        return 1
    sh.phone.props[argv[1]] = argv[2]
    return 0


# ---- package manager
def _apk_identity(sh: Shell, apk: bytes) -> tuple[str, str, int] | None:
    """(package, versionName, versionCode) from a plain-text AndroidManifest.xml in the APK, or the phone's knob."""
    try:
        with zipfile.ZipFile(_io.BytesIO(apk)) as archive:
            manifest = archive.read("AndroidManifest.xml").decode("utf-8")
        package = re.search(r'\bpackage="([^"]+)"', manifest)
        name = re.search(r'versionName="([^"]*)"', manifest)
        code = re.search(r'versionCode="(\d+)"', manifest)
        if package:
            return package.group(1), name.group(1) if name else "1.0", int(code.group(1)) if code else 1
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError):
        pass
    return sh.phone.apk_identity(apk) if sh.phone.apk_identity else None


def _install(sh: Shell, args: list[str], io: IO) -> int:
    size = None
    rest = []
    it = iter(args)
    for arg in it:
        if arg == "-S":
            size = int(next(it))
        elif arg in ("-i", "--user", "--install-location", "--originating-uri", "--referrer", "-p"):
            next(it)
        elif not arg.startswith("-"):
            rest.append(arg)
    try:
        apk = io.stdin.read(size) if size is not None and not rest else sh.read_file(rest[0])
    except (OSError, IndexError):
        io.err(f"Error: Can't open file: {rest[0] if rest else '-'}\n")
        return 1
    identity = _apk_identity(sh, apk)
    if identity is None:
        io.out("Failure [INSTALL_PARSE_FAILED_NOT_APK: Failed to parse /data/app/vmdl.tmp/base.apk: "
               "Failed to load asset path /data/app/vmdl.tmp/base.apk]\n")
        return 1
    package, version_name, version_code = identity
    sh.phone.force_stop(package)
    old = sh.phone.packages.get(package)
    activities = old.activities if old and not old.system else (".BenchmarkActivity",)
    sh.phone.install_app(package, version_name, version_code, activities=activities, apk=apk)
    sh.phone.installed_apks.append((package, hashlib.sha256(apk).hexdigest()))
    io.out("Success\n")
    return 0


@command("pm")
def _pm(sh: Shell, argv: list[str], io: IO) -> int:
    return _package(sh, argv[1:], io)


def _package(sh: Shell, args: list[str], io: IO) -> int:
    phone = sh.phone
    verb, rest = (args[0], args[1:]) if args else ("", [])
    if verb == "list" and rest[:1] == ["packages"]:
        options = [a for a in rest[1:] if a.startswith("-")]
        filters = [a for a in rest[1:] if not a.startswith("-") and not a.isdigit()]
        lines = []
        for pkg in sorted(phone.packages.values(), key=lambda p: p.name):
            if ("-3" in options and pkg.system) or ("-s" in options and not pkg.system):
                continue
            if filters and filters[0] not in pkg.name:
                continue
            line = f"package:{pkg.code_path}/base.apk={pkg.name}" if "-f" in options else f"package:{pkg.name}"
            if "--show-versioncode" in options:
                line += f" versionCode:{pkg.version_code}"
            lines.append(line + "\n")
        io.out("".join(lines))
        return 0
    if verb == "path":
        pkg = phone.packages.get(rest[-1]) if rest else None
        if pkg is None:
            return 1
        io.out(f"package:{pkg.code_path}/base.apk\n")
        return 0
    if verb == "install":
        return _install(sh, rest, io)
    if verb == "uninstall":
        name = next((a for a in rest if not a.startswith("-")), "")
        if phone.uninstall(name):
            io.out("Success\n")
            return 0
        io.out("Failure [DELETE_FAILED_INTERNAL_ERROR]\n")
        return 1
    if verb == "clear":
        name = rest[-1] if rest else ""
        if name not in phone.packages:
            io.out("Failed\n")
            return 1
        phone.force_stop(name)
        data = phone.fs.host(f"/sdcard/Android/data/{name}")
        if data.exists():
            phone.fs.remove_tree(f"/sdcard/Android/data/{name}")
        io.out("Success\n")
        return 0
    if verb in ("grant", "revoke", "disable-user", "enable", "trim-caches", "compile"):
        return 0
    if verb == "dump":
        from .dumpsys import dump_package

        return dump_package(sh, rest[-1] if rest else "", io)
    io.err(f"Unknown command: {verb}\n")
    return 1


@command("cmd")
def _cmd(sh: Shell, argv: list[str], io: IO) -> int:
    service = argv[1] if len(argv) > 1 else ""
    if service == "package":
        return _package(sh, argv[2:], io)
    if service == "activity":
        return _am(sh, ["am", *argv[2:]], io)
    if service == "thermalservice":
        if argv[2:3] == ["override-status"] and len(argv) > 3:
            sh.phone.thermal_status = int(argv[3])
            return 0
        if argv[2:3] == ["reset"]:
            sh.phone.thermal_status = 0
            return 0
    if service == "-l":
        io.out("activity\npackage\nthermalservice\n")
        return 0
    io.err(f"cmd: Can't find service: {service}\n")
    return 20


# ---- activity manager
def _parse_intent(args: list[str]) -> tuple[dict, dict[str, str]]:
    """Options and extras of ``am start``; every extra value is kept as the string that reached the device."""
    opts: dict = {"stop": False, "wait": False, "component": None, "action": None, "data": None, "package": None}
    extras: dict[str, str] = {}
    it = iter(args)
    takes_value = {"-P", "--start-profiler", "--sampling", "-R", "--user", "--receiver-permission", "--display",
                   "--windowingMode", "--activityType", "--task", "-t", "-c", "-f", "--attach-agent",
                   "--attach-agent-bind", "-i", "--identifier"}
    for arg in it:
        if arg == "-S":
            opts["stop"] = True
        elif arg == "-W":
            opts["wait"] = True
        elif arg == "-n":
            opts["component"] = next(it)
        elif arg == "-a":
            opts["action"] = next(it)
        elif arg == "-d":
            opts["data"] = next(it)
        elif arg == "-p":
            opts["package"] = next(it)
        elif arg in ("-e", "--es", "--ez", "--ei", "--el", "--ef", "--ed", "--eu", "--ecn", "--eia", "--eial",
                     "--ela", "--elal", "--efa", "--efal", "--esa", "--esal", "--edal"):
            key = next(it)
            extras[key] = next(it)
        elif arg == "--esn":
            extras[next(it)] = ""
        elif arg in takes_value:
            next(it)
        elif arg.startswith("-"):
            continue
        elif opts["data"] is None and opts["component"] is None:
            opts["data"] = arg
    return opts, extras


@command("am")
def _am(sh: Shell, argv: list[str], io: IO) -> int:
    phone = sh.phone
    verb = argv[1] if len(argv) > 1 else ""
    if verb in ("force-stop", "kill", "stop-app"):
        name = next((a for a in argv[2:] if not a.startswith("-") and not a.isdigit()), "")
        phone.force_stop(name)
        return 0
    if verb == "broadcast":
        opts, _extras = _parse_intent(argv[2:])
        io.out(f"Broadcasting: Intent {{ act={opts['action']} flg=0x400000 }}\nBroadcast completed: result=0\n")
        return 0
    if verb not in ("start", "start-activity"):
        io.err(f"Error: Unknown command: {verb}\n")
        return 255
    try:
        opts, extras = _parse_intent(argv[2:])
    except StopIteration:
        io.err("Error: No intent supplied\n")
        return 255
    component = opts["component"] or ""
    package, _, activity = component.partition("/")
    shown = " ".join(x for x in (f"act={opts['action']}" if opts["action"] else "",
                                 f"dat={opts['data']}" if opts["data"] else "",
                                 f"cmp={component}" if component else "") if x)
    report = io.out if opts["wait"] else io.err
    if opts["stop"] and package:
        io.out(f"Stopping: {package}\n")
        phone.force_stop(package)
    io.out(f"Starting: Intent {{ {shown}{' (has extras)' if extras else ''} }}\n")
    pkg = phone.packages.get(package)
    activity_class = pkg.activity_class(activity) if pkg and activity else None
    if activity_class is None:
        full = package + activity if activity.startswith(".") else activity
        if component:
            report(f"Error type 3\nError: Activity class {{{package}/{full}}} does not exist.\n")
        else:
            report(f"Error: Activity not started, unable to resolve Intent {{ {shown} }}\n")
        return 0
    started = time.monotonic()
    if phone.pidof(package) is not None:
        report("Warning: Activity not started, intent has been delivered to currently running top-most instance.\n")
        launch = "HOT"
    else:
        phone.start_app(package, activity, extras)
        launch = "COLD"
    if opts["wait"]:
        waited = int((time.monotonic() - started) * 1000) + 180
        io.out(f"Status: ok\nLaunchState: {launch}\nActivity: {component}\nTotalTime: {waited - 6}\n"
               f"WaitTime: {waited}\nComplete\n")
    return 0


@command("monkey")
def _monkey(sh: Shell, argv: list[str], io: IO) -> int:
    package = argv[argv.index("-p") + 1] if "-p" in argv else ""
    pkg = sh.phone.packages.get(package)
    if pkg is None or not pkg.activities:
        io.err("** No activities found to run, monkey aborted.\n")
        return 251
    if sh.phone.pidof(package) is None:
        sh.phone.start_app(package, pkg.activities[0], {})
    io.out("  bash arg: -p\n  bash arg: " + package + "\nEvents injected: 1\n")
    return 0


# ---- processes
@command("pidof")
def _pidof(sh: Shell, argv: list[str], io: IO) -> int:
    pids = [str(pid) for name in argv[1:] if not name.startswith("-")
            for pid in [sh.phone.pidof(name)] if pid is not None]
    if not pids:
        return 1
    io.out(" ".join(pids[:1] if "-s" in argv else pids) + "\n")
    return 0


@command("kill")
def _kill(sh: Shell, argv: list[str], io: IO) -> int:
    status = 0
    for arg in argv[1:]:
        if arg.startswith("-") or not arg.isdigit():
            continue
        if sh.phone.process(int(arg)) is not None or int(arg) in (1, SYSTEM_SERVER_PID):
            io.err(f"kill: {arg}: Operation not permitted\n")  # the shell user cannot signal app processes
        else:
            io.err(f"kill: {arg}: No such process\n")
        status = 1
    return status


@command("ps")
def _ps(sh: Shell, argv: list[str], io: IO) -> int:
    rows = [("root", 1, 0, 10_904_172, 12_032, "init"), ("system", SYSTEM_SERVER_PID, 1034, 25_411_328, 412_664,
                                                          "system_server"),
            ("root", 1034, 1, 17_035_264, 161_004, "zygote64")]
    rows += [(f"u0_a{p.pid % 1000}", p.pid, 1034, 16_777_216 + p.rss_kb, p.rss_kb, p.package)
             for p in list(sh.phone.processes.values())]
    rows.append(("shell", sh.pid, 12_000, 10_812_416, 3_640, "ps"))
    names = [a for a in argv[1:] if not a.startswith("-")]
    out = ["USER           PID  PPID        VSZ    RSS WCHAN            ADDR S NAME                       \n"]
    for user, pid, ppid, vsz, rss, name in rows:
        if names and name not in names and str(pid) not in names:
            continue
        out.append(f"{user:<10}{pid:>8}{ppid:>6}{vsz:>11}{rss:>7} 0                   0 S {name}\n")
    io.out("".join(out))
    return 0


def proc_file(phone, norm: str) -> bytes | None:
    match = re.fullmatch(r"/proc/(\d+)/(status|cmdline|oom_score_adj)", norm)
    if norm == "/proc/meminfo":
        return (b"MemTotal:       11626340 kB\nMemFree:          612184 kB\nMemAvailable:    5311748 kB\n"
                b"Buffers:            6036 kB\nCached:          4632932 kB\nSwapTotal:       8388604 kB\n"
                b"SwapFree:        6417148 kB\n")
    if match is None:
        return None
    proc = phone.process(int(match.group(1)))
    if proc is None:
        return None
    if match.group(2) == "cmdline":
        return proc.package.encode() + b"\0"
    if match.group(2) == "oom_score_adj":
        return b"0\n"
    uid = 10000 + proc.pid % 1000
    rss = proc.rss_kb
    text = (f"Name:\t{proc.package[-15:]}\nUmask:\t0077\nState:\tS (sleeping)\nTgid:\t{proc.pid}\nNgid:\t0\n"
            f"Pid:\t{proc.pid}\nPPid:\t1034\nTracerPid:\t0\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n"
            f"Gid:\t{uid}\t{uid}\t{uid}\t{uid}\nFDSize:\t256\n"
            f"Groups:\t3003 9997 20{uid % 1000:03d} 50{uid % 1000:03d}\n"
            f"VmPeak:\t{16_990_000 + proc.peak_rss_kb:8d} kB\nVmSize:\t{16_960_000 + rss:8d} kB\nVmLck:\t       0 kB\n"
            f"VmPin:\t       0 kB\nVmHWM:\t{proc.peak_rss_kb:8d} kB\nVmRSS:\t{rss:8d} kB\n"
            f"RssAnon:\t{int(rss * 0.55):8d} kB\nRssFile:\t{int(rss * 0.43):8d} kB\n"
            f"RssShmem:\t{rss - int(rss * 0.55) - int(rss * 0.43):8d} kB\nVmData:\t{2_400_000 + rss:8d} kB\n"
            f"VmStk:\t    8192 kB\nVmExe:\t       8 kB\nVmLib:\t  186344 kB\nVmPTE:\t    2164 kB\n"
            f"VmSwap:\t       0 kB\nCoreDumping:\t0\nTHP_enabled:\t1\nThreads:\t41\nSigQ:\t0/44796\n"
            f"Cpus_allowed:\tff\nCpus_allowed_list:\t0-7\nvoluntary_ctxt_switches:\t1811\n"
            f"nonvoluntary_ctxt_switches:\t327\n")
    return text.encode()


# ---- small system doubles
@command("getenforce")
def _getenforce(sh: Shell, argv: list[str], io: IO) -> int:
    io.out("Enforcing\n")
    return 0


@command("settings")
def _settings(sh: Shell, argv: list[str], io: IO) -> int:
    if argv[1:2] == ["get"]:
        io.out("null\n")
    return 0


@command("wm")
def _wm(sh: Shell, argv: list[str], io: IO) -> int:
    if argv[1:2] == ["size"]:
        io.out("Physical size: 1440x3120\n")
    elif argv[1:2] == ["density"]:
        io.out("Physical density: 600\n")
    return 0


@command("input", "svc", "appops")
def _ignored(sh: Shell, argv: list[str], io: IO) -> int:
    return 0


from . import dumpsys, logcat  # noqa: E402,F401 - register dumpsys, logcat and log
