"""The modules that stood at the package's top before :mod:`mgd_lightning.commands` and :mod:`mgd_lightning.demos`
still import: each warns once (a ``DeprecationWarning`` naming its new place) and hands on the very objects of the
new modules. Nothing else in tests/ imports them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: old module -> (the new module its warning names, {old name: "new.module:name"})
OLD_PATHS = {
    "mgd_lightning.cli": ("mgd_lightning.commands.cli", {
        "MGDCLI": "mgd_lightning.commands.cli:MGDCLI",
        "run_cli": "mgd_lightning.commands.cli:run_cli",
        "USER_ERRORS": "mgd_lightning.commands.cli:USER_ERRORS",
        "ConfigError": "mgd_lightning.commands.cli:ConfigError",
        "PARSER_MODE": "mgd_lightning.commands.cli:PARSER_MODE",
        "nested_nulls_as_dicts": "mgd_lightning.commands.cli:nested_nulls_as_dicts",
        "main": "mgd_lightning.commands.main:main",
    }),
    "mgd_lightning.demo": ("mgd_lightning.commands.demo", {
        "main": "mgd_lightning.commands.demo:main",
        "TASKS": "mgd_lightning.commands.demo:TASKS",
        "run_demo": "mgd_lightning.demos.classification:run_demo",
        "TEACHER": "mgd_lightning.demos.classification:TEACHER",
        "STUDENT": "mgd_lightning.demos.classification:STUDENT",
        "plot_matching": "mgd_lightning.plotting:plot_matching",
    }),
    "mgd_lightning.demo_detection": ("mgd_lightning.demos.detection", {
        "main": "mgd_lightning.commands.demo:detection_main",
        "parser": "mgd_lightning.commands.demo:detection_parser",
        "run_demo": "mgd_lightning.demos.detection:run_demo",
        "anchor_sizes": "mgd_lightning.demos.detection:anchor_sizes",
        "TEACHER": "mgd_lightning.demos.detection:TEACHER",
        "STUDENT": "mgd_lightning.demos.detection:STUDENT",
        "FPN_CHANNELS": "mgd_lightning.demos.detection:FPN_CHANNELS",
    }),
    "mgd_lightning.taps_command": ("mgd_lightning.commands.taps", {
        "main": "mgd_lightning.commands.taps:main",
        "describe_taps": "mgd_lightning.commands.taps:describe_taps",
    }),
    "mgd_lightning.export": ("mgd_lightning.commands.export", {
        name: f"mgd_lightning.commands.export:{name}"
        for name in ("main", "export", "ExportError", "FORMATS", "RTOL", "ATOL", "network_from_config",
                     "network_state")
    }),
    "mgd_lightning.study": ("mgd_lightning.commands.study", {
        name: f"mgd_lightning.commands.study:{name}" for name in ("main", "STUDIES", "study_of")
    }),
    "mgd_lightning.compare": ("mgd_lightning.commands.compare", {
        name: f"mgd_lightning.commands.compare:{name}"
        for name in ("main", "RESULT_FILE", "CSV_FIELDS", "method_names", "check_same_setting", "run_one",
                     "aggregate", "markdown")
    }),
}

# In a fresh interpreter: the new modules first (their own warnings are not counted), then each old module under
# a recording filter; prints, per old module, its deprecation messages and the names that are not the new objects.
_PROBE = """
import importlib, json, sys, warnings
old_paths = json.loads(sys.argv[1])
for new, names in old_paths.values():
    importlib.import_module(new)
    for target in names.values():
        importlib.import_module(target.partition(":")[0])
out = {}
for old, (new, names) in old_paths.items():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    messages = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning) and old in str(w.message)]
    differ = []
    for name, target in names.items():
        where, _, attr = target.partition(":")
        if getattr(module, name, None) is not getattr(importlib.import_module(where), attr):
            differ.append(name)
    missing = [name for name in getattr(module, "__all__", []) if not hasattr(module, name)]
    out[old] = {"messages": messages, "differ": differ, "missing_in_all": missing}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def probed() -> dict:
    proc = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(OLD_PATHS)], capture_output=True, text=True,
                          check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("old", sorted(OLD_PATHS))
def test_old_path_imports_warns_once_and_hands_on_the_new_objects(probed, old):
    new, _ = OLD_PATHS[old]
    result = probed[old]
    assert len(result["messages"]) == 1, result["messages"]
    assert result["messages"][0].startswith(f"{old} is deprecated; import {new}"), result["messages"]
    assert not result["differ"], f"{old}: not the new module's objects: {result['differ']}"
    assert not result["missing_in_all"], f"{old}.__all__ names missing: {result['missing_in_all']}"


def test_old_cli_path_runs_as_a_module():
    """``python -m mgd_lightning.cli`` still runs the ``mgd-lightning`` command (``--help`` here)."""
    proc = subprocess.run([sys.executable, "-m", "mgd_lightning.cli", "taps", "--help"], capture_output=True,
                          text=True, check=True)
    assert "usage: mgd-lightning taps" in proc.stdout
