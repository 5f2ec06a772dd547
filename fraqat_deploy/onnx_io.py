"""Saving and checking ONNX graphs of any size.

Protobuf caps a serialized message at 2 GB, and a real model passes it in float (Sana 600M's transformer is
2.4 GB, its Gemma-2 2B text encoder ~10 GB): such a graph keeps its tensors in one external data file beside
it, ``<name>.onnx.data``, which ONNX Runtime, the QNN compiler and ``onnx.load`` resolve from the model's folder.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx
from onnx.external_data_helper import load_external_data_for_model

#: graphs whose tensors reach this many bytes are saved with external data (protobuf's 2 GB, less headroom for
#: the graph itself)
EXTERNAL_DATA_BYTES = (2 << 30) - (64 << 20)
#: tensors smaller than this stay inside the .onnx (shapes, scales, zero points)
INLINE_TENSOR_BYTES = 1024


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the graph's initializers and node attributes (Constant tensors), as serialized."""
    return sum(t.ByteSize() for t in model.graph.initializer) + sum(n.ByteSize() for n in model.graph.node)


def needs_external_data(model: onnx.ModelProto) -> bool:
    return tensor_bytes(model) >= EXTERNAL_DATA_BYTES


def data_file(path: Path) -> Path:
    return path.with_name(f"{path.name}.data")


def save_model(model: onnx.ModelProto, path: str | Path, *, check: bool = False) -> None:
    """Save ``model`` at ``path`` (with ``<name>.onnx.data`` beside it when it is too big for one protobuf);
    ``model`` itself keeps its tensors in memory. ``check``: run ``onnx.checker`` first (on the saved files for a
    big model, which are removed again if it fails), so an invalid graph is never left on disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = data_file(path)
    data.unlink(missing_ok=True)  # onnx appends to an existing data file; a stale one would also be misleading
    if not needs_external_data(model):
        if check:
            onnx.checker.check_model(model)
        onnx.save(model, str(path))
        return
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name,
              size_threshold=INLINE_TENSOR_BYTES)
    load_external_data_for_model(model, str(path.parent))  # onnx.save moved the tensors out of ``model``
    if check:
        try:
            onnx.checker.check_model(str(path))
        except onnx.checker.ValidationError:
            path.unlink(missing_ok=True)
            data.unlink(missing_ok=True)
            raise


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with ``value_info`` filled in; for a big model only the graph comes back (tensors not loaded)."""
    if not needs_external_data(model):
        return onnx.shape_inference.infer_shapes(model)
    with tempfile.TemporaryDirectory(prefix="fraqat-shapes-") as tmp:
        src, out = Path(tmp) / "model.onnx", Path(tmp) / "inferred.onnx"
        save_model(model, src)
        onnx.shape_inference.infer_shapes_path(str(src), str(out))
        return onnx.load(str(out), load_external_data=False)


@contextlib.contextmanager
def session_source(model: onnx.ModelProto) -> Iterator[str | bytes]:
    """What ``onnxruntime.InferenceSession`` takes for ``model``: its bytes, or a temporary file for a big one
    (valid while the context is open)."""
    if not needs_external_data(model):
        yield model.SerializeToString()
        return
    with tempfile.TemporaryDirectory(prefix="fraqat-session-") as tmp:
        path = Path(tmp) / "model.onnx"
        save_model(model, path)
        yield str(path)
