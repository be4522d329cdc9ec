"""Deprecated: ``mgd_lightning.demo_detection`` moved to :mod:`mgd_lightning.demos.detection` (the demo); its command
line (``main``, ``parser``) to :mod:`mgd_lightning.commands.demo` (``detection_main``, ``detection_parser``).

This module re-exports the names it had and warns once, at import.
"""

import warnings

from mgd_lightning.commands.demo import detection_main as main
from mgd_lightning.commands.demo import detection_parser as parser
from mgd_lightning.demos.detection import FPN_CHANNELS, STUDENT, TEACHER, anchor_sizes, run_demo

__all__ = ["FPN_CHANNELS", "STUDENT", "TEACHER", "anchor_sizes", "main", "parser", "run_demo"]

warnings.warn(
    "mgd_lightning.demo_detection is deprecated; import mgd_lightning.demos.detection", DeprecationWarning, stacklevel=2
)

if __name__ == "__main__":
    main()
