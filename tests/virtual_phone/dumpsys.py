"""``dumpsys``: meminfo (Android 15 layout, TOTAL PSS / TOTAL RSS / App Summary), thermalservice, package, battery."""

from __future__ import annotations

import hashlib
import time

from .apps import AppProcess
from .interp import IO, Shell, command

_BOOT = time.monotonic() - 86_400.0  # the phone has been up for a day


def _tag(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:7]


def _uptime_ms() -> int:
    return int((time.monotonic() - _BOOT) * 1000)


def meminfo(proc: AppProcess) -> str:
    m = proc.memory
    java, native, code, stack, graphics, other, system = (m["java_heap"], m["native_heap"], m["code"], m["stack"],
                                                         m["graphics"], m["private_other"], m["system"])
    extra = m["rss_extra"]
    dalvik, art = java * 3 // 4, java - java * 3 // 4
    so, jar, apk, dex = code * 55 // 100, code * 10 // 100, code * 5 // 100, code * 25 // 100
    oat = code - so - jar - apk - dex
    dalvik_other, other_dev, other_mmap = other * 6 // 10, other // 10, other // 10
    unknown = other - dalvik_other - other_dev - other_mmap
    # rows: name, pss, private dirty, private clean, swap, rss, (heap size, alloc, free)
    rows = [
        ("Native Heap", native, native * 99 // 100, 0, 0, native + 1_612,
         (native * 5 // 4, native, native * 5 // 4 - native)),
        ("Dalvik Heap", dalvik, dalvik * 98 // 100, 0, 0, dalvik + 4_096, (24_576, dalvik, 24_576 - dalvik)),
        ("Dalvik Other", dalvik_other, dalvik_other * 9 // 10, 0, 0, dalvik_other + 1_200, None),
        ("Stack", stack, stack, 0, 0, stack + 8, None),
        ("Ashmem", 4, 0, 0, 0, 20, None),
        ("Other dev", other_dev + system // 10, 0, other_dev, 0, other_dev + 480, None),
        (".so mmap", so + system * 5 // 10, so // 10, so * 8 // 10, 0, so + extra * 45 // 100, None),
        (".jar mmap", jar + system * 2 // 10, 0, jar, 0, jar + extra * 30 // 100, None),
        (".apk mmap", apk, 0, apk * 9 // 10, 0, apk + 1_400, None),
        (".dex mmap", dex, 8, dex * 9 // 10, 0, dex + 900, None),
        (".oat mmap", oat, 0, oat // 2, 0, oat + 1_900, None),
        (".art mmap", art + system * 2 // 10, art * 9 // 10, 4, 0, art + extra * 15 // 100, None),
        ("Other mmap", other_mmap, 8, other_mmap // 2, 0, other_mmap + 1_100, None),
        ("GL mtrack", graphics, graphics, 0, 0, graphics, None),
        ("Unknown", unknown, unknown, 0, 0, unknown + 300, None),
    ]
    total_pss = proc.pss_kb
    drift = total_pss - sum(r[1] for r in rows)
    rows[-1] = (rows[-1][0], rows[-1][1] + drift, *rows[-1][2:])
    total_rss = proc.rss_kb
    rows[6] = (*rows[6][:5], rows[6][5] + total_rss - sum(r[5] for r in rows), None)
    lines = [
        "Applications Memory Usage (in Kilobytes):",
        f"Uptime: {_uptime_ms()} Realtime: {_uptime_ms() + 51_233}",
        "",
        f"** MEMINFO in pid {proc.pid} [{proc.package}] **",
        "                   Pss  Private  Private  SwapPss      Rss     Heap     Heap     Heap",
        "                 Total    Dirty    Clean    Dirty    Total     Size    Alloc     Free",
        "                ------   ------   ------   ------   ------   ------   ------   ------",
    ]
    for name, pss, dirty, clean, swap, rss, heap in rows:
        cells = f"{name:>13} {pss:8d} {dirty:8d} {clean:8d} {swap:8d} {rss:8d}"
        if heap:
            cells += f" {heap[0]:8d} {heap[1]:8d} {heap[2]:8d}"
        lines.append(cells)
    heap_size = rows[0][6][0] + rows[1][6][0]
    heap_alloc = rows[0][6][1] + rows[1][6][1]
    lines.append(f"{'TOTAL':>13} {total_pss:8d} {sum(r[2] for r in rows):8d} {sum(r[3] for r in rows):8d} "
                 f"{0:8d} {total_rss:8d} {heap_size:8d} {heap_alloc:8d} {heap_size - heap_alloc:8d}")
    rss = {"java": dalvik + art + 4_096 + extra * 15 // 100, "native": native + 1_612, "stack": stack + 8,
           "graphics": graphics}
    rss["code"] = sum(r[5] for r in rows[6:11])
    rss["unknown"] = total_rss - sum(rss.values())
    lines += [
        " ",
        " App Summary",
        "                       Pss(KB)                        Rss(KB)",
        "                        ------                         ------",
        f"           Java Heap: {java:8d}                       {rss['java']:8d}",
        f"         Native Heap: {native:8d}                       {rss['native']:8d}",
        f"                Code: {code:8d}                       {rss['code']:8d}",
        f"               Stack: {stack:8d}                       {rss['stack']:8d}",
        f"            Graphics: {graphics:8d}                       {rss['graphics']:8d}",
        f"       Private Other: {other:8d}",
        f"              System: {total_pss - java - native - code - stack - graphics - other:8d}",
        f"             Unknown:                                 {rss['unknown']:8d}",
        " ",
        f"           TOTAL PSS: {total_pss:8d}            TOTAL RSS: {total_rss:8d}       TOTAL SWAP PSS: {0:8d}",
        " ",
        " Objects",
        "               Views:       14         ViewRootImpl:        1",
        "         AppContexts:        6           Activities:        1",
        "              Assets:       32        AssetManagers:        0",
        "       Local Binders:       17        Proxy Binders:       43",
        "       Parcel memory:        6         Parcel count:       25",
        "    Death Recipients:        1             WebViews:        0",
        " ",
        " SQL",
        "         MEMORY_USED:        0",
        "  PAGECACHE_OVERFLOW:        0          MALLOC_SIZE:        0",
        " ",
    ]
    return "\n".join(lines) + "\n"


def _meminfo(sh: Shell, args: list[str], io: IO) -> int:
    targets = [a for a in args if not a.startswith("-")]
    if not targets:
        procs = sorted(sh.phone.processes.values(), key=lambda p: -p.pss_kb)
        io.out("Applications Memory Usage (in Kilobytes):\n"
               f"Uptime: {_uptime_ms()} Realtime: {_uptime_ms() + 51_233}\n\nTotal PSS by process:\n"
               + "".join(f"{p.pss_kb:>11,}K: {p.package} (pid {p.pid} / activities)\n" for p in procs)
               + "\nTotal RAM: 11,626,340K (status normal)\n Free RAM:  5,311,748K\n")
        return 0
    target = targets[0]
    procs = [p for p in list(sh.phone.processes.values()) if p.package == target or str(p.pid) == target]
    if not procs:
        io.out(f"No process found for: {target}\n")
        return 0
    io.out(meminfo(procs[0]))
    return 0


def _thermal(sh: Shell, io: IO) -> int:
    status = sh.phone.thermal_status
    skin = 33.0 + 4.5 * status
    io.out("IsStatusOverride: false\nThermalEventListeners:\n\tcallbacks: 2\n\tkilled: false\n\tbroadcasts count: -1\n"
           "ThermalStatusListeners:\n\tcallbacks: 3\n\tkilled: false\n\tbroadcasts count: -1\n"
           f"Thermal Status: {status}\nCached temperatures:\n"
           f"\tTemperature{{mValue={skin:.1f}, mType=3, mName=skin, mStatus={status}}}\n"
           f"\tTemperature{{mValue={skin + 6.2:.1f}, mType=0, mName=cpu-0-0-0, mStatus={status}}}\n"
           "HAL Ready: true\nHAL connection:\n\tThermalHAL AIDL 2  connected: yes\n"
           "Current temperatures from HAL:\n"
           f"\tTemperature{{mValue={skin:.1f}, mType=3, mName=skin, mStatus={status}}}\n"
           f"\tTemperature{{mValue={skin + 2.9:.1f}, mType=2, mName=battery, mStatus=0}}\n"
           "Current cooling devices from HAL:\n\tCoolingDevice{mValue=0, mType=2, mName=cpu-cluster0}\n")
    return 0


def dump_package(sh: Shell, name: str, io: IO) -> int:
    pkg = sh.phone.packages.get(name)
    if pkg is None:
        io.out(f"Unable to find package: {name}\n")
        return 0
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(pkg.installed_at))
    activities = "".join(f"        {_tag(a)} {name}/{a}\n" for a in pkg.activities)
    io.out(f"Activity Resolver Table:\n  Non-Data Actions:\n      android.intent.action.MAIN:\n{activities}\n"
           f"Packages:\n  Package [{name}] ({_tag(name)}):\n    appId=10254\n"
           f"    pkg=Package{{{_tag(name)} {name}}}\n    codePath={pkg.code_path}\n"
           f"    resourcePath={pkg.code_path}\n    primaryCpuAbi=arm64-v8a\n    secondaryCpuAbi=null\n"
           f"    versionCode={pkg.version_code} minSdk=31 targetSdk=35\n    minExtensionVersions=[]\n"
           f"    versionName={pkg.version_name}\n    apkSigningVersion=2\n"
           f"    signatures=PackageSignatures{{{_tag(name + 's')} version:2, signatures:[{_tag(name)[:8]}], "
           "past signatures:[]}\n"
           "    flags=[ HAS_CODE ALLOW_CLEAR_USER_DATA ALLOW_BACKUP ]\n"
           "    pkgFlags=[ HAS_CODE ALLOW_CLEAR_USER_DATA ALLOW_BACKUP ]\n"
           f"    timeStamp={stamp}\n    firstInstallTime={stamp}\n    lastUpdateTime={stamp}\n"
           f"    installerPackageName=null\n    User 0: ceDataInode=0 installed=true hidden=false suspended=false "
           f"distractionFlags=0 stopped=false notLaunched=false enabled=0 instant=false virtual=false\n")
    return 0


@command("dumpsys")
def _dumpsys(sh: Shell, argv: list[str], io: IO) -> int:
    service = argv[1] if len(argv) > 1 else ""
    args = argv[2:]
    if service == "meminfo":
        return _meminfo(sh, args, io)
    if service == "thermalservice":
        return _thermal(sh, io)
    if service == "package":
        return dump_package(sh, next((a for a in args if not a.startswith("-")), ""), io)
    if service == "battery":
        io.out("Current Battery Service state:\n  AC powered: false\n  USB powered: true\n  Wireless powered: false\n"
               "  status: 2\n  health: 2\n  present: true\n  level: 84\n  scale: 100\n  voltage: 4211\n"
               f"  temperature: {300 + 20 * sh.phone.thermal_status}\n  technology: Li-ion\n")
        return 0
    if service == "-l":
        io.out("Currently running services:\n  activity\n  battery\n  meminfo\n  package\n  thermalservice\n")
        return 0
    io.out(f"Can't find service: {service}\n")
    return 0
