"""Deprecated: ``mgd_lightning.taps_command`` moved to :mod:`mgd_lightning.commands.taps`.

This module re-exports the names it had and warns once, at import.
"""

import warnings

from mgd_lightning.commands.taps import describe_taps, main

__all__ = ["describe_taps", "main"]

warnings.warn(
    "mgd_lightning.taps_command is deprecated; import mgd_lightning.commands.taps", DeprecationWarning, stacklevel=2
)

if __name__ == "__main__":
    main()
