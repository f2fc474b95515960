"""torchrun with 2 CPU processes (gloo, loopback) gives the same signature as one process."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fishersketch_core.signature import Signature
from lm_helpers import tiny_hf_folder

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_torchrun_two_processes_equal_one(tmp_path):
    from fishersketch_core.cli import main

    folder = tiny_hf_folder(tmp_path / "tiny", "qwen2")
    data = tmp_path / "smiles.smi"
    data.write_text("SMILES\n" + "\n".join(["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C",
                                           "OCC(O)CO", "C1CCCCC1N", "CC(C)CC1=CC=C(C=C1)C(C)C(=O)O"] * 3))
    common = ["--model", str(folder), "--data", str(data), "--name", "smiles", "--features", "64", "--seed", "2",
              "--batch-tokens", "64", "--no-progress"]
    one = tmp_path / "one.npz"
    assert main(["compute", *common, "--out", str(one)]) == 0

    two = tmp_path / "two.npz"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "fishersketch_core", "compute", *common, "--out", str(two)]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    a, b = Signature.load(one), Signature.load(two)
    assert (a.counts == b.counts).all() and a.n_positions > 100
    assert a.meta.model_hash == b.meta.model_hash and a.meta.extra["n_tokens"] == b.meta.extra["n_tokens"]
    for name in ("joint_half", "activation_half", "error_half"):
        np.testing.assert_allclose(getattr(b, name), getattr(a, name), rtol=1e-5, atol=1e-7)
    assert b.meta.extra["mean_nll"] == pytest.approx(a.meta.extra["mean_nll"], rel=1e-6)
    assert not list(tmp_path.glob("*.ckpt.npz*"))              # per-rank checkpoints cleaned up
