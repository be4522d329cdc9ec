"""Deprecated: ``mgd_lightning.demo`` moved to :mod:`mgd_lightning.commands.demo` (the command line); the demo itself
(``run_demo``, ``TEACHER``, ``STUDENT``) to :mod:`mgd_lightning.demos.classification`, ``plot_matching`` to
:mod:`mgd_lightning.plotting`.

This module re-exports the names it had and warns once, at import.
"""

import warnings

from mgd_lightning.commands.demo import TASKS, main
from mgd_lightning.demos.classification import STUDENT, TEACHER, run_demo
from mgd_lightning.plotting import plot_matching

__all__ = ["STUDENT", "TASKS", "TEACHER", "main", "plot_matching", "run_demo"]

warnings.warn("mgd_lightning.demo is deprecated; import mgd_lightning.commands.demo", DeprecationWarning, stacklevel=2)

if __name__ == "__main__":
    main()
