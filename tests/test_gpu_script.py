"""bench/gpu.sh in its tiny CPU mode: every section runs end to end, so the GPU run does not rot between devices."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.ray, pytest.mark.timeout(400)]  # ~40 s idle (Ray start-up dominates); 125 s at load 22


def test_gpu_script_tiny_runs_every_section(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--tiny", "--out", str(tmp_path / "gpu")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=380)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "gpu.json").read_text())
    assert (tmp_path / "gpu.md").read_text().startswith("# GPU run (tiny, CPU)")
    s = res["sections"]
    assert set(s) == {"embed", "finetune", "search", "logme"} and not any("error" in v for v in s.values())
    assert s["embed"]["rows"][0]["ray_img_s"] > 0 and s["finetune"]["plain_steps_per_s"] > 0
    # the device loops are raal's algorithms: same k-center picks, same ActiveFT losses, same LogME-PED score
    assert s["search"]["kcenter_same_picks"] == s["search"]["kcenter_compared"]
    assert s["search"]["activeft_max_loss_rel_diff"] < 1e-4
    assert s["logme"]["score_rel_diff"] < 1e-8 and s["logme"]["ped_steps"][0] == s["logme"]["ped_steps"][1]
