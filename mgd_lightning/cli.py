"""Deprecated: ``mgd_lightning.cli`` moved to :mod:`mgd_lightning.commands.cli` (the LightningCLI), its ``main`` to
:mod:`mgd_lightning.commands.main` (the ``mgd-lightning`` entry point).

This module re-exports the names it had and warns once, at import.
"""

import warnings

from mgd_lightning.commands.cli import (
    MGDCLI,
    PARSER_MODE,
    USER_ERRORS,
    ConfigError,
    nested_nulls_as_dicts,
    run_cli,
)
from mgd_lightning.commands.main import main

__all__ = ["MGDCLI", "PARSER_MODE", "USER_ERRORS", "ConfigError", "main", "nested_nulls_as_dicts", "run_cli"]

warnings.warn("mgd_lightning.cli is deprecated; import mgd_lightning.commands.cli", DeprecationWarning, stacklevel=2)

if __name__ == "__main__":
    main()
