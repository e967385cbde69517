"""Shared test setup. Area-specific helpers live in tests/helpers_<area>.py, not here."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = ROOT.parent / "shared" / "fixtures"
sys.path.insert(0, str(ROOT))

if os.environ.get("TRITON_INTERPRET") == "1":   # tests/test_triton_fuse.py: the kernel on the CPU
    from helpers_triton import patch_interpreter
    patch_interpreter()


@pytest.fixture(scope="session")
def shared_fixtures() -> Path:
    """``../shared/fixtures``; tests that use it skip when it is absent."""
    if not SHARED_FIXTURES.is_dir():
        pytest.skip("../shared/fixtures is absent")
    return SHARED_FIXTURES
