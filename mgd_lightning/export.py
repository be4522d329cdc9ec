"""Deprecated: ``mgd_lightning.export`` moved to :mod:`mgd_lightning.commands.export`.

This module re-exports the names it had and warns once, at import.
"""

import warnings

from mgd_lightning.commands.export import (
    ATOL,
    FORMATS,
    RTOL,
    ExportError,
    export,
    main,
    network_from_config,
    network_state,
)

__all__ = ["ATOL", "FORMATS", "RTOL", "ExportError", "export", "main", "network_from_config", "network_state"]

warnings.warn(
    "mgd_lightning.export is deprecated; import mgd_lightning.commands.export", DeprecationWarning, stacklevel=2
)

if __name__ == "__main__":
    main()
