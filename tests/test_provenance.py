"""Each evaluate metrics file says which CPU and library versions produced it."""
from __future__ import annotations

from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from stages.core.provenance import LIBRARIES, cpu, environment, library_versions


def test_library_versions_are_the_installed_ones():
    v = library_versions()
    assert v["torch"] == torch.__version__ and v["numpy"] == np.__version__
    assert set(LIBRARIES) <= set(v) and v["python"].count(".") == 2
    assert library_versions(("no-such-distribution-xyz",))["no-such-distribution-xyz"] == "absent"
    assert v["polars"] == metadata.version("polars")


def test_cpu_reads_vendor_model_and_kernel_flags():
    c = cpu()
    if not Path("/proc/cpuinfo").exists():
        assert c["vendor"] == "unknown"
        return
    text = Path("/proc/cpuinfo").read_text()
    assert c["vendor"] in text and c["model"] in text
    flags = set(c["flags"].split())
    assert flags <= {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
    assert ("avx2" in flags) == (" avx2" in text)
    assert environment()["cpu"] == c
