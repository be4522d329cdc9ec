"""Deprecated: ``mgd_lightning.compare`` moved to :mod:`mgd_lightning.commands.compare`.

This module re-exports the names it had and warns once, at import.
"""

import warnings

from mgd_lightning.commands.compare import (
    CSV_FIELDS,
    RESULT_FILE,
    aggregate,
    check_same_setting,
    main,
    markdown,
    method_names,
    run_one,
)

__all__ = [
    "CSV_FIELDS", "RESULT_FILE", "aggregate", "check_same_setting", "main", "markdown", "method_names", "run_one",
]

warnings.warn(
    "mgd_lightning.compare is deprecated; import mgd_lightning.commands.compare", DeprecationWarning, stacklevel=2
)

if __name__ == "__main__":
    main()
