"""inspect-checkpoint reads every state-dict format without importing torch, and its numbers
are those torch itself reads (bfloat16, float16 and float8 included)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ckpt_factory import FORMATS, save_every_format, save_safetensors, save_zip

from gradscope.checkpoint import open_checkpoint

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, runpy, sys
sys.argv = ["gradscope", "inspect-checkpoint", *sys.argv[1:], "-f", "csv"]
try:
    runpy.run_module("gradscope", run_name="__main__")
except SystemExit as exc:
    code = exc.code
sys.stderr.write("\\n" + json.dumps({"torch": "torch" in sys.modules, "code": code}))
"""


@pytest.fixture(scope="module")
def every_format(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return save_every_format(tmp_path_factory.mktemp("formats"))


@pytest.mark.parametrize("fmt", FORMATS)
def test_no_format_imports_torch(every_format: dict[str, Path], fmt: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(every_format[fmt])],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    probe = json.loads(proc.stderr.strip().splitlines()[-1])
    assert probe == {"torch": False, "code": 0}, proc.stderr
    assert proc.stdout.startswith("checkpoint,index,name,num_features,sigma")
    assert len(proc.stdout.strip().splitlines()) == 17  # 16 BatchNorm layers


@pytest.mark.parametrize(
    "dtype", [torch.bfloat16, torch.float16, torch.float64, torch.int64, torch.float8_e4m3fn,
              torch.float8_e5m2],
)  # fmt: skip
def test_every_dtype_reads_the_values_torch_reads(tmp_path: Path, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    source = torch.randn(5, 7, generator=gen, dtype=torch.float64) * 3
    tensor = (source if dtype.is_floating_point else source * 100).to(dtype)
    sd = {"w": tensor, "view": tensor.t()[1:4]}  # a transposed, offset view of one storage
    expected = {k: v.to(torch.float64).numpy() for k, v in sd.items()}
    files = [save_zip(sd, tmp_path / "z.pt")]
    if dtype not in (torch.float8_e4m3fn, torch.float8_e5m2):
        files.append(save_safetensors({"w": tensor}, tmp_path / "s.safetensors"))
    for path in files:
        table = open_checkpoint(path)
        for name, entry in table.entries.items():
            got = np.asarray(entry.load(), dtype=np.float64)
            assert got.shape == expected[name].shape
            assert np.array_equal(got, expected[name], equal_nan=True), (path.name, name)
