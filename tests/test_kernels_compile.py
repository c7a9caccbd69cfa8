"""Every Triton kernel compiles for real NVIDIA GPUs, here, without one.

kernels.compile_check captures each launch our launchers make at a preset's sizes and compiles
it with Triton's compiler and ptxas for a target architecture; the interpreter tests check the
numbers, these check that the same kernels build for the hardware and fit its limits. Each runs
in its own process: the compiler needs the kernels without TRITON_INTERPRET.
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _has_ptxas() -> bool:
    spec = importlib.util.find_spec("triton")
    return spec is not None and any(
        (Path(p) / "backends" / "nvidia" / "bin" / "ptxas").exists()
        for p in spec.submodule_search_locations or [])


pytestmark = pytest.mark.skipif(not _has_ptxas(), reason="triton with its NVIDIA backend needed")

FAMILIES = {"rms_norm._forward_kernel", "rms_norm._backward_kernel", "rope._rope_kernel",
            "swiglu._swiglu_forward_kernel", "swiglu._swiglu_backward_kernel",
            "log_prob._forward_kernel", "log_prob._backward_kernel"}


def _env():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_DEFAULT_FP_FUSION="1", PYTHONPATH=str(ROOT))
    return env


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("compile") / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "kernels.compile_check", "--arch", "86,90",
         "--models", "default,qwen2.5-1.5b", "--out", str(out)],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text())


def test_every_kernel_compiles_for_ampere_and_hopper_within_limits(report):
    rows = report["kernels"]
    assert report["problems"] == 0
    for arch in ("sm_86", "sm_90"):
        for dtype in ("bfloat16", "float32"):
            built = {r["kernel"] for r in rows if r["arch"] == arch and r["dtype"] == dtype}
            assert built == FAMILIES, (arch, dtype)
    for r in rows:
        assert r["spill_bytes"] == 0 and r["regs"] <= 255 and r["blocks_per_sm"] >= 1, r


def test_log_prob_dot_runs_on_tensor_cores(report):
    """The fused log-prob is a matmul: bf16 tiles must become wgmma on Hopper and mma.sync on
    Ampere, or the kernel would run at a fraction of the GPU's speed."""
    lp = [r for r in report["kernels"] if r["kernel"].startswith("log_prob.")
          and r["dtype"] == "bfloat16"]
    assert {(r["arch"], r["kernel"]) for r in lp} == {
        (a, k) for a in ("sm_86", "sm_90") for k in FAMILIES if k.startswith("log_prob.")}
    for r in lp:
        assert r["tensor_cores"] == (["wgmma"] if r["arch"] == "sm_90" else ["mma.sync"]), r


def test_launches_are_shaped_for_the_target_gpu(report):
    """The forward log-prob splits the vocabulary over two programs per SM (132 SMs on H100,
    80 on A10G), and the RMSNorm backward's grid-stride loop runs two programs per SM."""
    for arch, sms in (("sm_90", 132), ("sm_86", 80)):
        fwd = [r for r in report["kernels"] if r["arch"] == arch
               and r["kernel"] == "log_prob._forward_kernel"]
        assert fwd and all(r["grid"][0] * r["grid"][1] <= 2 * sms and r["grid"][1] > 1
                           for r in fwd), fwd
        bwd = [r for r in report["kernels"] if r["arch"] == arch
               and r["kernel"] == "rms_norm._backward_kernel"]
        assert bwd and all(r["grid"] == [2 * sms] for r in bwd), bwd


def test_the_check_reports_a_kernel_that_would_not_fit():
    """With the 64-deep k-tile the float32 backward used to take, an sm_86 GPU (A10G, L4,
    RTX 30/40) lacks the shared memory to launch it: the check must say so."""
    out = _python(
        "import json, torch, triton\n"
        "import kernels.log_prob as lp\n"
        "from kernels.compile_check import compile_all\n"
        "lp._blocks = lambda n, v, h, e=2: (64, 128, 64)\n"
        "r = compile_all([86], ['default'], dtypes_for=lambda a: [torch.float32], log=None)\n"
        "print(json.dumps([(k['kernel'], k['problems'])\n"
        "                  for k in r['kernels'] if k['problems']]))\n")
    problems = json.loads(out.strip().splitlines()[-1])
    assert [k for k, _ in problems] == ["log_prob._backward_kernel"]
    assert "shared memory" in problems[0][1][0]
