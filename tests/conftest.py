"""Test setup shared by the whole suite.

TRITON_INTERPRET must be set before any Triton kernel module is imported (the flag is read when @triton.jit
decorates), so it is set here, at collection time, on machines without CUDA.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
