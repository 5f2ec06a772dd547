"""Export memory at scale, scaled down: the peak resident memory an export adds, relative to the component's
float weights, on a mid-size random model (~200 MB of fp32 weights, big enough that the weights dominate what
the process holds). The real-size figures are in ``benchmarks/real_size.py``; this keeps the streaming export
from regressing in CI.

Runs in a fresh interpreter so the peak (``VmHWM``) belongs to the export alone."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

#: the issue's target for a real component is peak RSS <= 3x its fp32 weights, the model itself included; the
#: export before streaming needed ~8x here
MAX_PEAK_OVER_WEIGHTS = 3.0

_CHILD = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import torch
    from fraqat_deploy.export import export_component
    from fraqat_deploy.models.base import Component

    def status(key):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    class Stack(torch.nn.Module):
        def __init__(self, layers, width):
            super().__init__()
            self.layers = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(layers))

        def forward(self, x):
            for layer in self.layers:
                x = x + torch.nn.functional.gelu(layer(x))
            return x

    torch.set_num_threads(1)
    base = status("VmRSS")
    torch.manual_seed(0)
    module = Stack(24, 1536).eval()
    weight_bytes = sum(p.numel() * 4 for p in module.parameters())
    calibration = [(torch.randn(1, 256, 1536),) for _ in range(2)]
    # as export_run does with a component that shares no weights with another: the export owns the module
    record = export_component(Component("stack", module, ["x"], ["y"], calibration), Path(sys.argv[1]), owned=True)
    del module
    print(json.dumps({"base": base, "peak": status("VmHWM"), "weight_bytes": weight_bytes,
                      "passed": all(m["passed"] for m in record["parity"].values())}))
""")


@pytest.mark.slow
def test_export_peak_memory_stays_within_three_times_the_float_weights(tmp_path: Path):
    done = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path)], capture_output=True, text=True,
                          timeout=600, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(done.stdout.strip().splitlines()[-1])
    assert r["passed"]
    ratio = (r["peak"] - r["base"]) / r["weight_bytes"]
    assert ratio <= MAX_PEAK_OVER_WEIGHTS, f"export peak is {ratio:.2f}x the float weights"
    # the Q/DQ graph's weights were written to its external data file (not only kept in memory)
    assert (tmp_path / "stack.onnx").is_file()
