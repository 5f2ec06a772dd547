"""Write the numbers both sides of the phone protocol must agree on: statistics and the Sana sampler.

``fraqat_deploy/device/schemas/examples/{stats,scheduler}.json`` are produced by the Python implementation and
read by the Kotlin core's tests (android_app/core). ``tests/test_bench.py`` regenerates them and fails if the
committed files differ, so neither side can drift alone. Run after changing either implementation:

    python scripts/protocol_goldens.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from fraqat_deploy.device import pipeline as pipe
from fraqat_deploy.device.protocol import EXAMPLES_DIR, summarize

STATS_CASES = [[5.0], [3.0, 1.0, 2.0], [10.5, 11.25, 9.75, 30.0, 10.0], [float(v) for v in range(1, 21)]]
TIME_PROJ = {"channels": 8, "flip_sin_to_cos": True, "downscale_freq_shift": 0.0, "max_period": 10000.0, "scale": 1.0}


def goldens() -> dict[str, dict]:
    stats = {"definition": "p50/p90: linear interpolation at rank q/100*(n-1) of the sorted values; std: population",
             "cases": [{"values": v, "summary": summarize(v)} for v in STATS_CASES]}
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 2, 2)).astype(np.float32)
    v = rng.standard_normal((2, 2, 2, 2)).astype(np.float32)
    sigmas = pipe.flow_sigmas(4, 1.5)
    guided = pipe.guided(v, 2.0)
    stepped = x + (sigmas[1] - sigmas[0]) * guided
    timesteps = np.array([1000.0, 562.5, 3.25], np.float32)
    scheduler = {
        "flow_sigmas": [{"steps": s, "shift": sh, "sigmas": pipe.flow_sigmas(s, sh).tolist()}
                        for s, sh in ((1, 1.0), (4, 1.5), (8, 1.5), (20, 3.0))],
        "timestep_features": {"time_proj": TIME_PROJ, "timesteps": timesteps.tolist(),
                              "features": pipe.timestep_features(timesteps, TIME_PROJ).tolist()},
        "euler_cfg": {"x": x.ravel().tolist(), "v": v.ravel().tolist(), "shape": list(x.shape), "guidance": 2.0,
                      "sigma": float(sigmas[0]), "sigma_next": float(sigmas[1]),
                      "guided": guided.ravel().tolist(), "x_next": stepped.ravel().tolist()},
    }
    return {"stats": stats, "scheduler": scheduler}


def main() -> int:
    for name, data in goldens().items():
        path = Path(EXAMPLES_DIR) / f"{name}.json"
        path.write_text(json.dumps(data, indent=1) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
