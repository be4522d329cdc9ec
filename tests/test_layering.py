"""The math core stays plain torch + SciPy: importing it must not import Lightning."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "module", ["mgd_lightning", "mgd_lightning.matching", "mgd_lightning.reduction", "mgd_lightning.losses"]
)
def test_math_core_does_not_import_lightning(module):
    code = (
        f"import sys, {module}; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('pytorch_lightning', 'lightning')); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
