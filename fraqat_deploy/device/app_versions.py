"""The Android app's version matrix (``device/app_versions.toml``, also the Gradle build's version catalog).

The CLI records it in ``compile.json`` (``app_runtime``) and warns when the QNN SDK that compiled a context binary is
not the QNN runtime the app ships: such a binary does not load on the phone.
"""

from __future__ import annotations

import functools
import sys
from importlib import resources
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: what each catalog version means, by the key compile.json's ``app_runtime`` uses
_KEYS = {
    "onnxruntime_android": "onnxruntime-android",
    "onnxruntime_qnn": "qnn-ep",
    "qnn_runtime": "qnn-runtime",
    "qairt": "qairt",
}


@functools.lru_cache(maxsize=1)
def app_runtime() -> dict[str, str]:
    """The app's pinned ONNX Runtime (Android), QNN EP, QNN runtime and the QAIRT version its context binaries need."""
    text = resources.files("fraqat_deploy.device").joinpath("app_versions.toml").read_text(encoding="utf-8")
    versions: dict[str, Any] = tomllib.loads(text)["versions"]
    return {key: str(versions[alias]) for key, alias in _KEYS.items()}


def _release(version: str | None) -> str | None:
    # "2.51.0.260929181845" (a build id) -> "2.51.0"; Maven and the wheel name major.minor.patch
    return ".".join(version.split(".")[:3]) if version else None


def qnn_mismatch(compile_versions: dict[str, Any], runtime: dict[str, str] | None = None) -> str | None:
    """A one-line warning when the QNN version that compiled (``compile.json`` versions) differs from the app's pinned
    QNN runtime, else None (also None when the compile's QNN version is unknown)."""
    runtime = runtime or app_runtime()
    built = _release(compile_versions.get("qnn_sdk") or compile_versions.get("qnn_build")
                     or compile_versions.get("qairt"))
    pinned = _release(runtime["qnn_runtime"])
    if built is None or built == pinned:
        return None
    return (f"compiled with QNN {built}, but the app ships QNN runtime {pinned}: the phone will refuse these context "
            f"binaries. Build the app with -PqnnRuntimeVersion={built} (android_app/README.md, \"Versions\"), or "
            f"compile with onnxruntime-qnn for QNN {pinned}")
