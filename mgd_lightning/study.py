"""Deprecated: ``mgd_lightning.study`` moved to :mod:`mgd_lightning.commands.study`.

This module re-exports the names it had and warns once, at import.
"""

import warnings

from mgd_lightning.commands.study import STUDIES, main, study_of

__all__ = ["STUDIES", "main", "study_of"]

warnings.warn(
    "mgd_lightning.study is deprecated; import mgd_lightning.commands.study", DeprecationWarning, stacklevel=2
)

if __name__ == "__main__":
    main()
