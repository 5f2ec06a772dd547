"""ONNX Runtime sessions on the Hexagon HTP through the onnxruntime-qnn plugin (on x86: the HTP simulator).

What works with onnxruntime 1.31 + onnxruntime-qnn 2.7.0 (QNN 2.51) on Linux x86_64, found by trying:
- The plugin is registered once per process with ``register_execution_provider_library``; a second call
  raises "already registered", so registration is guarded. It exposes one ``OrtEpDevice`` (type CPU on a host).
- Provider options ``{"backend_type": "htp", "soc_model": "69"}`` select the HTP backend for the SM8750; the
  backend logs ``set opvalidator socModel 69``. ``backend_path=<onnxruntime_qnn.get_qnn_htp_path()>`` works too
  but is not needed. ``htp_arch`` is overridden by ``soc_model`` ("SOC has already been set, ignoring this HTP
  ARCH config"), so we never pass it. An unknown ``soc_model`` fails ("Unknown config socModel").
- ``session.disable_cpu_ep_fallback=1`` turns any node left to the CPU into a session error. The error text
  does not name the node (only the log does), see ``compile.local`` for how we name it.
- ``offload_graph_io_quantization`` (default on) moves the graph-input QuantizeLinear and graph-output
  DequantizeLinear to the CPU EP, but only when CPU fallback is allowed: with fallback disabled the EP keeps
  them on the HTP.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import onnxruntime as ort

from fraqat_deploy.errors import ConfigError
from fraqat_deploy.targets import Target

EP_NAME = "QNNExecutionProvider"
_LOCK = threading.Lock()
_REGISTERED = False

ProfilingLevel = Literal["basic", "detailed"]


#: what the QNN libraries write straight to the process's stdout/stderr on every load, of no use to a user
NATIVE_NOISE = (b"LIBNATIVE: No alternate configuration present",)


@contextlib.contextmanager
def native_noise_filtered() -> Iterator[None]:
    """Keep the QNN libraries' native ``LIBNATIVE`` lines off the console: fds 1 and 2 go to temporary files
    around the native call, and everything but those lines is written back to where it was going."""
    if threading.current_thread() is not threading.main_thread():
        yield  # another thread's output would be held back; the noise is harmless
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved, held = {}, {}
    try:
        for fd in (1, 2):
            saved[fd] = os.dup(fd)
            held[fd] = tempfile.TemporaryFile()
            os.dup2(held[fd].fileno(), fd)
    except OSError:  # no such fds (embedded interpreters): leave the output alone
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        yield
        return
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        for fd in (1, 2):
            os.dup2(saved[fd], fd)
            os.close(saved[fd])
            held[fd].seek(0)
            kept = [line for line in held[fd].read().splitlines(keepends=True)
                    if not any(noise in line for noise in NATIVE_NOISE)]
            held[fd].close()
            if kept:
                os.write(fd, b"".join(kept))


def _qnn_module() -> Any:
    try:
        import onnxruntime_qnn
    except ImportError as exc:  # the wheel exists for x86_64 / AMD64 / aarch64 only
        raise ConfigError(
            "the Hexagon HTP back end needs the onnxruntime-qnn package, which is not installed",
            fix="pip install onnxruntime-qnn (Linux/Windows x86_64 or aarch64), or compile on Qualcomm AI Hub",
        ) from exc
    return onnxruntime_qnn


def register_qnn() -> list[Any]:
    """Register the QNN plugin EP (once per process) and return its ep devices."""
    global _REGISTERED
    with _LOCK:
        if not _REGISTERED:
            qnn = _qnn_module()
            try:
                with native_noise_filtered():
                    ort.register_execution_provider_library(EP_NAME, qnn.get_library_path())
            except Exception as exc:  # registered by someone else in this process: that is fine
                if "already registered" not in str(exc):
                    raise ConfigError(
                        f"cannot load the QNN execution provider from {qnn.get_library_path()}: {exc}",
                        fix="reinstall onnxruntime-qnn matching onnxruntime (pip install -U onnxruntime-qnn)",
                    ) from exc
            _REGISTERED = True
    devices = [d for d in ort.get_ep_devices() if d.ep_name == EP_NAME]
    if not devices:
        raise ConfigError(
            "the QNN execution provider is registered but offers no device",
            fix="check that onnxruntime and onnxruntime-qnn versions match (pip show onnxruntime onnxruntime-qnn)",
        )
    return devices


def provider_options(target: Target, **extra: str | int) -> dict[str, str]:
    """QNN EP options for a target; ``extra`` adds or overrides (values are stringified)."""
    options = {"backend_type": "htp", "soc_model": str(target.soc_model)}
    options.update({k: str(v) for k, v in extra.items()})
    return options


def session_options(
    target: Target,
    *,
    allow_cpu_fallback: bool = False,
    context: Mapping[str, Any] | None = None,
    profiling: str | Path | None = None,
    profiling_level: ProfilingLevel = "detailed",
    qnn_options: Mapping[str, str | int] | None = None,
    log_severity: int = 3,
) -> ort.SessionOptions:
    """SessionOptions with the QNN HTP EP for ``target`` added (see ``htp_session`` for the arguments)."""
    devices = register_qnn()
    so = ort.SessionOptions()
    # Other engineers share this machine's two cores.
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    # The QNN EP warns on every session about features absent on Linux; keep errors only.
    so.log_severity_level = log_severity
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "0" if allow_cpu_fallback else "1")
    if context and context.get("enable", True):
        so.add_session_config_entry("ep.context_enable", "1")
        if context.get("file_path"):
            so.add_session_config_entry("ep.context_file_path", str(context["file_path"]))
        so.add_session_config_entry("ep.context_embed_mode", str(int(context.get("embed_mode", 0))))
    extra: dict[str, str | int] = dict(qnn_options or {})
    if profiling is not None:
        extra.setdefault("profiling_level", profiling_level)
        extra.setdefault("profiling_file_path", str(profiling))
    so.add_provider_for_devices(devices, provider_options(target, **extra))
    return so


def htp_session(
    onnx_path: str | Path | bytes,
    target: Target,
    *,
    allow_cpu_fallback: bool = False,
    context: Mapping[str, Any] | None = None,
    profiling: str | Path | None = None,
    profiling_level: ProfilingLevel = "detailed",
    qnn_options: Mapping[str, str | int] | None = None,
) -> ort.InferenceSession:
    """An InferenceSession on the HTP (the host simulator on x86) for a Q/DQ or EPContext model.

    ``context={"enable": True, "file_path": ".../x_ctx.onnx", "embed_mode": 0}`` also writes an EPContext model
    while creating the session (``compile.local`` uses the ModelCompiler API instead). ``profiling`` is a CSV
    path for QNN's profiler; on the simulator its times and cycles are the host emulation's, not the phone's.
    """
    so = session_options(
        target,
        allow_cpu_fallback=allow_cpu_fallback,
        context=context,
        profiling=profiling,
        profiling_level=profiling_level,
        qnn_options=qnn_options,
    )
    with native_noise_filtered():
        return ort.InferenceSession(_model_arg(onnx_path), so)


def _model_arg(onnx_path: str | Path | bytes) -> str | bytes:
    # A path keeps external data and an EPContext model's .bin resolvable; bytes suit small test graphs.
    return onnx_path if isinstance(onnx_path, bytes) else str(onnx_path)


def cpu_session(onnx_path: str | Path | bytes) -> ort.InferenceSession:
    """The reference: the same ONNX on ONNX Runtime's CPU EP, one thread, exact Q/DQ arithmetic.

    ONNX Runtime 1.32 fuses DequantizeLinear(int4 weight) -> MatMul into MatMulNBits with accuracy level 4,
    which rounds the activations to int8 on the way in: up to ~10 output steps off the Q/DQ arithmetic the
    model describes (and the HTP computes). Accuracy level 0 keeps the fusion's speed with float activations.
    """
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    return ort.InferenceSession(_model_arg(onnx_path), so, providers=["CPUExecutionProvider"])


@functools.lru_cache(maxsize=1)
def qnn_versions() -> dict[str, str | None]:
    """Versions that decide whether a context binary loads: onnxruntime, onnxruntime-qnn, QNN SDK (QAIRT).

    ``qnn_sdk`` is the wheel's declared QNN version; ``qnn_build`` the full build id found in the QNN libraries
    (the same string the EP writes into EPContext nodes as ``ep_sdk_version``). The phone's QNN runtime and
    HTP stub/skel must come from the same QNN version as the context binary.
    """
    versions: dict[str, str | None] = {"onnxruntime": ort.__version__}
    try:
        qnn = _qnn_module()
    except ConfigError:
        return versions | {"onnxruntime_qnn": None, "qnn_sdk": None, "qnn_build": None}
    info = getattr(qnn, "build_and_package_info", None)
    versions["onnxruntime_qnn"] = getattr(info, "__version__", None)
    versions["qnn_sdk"] = getattr(info, "qnn_version", None)
    versions["qnn_build"] = _qnn_build_id(Path(qnn.get_library_path()).parent)
    return versions


def _qnn_build_id(lib_dir: Path) -> str | None:
    # libQnnSaver is small (~0.5 MB) and carries the same build string as the 100 MB HTP library.
    pattern = re.compile(rb"v(\d+\.\d+\.\d+\.\d{6,})")
    for name in ("libQnnSaver.so", "QnnSaver.dll", "libQnnSystem.so", "QnnSystem.dll"):
        path = lib_dir / name
        if path.is_file():
            match = pattern.search(path.read_bytes())
            if match:
                return match.group(1).decode()
    return None


def compare_arrays(actual: Any, reference: Any, step: float | None = None) -> dict[str, float | None]:
    """Errors of ``actual`` (HTP) against ``reference`` (CPU).

    ``rel`` is mean|a-b| / mean|b|, the same measure docs/htp-notes.md quotes for the Sana findings; ``steps`` is the
    largest error in units of the tensor's quantization step, when the step is known.
    """
    import numpy as np

    a = np.asarray(actual, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: HTP {a.shape} vs CPU {b.shape}")
    diff = np.abs(a - b)
    max_abs = float(diff.max()) if diff.size else 0.0
    mean_abs = float(diff.mean()) if diff.size else 0.0
    mean_ref = float(np.abs(b).mean()) if b.size else 0.0
    # An all-zero reference has no scale of its own: any error is then "infinitely" relative.
    rel = mean_abs / mean_ref if mean_ref > 0 else (0.0 if mean_abs == 0 else float("inf"))
    return {
        "max_abs": max_abs,
        "mean_abs": mean_abs,
        "rel": rel,
        "ref_max_abs": float(np.abs(b).max()) if b.size else 0.0,
        "step": step,
        "steps": max_abs / step if step else None,
        "finite": bool(np.isfinite(a).all()),
    }
