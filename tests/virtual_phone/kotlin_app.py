"""The app's own engine on the virtual phone: ``am start`` of ``BenchmarkActivity`` runs the Kotlin core.

``kotlin_app(classpath)`` is an app hook (see ``apps.py``) that does what ``BenchmarkActivity`` does around the
engine, and nothing more: it reads the ``request`` extra and starts the real Kotlin ``BenchmarkEngine`` +
``OrtBackend`` (``android_app/core``, compiled once per session by ``build-and-test.sh --classpath``) in a JVM,
through the host entry point ``dev.fraqat.deploy.host.HostEngineKt``, on the phone's sandboxed files folder. The
engine opens the pushed context binaries with the desktop ONNX Runtime Java package and the QNN plugin EP of the
``onnxruntime-qnn`` wheel, on the host HTP simulator (``soc_model`` from the request).

What is simulated: the Activity shell (this function) and the phone's hardware (the HTP is the host simulator, the
result says ``runtime: htp-simulator``; the Build fields are the phone's properties, as ``Build.MODEL`` reads them).
What is real: the app's engine code, the compiled models, ONNX Runtime's Java API and the QNN EP.
The JVM's output goes to logcat; ``dumpsys meminfo`` reports the JVM's resident memory; ``am force-stop`` kills it;
a JVM that exits non-zero is an app crash.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "android_app" / "core" / "build-and-test.sh"
SCHEMAS = ROOT / "fraqat_deploy" / "device" / "schemas"
MAIN_CLASS = "dev.fraqat.deploy.host.HostEngineKt"


class KotlinUnavailable(RuntimeError):
    """No JDK, or the core did not compile."""


@functools.lru_cache(maxsize=1)
def engine_classpath() -> str:
    """Compile the Kotlin core if its sources changed (once per session) and return the runtime classpath."""
    if shutil.which("java") is None:
        raise KotlinUnavailable("no JDK: the Kotlin engine needs `java` (JDK 17+)")
    proc = subprocess.run(["bash", str(BUILD_SCRIPT), "--classpath"], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise KotlinUnavailable(f"the Kotlin core did not build:\n{proc.stderr[-4000:]}")
    return proc.stdout.strip().splitlines()[-1]


def qnn_dir() -> Path:
    """The onnxruntime-qnn wheel's folder: the QNN plugin EP and the x86_64 QNN libraries (HTP simulator)."""
    import onnxruntime_qnn

    return Path(onnxruntime_qnn.get_library_path()).parent


def engine_command(classpath: str, files_dir: Path, request: Path, device: dict[str, str] | None = None,
                   qnn: Path | None = None, jvm: tuple[str, ...] = ()) -> list[str]:
    cmd = ["java", *jvm, "-cp", classpath, MAIN_CLASS, "--files-dir", str(files_dir), "--request", str(request),
           "--schemas", str(SCHEMAS), "--qnn-dir", str(qnn or qnn_dir())]
    for key, value in (device or {}).items():
        cmd += [f"--{key}", value]
    return cmd


def run_engine(files_dir: Path, request: Path, device: dict[str, str] | None = None, qnn: Path | None = None,
               jvm: tuple[str, ...] = (), timeout: float = 600) -> subprocess.CompletedProcess:
    """The Kotlin engine on one request, outside any phone (as ``--device sim`` runs the Python one); ``qnn``
    replaces the onnxruntime-qnn wheel's folder, ``jvm`` adds JVM options."""
    return subprocess.run(engine_command(engine_classpath(), files_dir, request, device, qnn, jvm),
                          capture_output=True, text=True, timeout=timeout)


def _rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def kotlin_app(classpath: str | None = None):
    """The app hook: ``phone.install_app(PACKAGE, ..., app=kotlin_app())``."""
    cp = classpath or engine_classpath()

    def app(proc, extras: dict[str, str]) -> None:
        request = extras.get("request")
        if request is None:  # the activity shows how to start it, and waits
            proc.log("start me from the CLI (fraqat-deploy bench)")
            proc.stop_requested.wait()
            return
        props = proc.phone.props
        device = {"manufacturer": props["ro.product.manufacturer"], "model": props["ro.product.model"],
                  "soc": props["ro.soc.model"], "android-sdk": props["ro.build.version.sdk"]}
        files = proc.host_path(proc.files_dir)
        cmd = engine_command(cp, files, proc.host_path(request), device)
        proc.log(f"benchmark request {request}")
        child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        tail: list[str] = []

        def pump() -> None:
            for line in child.stdout:
                tail[:] = [*tail[-20:], line.rstrip()]
                if proc.alive and line.strip():
                    proc.phone.logcat.add(proc.pid, "I", "fraqat", line.rstrip(), tid=proc.pid + 17)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            while child.poll() is None:
                rss = _rss_kb(child.pid)
                if rss is not None:
                    proc.set_memory(pss_kb=rss)
                if proc.wait(0.2):  # am force-stop
                    child.kill()
                    child.wait()
                    return
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            reader.join(5)
        if child.returncode != 0:
            raise RuntimeError(f"the engine's JVM exited with status {child.returncode}: " + " | ".join(tail[-3:]))
        proc.log("benchmark done")

    return app
