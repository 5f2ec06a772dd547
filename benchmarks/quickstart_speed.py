"""How long the README's first command takes: `fraqat-deploy quickstart` from nothing, output to a log file (not a
terminal), on this machine as it is and with a second CPU-heavy process running beside it.

    python benchmarks/quickstart_speed.py                 # both conditions -> results/quickstart_speed.*
    python benchmarks/quickstart_speed.py --mode loaded   # one condition

"loaded": a second process spins one core at 100% for the whole run (a laptop busy with other work). The machine's
own load (other users' processes) is sampled every 5 s and reported beside each figure, since "idle" can only
mean "no extra load added by this benchmark" on a shared machine. Also reported: the thread count the CLI chose,
each stage's seconds, and how many progress lines the log received (the log must not stay silent for minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
HOG = "import time\nwhile True:\n    sum(i * i for i in range(10000))\n"


def _loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0]) if Path("/proc/loadavg").exists() else 0.0


def run_once(mode: str, steps: int | None, timeout_s: float | None = None, keep: Path | None = None) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"qs-speed-{mode}-"))
    hog = subprocess.Popen([sys.executable, "-c", HOG]) if mode == "loaded" else None
    samples: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(_loadavg())
            stop.wait(5)

    sampler = threading.Thread(target=sample, daemon=True)
    log_path = work / "quickstart.log"
    cmd = [sys.executable, "-m", "fraqat_deploy.cli", "quickstart", "--out", str(work / "qs")]
    if steps:
        cmd += ["--steps", str(steps)]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "FRAQAT_THREADS")}  # CLI default
    try:
        time.sleep(3 if hog else 0)
        load_before = _loadavg()
        sampler.start()
        started = time.perf_counter()
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work)
            try:
                returncode = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:  # report how far it got and the pace, not nothing
                proc.terminate()
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                returncode = None
        seconds = time.perf_counter() - started
    finally:
        stop.set()
        if hog:
            hog.kill()
            hog.wait()
    text = log_path.read_text(errors="replace")
    progress_lines = [line for line in text.splitlines() if re.match(r"^\[\d\d:\d\d:\d\d\] ", line)]
    manifest = json.loads((work / "qs" / "run.json").read_text()) if (work / "qs" / "run.json").exists() else {}
    threads = manifest.get("stages", {}).get("train", {}).get("environment", {}).get("threads", {})
    steps_seen = [m for m in (re.search(r"FraQAT \w+: (\d+)/(\d+)", line) for line in progress_lines) if m]
    reached = steps_seen[-1] if steps_seen else None  # the FraQAT run's last step line (PTQ has no steps)
    result = {
        "mode": mode,
        "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(time.time() - seconds)),
        "exit_code": returncode,
        "finished": returncode == 0,
        "minutes": round(seconds / 60, 2),
        "stopped_after_timeout": returncode is None,
        "training_reached": f"{reached.group(1)}/{reached.group(2)} steps" if reached else None,
        "last_progress_line": progress_lines[-1] if progress_lines else None,
        "steps": steps or "default (the schedule's epochs)",
        "threads": threads,
        "load_before": load_before,
        "load_mean": round(statistics.mean(samples), 2) if samples else None,
        "load_max": max(samples) if samples else None,
        "cpu_cores": os.cpu_count(),
        "stage_seconds": manifest.get("quickstart", {}).get("seconds", {}),
        "progress_lines": len(progress_lines),
        "longest_silence_s": _longest_gap(progress_lines, seconds),
        "log_tail": text.splitlines()[-3:],
    }
    if keep and (work / "qs").is_dir():  # e.g. for benchmarks/quickstart_quality.py --run
        shutil.move(str(work / "qs"), str(keep))
        result["kept"] = str(keep)
    shutil.rmtree(work, ignore_errors=True)
    return result


def _longest_gap(lines: list[str], total: float) -> float | None:
    stamps = []
    for line in lines:
        h, m, s = (int(x) for x in line[1:9].split(":"))
        stamps.append(h * 3600 + m * 60 + s)
    if len(stamps) < 2:
        return None
    return float(max(((b - a) % 86400 for a, b in zip(stamps, stamps[1:], strict=False)), default=0))


def table(results: list[dict]) -> str:
    rows = ["| condition | minutes | threads chosen | load avg (mean / max) | progress lines | longest silence |",
            "|---|---|---|---|---|---|"]
    for r in results:
        cond = "machine as is" if r["mode"] == "idle" else "+ one CPU-heavy process"
        if r.get("stopped_after_timeout"):
            stages = re.search(r"quick start: (\d+)/(\d+)", r.get("last_progress_line") or "")
            how_far = f"{stages.group(1)} of {stages.group(2)} stages done" if stages else \
                f"training at {r.get('training_reached') or 'its start'}"
            when = f"stopped at {r['minutes']:.1f} ({how_far})"
        else:
            when = f"{r['minutes']:.1f}{'' if r['exit_code'] == 0 else ' (FAILED)'}"
        rows.append(f"| {cond} | {when} | "
                    f"{r['threads'].get('threads', '?')} of {r['threads'].get('physical_cores', '?')} cores | "
                    f"{r['load_mean']} / {r['load_max']} | {r['progress_lines']} | "
                    f"{r['longest_silence_s'] if r['longest_silence_s'] is not None else '-'} s |")
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=["idle", "loaded", "both"], default="both")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the quick start's)")
    parser.add_argument("--timeout-min", type=float, default=None,
                        help="stop a run after this long and report how far it got (its last progress line)")
    parser.add_argument("--render", action="store_true", help="only rewrite the table from the saved JSON")
    parser.add_argument("--keep", type=Path, help="keep the quick start's run folder here (one --mode only)")
    args = parser.parse_args()
    if args.keep and args.mode == "both":
        parser.error("--keep needs one --mode (idle or loaded)")
    if args.keep and args.keep.exists():
        parser.error(f"--keep {args.keep} exists: pass a new folder")
    if args.render:
        saved = json.loads((RESULTS / "quickstart_speed.json").read_text())["results"]
        (RESULTS / "quickstart_speed.md").write_text(table(saved))
        print(table(saved))
        return
    modes = ["idle", "loaded"] if args.mode == "both" else [args.mode]
    results = []
    for mode in modes:
        print(f"quick start, {mode} ...", flush=True)
        results.append(run_once(mode, args.steps, args.timeout_min * 60 if args.timeout_min else None, args.keep))
        print(json.dumps(results[-1], indent=1), flush=True)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "quickstart_speed.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    merged = {r["mode"]: r for r in old.get("results", [])} | {r["mode"]: r for r in results}
    from fraqat_deploy.runs import environment

    data = {"what": __doc__.strip().split("\n")[0], "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "environment": environment(), "results": list(merged.values())}
    path.write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / "quickstart_speed.md").write_text(table(list(merged.values())))
    print(table(list(merged.values())))


if __name__ == "__main__":
    main()
