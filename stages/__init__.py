"""The pipeline's stages (DESIGN §2): ``python -m stages.<name>`` runs one.

Importing the package sets one process default before numpy loads OpenBLAS (a value the user
exported wins): ``OPENBLAS_THREAD_TIMEOUT=4``, OpenBLAS's shortest busy-wait. Its worker threads
otherwise spin for ~2**28 cycles (~0.1 s) after they start and after every BLAS call, waiting
for the next one, and on two cores that takes one core from polars and torch. Measured in fresh
processes: a polars read of the five Glances files of ``--scale msds`` took 49-64 ms right after
``import numpy`` and 37-43 ms with the short wait (docs/benchmarks.md). It changes when idle
threads sleep, not what they compute.
"""
import os

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
