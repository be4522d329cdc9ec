"""Sphinx configuration of the mgd-lightning documentation (`make docs`).

Built offline and strictly: `sphinx-build -W --keep-going -n -E` (every warning, a broken cross-reference, a broken
link between pages or a page outside the table of contents among them, fails the build). No intersphinx (no network
at build time), so references to third-party names (torch, Lightning, NumPy, ...) cannot resolve: the common ones are
let through by ``nitpick_ignore_regex`` below, the others (and napoleon's readings of a parenthetical remark as a
type) are rendered as plain text by ``_resolve_short_names``. References to this package's public names must resolve
(an unqualified ``:class:`Name``` is looked up across the package); an unknown, ambiguous or undocumented one fails.
Docstrings are Google-style with reST roles; Markdown code fences in them are turned into reST code blocks, and the
few that are not valid reST yet are listed in ``VERBATIM_DOCSTRINGS``.

Generated at build time, not copied by hand: the studies' pages include ``results/<study>/results.md`` and the plots
next to it; the notebooks are copied from ``notebooks/`` into ``_generated/`` and rendered by MyST-NB without being
executed (``make test`` executes them).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
# the API reference imports every module: never try to download weights while building
os.environ.setdefault("MGD_LIGHTNING_OFFLINE", "1")

project = "mgd-lightning"
author = "mgd-lightning contributors"
copyright = "2026, mgd-lightning contributors"  # noqa: A001 - Sphinx's name

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "myst_nb",  # Markdown pages (MyST) and the notebooks
]

# ---------------------------------------------------------------- sources
exclude_patterns = [
    "_build",
    "Thumbs.db",
    ".DS_Store",
    # included into other pages, not pages of their own
    "studies/reproduction-notes.md",
    "_generated/notebooks/.ipynb_checkpoints",
]
root_doc = "index"

# ---------------------------------------------------------------- MyST and the notebooks
myst_enable_extensions = ["colon_fence", "deflist"]  # no math: no MathJax from a CDN when a page is opened
myst_heading_anchors = 3  # `[text](page.md#a-heading)` links resolve, and are checked
nb_execution_mode = "off"  # rendered as committed; `make test` (tests/test_notebooks.py) executes them
nb_merge_streams = True

# ---------------------------------------------------------------- API reference
autodoc_default_options = {"members": True, "undoc-members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autodoc_inherit_docstrings = False  # Lightning's and torch's own docstrings would land in our pages
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True  # `Attributes:` as fields: the members themselves are documented by undoc-members

nitpicky = True
# Third-party names: without intersphinx (offline build) they cannot resolve. Everything else must.
_THIRD_PARTY = (
    "torch", "torchvision", "torchmetrics", "pytorch_lightning", "lightning", "lightning_fabric",
    "lightning_utilities", "numpy", "np", "scipy", "jsonargparse", "timm", "matplotlib", "PIL", "argparse",
    "collections", "typing", "typing_extensions", "pathlib", "os", "datetime", "enum", "abc", "dataclasses",
    "concurrent", "contextlib", "io", "json", "csv", "random", "re", "subprocess", "types", "tqdm", "nn", "F",
    "optim", "pl", "L", "tvm", "Tensor", "Path", "Module",
)
nitpick_ignore_regex = [
    (r"py:.*", rf"({'|'.join(_THIRD_PARTY)})(\..*)?"),
    # builtins and typing names that the Python domain does not know without intersphinx
    (r"py:.*", r"(int|float|str|bool|bytes|dict|list|tuple|set|frozenset|object|type|None|Any|Callable|Sequence|"
               r"Mapping|Iterable|Iterator|Literal|Optional|Union|TypeVar|ClassVar|Exception|RuntimeError|"
               r"ValueError|TypeError|KeyError|FileNotFoundError|OSError|FloatingPointError|ImportError|"
               r"NotImplementedError|AttributeError|Generator|MutableMapping|SystemExit|TextIO|IO|ModuleType|"
               r"PathLike|ellipsis|NoneType|Self|Protocol)"),
]

# ---------------------------------------------------------------- HTML
html_theme = "furo"  # ships its own CSS / JS / icons: no CDN, no web fonts
html_title = "mgd-lightning"
html_static_path: list[str] = []
html_show_sourcelink = False
html_theme_options = {"navigation_with_keys": True}


#: The API reference, one page per layer, bottom up (docs/api/index.md lists them): (page, title, introduction,
#: modules). A package stands for itself and every public submodule found in it at build time (the Lightning layer is
#: being split into files: new ones are documented without editing this list); a module whose docstring starts
#: with "Deprecated" (an old path kept as a shim) is left out, and a module or package that does not exist (yet) is
#: skipped. ``mgd_lightning`` itself (DistillationModule, MGDMatchingCallback, ClassificationModule) is docs/api/top.md.
API_PAGES = [
    ("math", "The math core: matching, reduction, losses",
     "Plain torch + SciPy, no Lightning import. Which equation each function implements: the "
     "[paper-to-code map](../../paper-map.md).",
     ["mgd_lightning.matching", "mgd_lightning.reduction", "mgd_lightning.losses", "mgd_lightning.margin_estimate"]),
    ("support", "Support: metrics, checkpoint files, plots",
     "Below the models and the Lightning layer.",
     ["mgd_lightning.metrics", "mgd_lightning.checkpoints", "mgd_lightning.plotting"]),
    ("models", "Models (`mgd_lightning.models`)",
     "Architectures torchvision lacks, the reference code's students, detectors and `build_model`; plain torch.",
     ["mgd_lightning.models"]),
    ("data", "Data (`mgd_lightning.data`)", "LightningDataModules, datasets, transforms and downloads.",
     ["mgd_lightning.data"]),
    ("distillers", "Distillers (`mgd_lightning.distillers`)",
     "The competing feature distillers (plain torch), chosen with `DistillationModule(distiller=...)`.",
     ["mgd_lightning.distillers"]),
    ("tasks", "Tasks (`mgd_lightning.tasks`)",
     "What classification, detection and self-supervised learning change around the shared module and callback.",
     ["mgd_lightning.tasks"]),
    ("distill", "The Lightning layer (`mgd_lightning.distill`)",
     "The modules and the callback themselves are documented on the [`mgd_lightning`](../../api/top.md) page; "
     "here the rest of the layer.", ["mgd_lightning.distill"]),
    ("experiments", "Experiments (`mgd_lightning.experiments`)",
     "Multi-run experiments: run scheduling, claims, reports, result files, and the studies.",
     ["mgd_lightning.experiments"]),
    ("demos", "Demos (`mgd_lightning.demos`)", "The two demos behind `mgd-lightning demo`.", ["mgd_lightning.demos"]),
    ("commands", "Commands (`mgd_lightning.commands`)",
     "The ways in: the `mgd-lightning` entry point and one module per subcommand.", ["mgd_lightning.commands"]),
]


def _module_doc(path: Path) -> str | None:
    import ast

    return ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))


def _expand(module: str) -> list[str]:
    """``module``, and for a package its public submodules (recursively), minus deprecated shims."""
    path = ROOT / Path(*module.split("."))
    if path.is_dir() and (path / "__init__.py").is_file():
        out = [module]
        for child in sorted(path.iterdir()):
            if child.name.startswith("_") or child.name == "__pycache__":
                continue
            if child.suffix == ".py" or (child / "__init__.py").is_file():
                out += _expand(f"{module}.{child.stem}")
        return out
    file = path.with_suffix(".py")
    if not file.is_file() or (_module_doc(file) or "").startswith("Deprecated"):
        return []
    return [module]


DOCUMENTED: set[str] = {"mgd_lightning"}


def _undocumented_data(module: str) -> str:
    """``autodata`` directives for the constants that ``module`` exports in ``__all__`` and autodoc's ``automodule``
    leaves out: those without a ``#:`` comment, and a package's re-exports (documented here, not in the
    submodule)."""
    import importlib
    import inspect

    from sphinx.pycode import ModuleAnalyzer

    mod = importlib.import_module(module)
    try:
        attr_docs = ModuleAnalyzer.for_module(module).find_attr_docs()
    except Exception:  # noqa: BLE001 - no source: nothing documented by comments
        attr_docs = {}
    out = ""
    for name in getattr(mod, "__all__", ()):
        obj = getattr(mod, name, None)
        if name.startswith("__") or inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismodule(obj):
            continue
        parts = module.split(".")
        above = [".".join(parts[:d]) for d in range(1, len(parts))]
        if any(p in DOCUMENTED and getattr(importlib.import_module(p), name, None) is obj
               and name in getattr(importlib.import_module(p), "__all__", ()) for p in above):
            continue  # documented on the package's page
        if ("", name) in attr_docs:
            continue  # automodule documents it
        value = "   :no-value:\n" if len(repr(obj)) > 300 else ""
        out += f"\n.. autodata:: {module}.{name}\n{value}"
    return out


def _write_api_pages() -> None:
    out = DOCS / "_generated" / "api"
    out.mkdir(parents=True, exist_ok=True)
    for page, title, intro, modules in API_PAGES:
        names = [m for module in modules for m in _expand(module)]
        DOCUMENTED.update(names)
        text = f"# {title}\n\n{intro}\n\n" + "".join(
            f"```{{eval-rst}}\n.. automodule:: {m}\n{_undocumented_data(m)}```\n\n" for m in names)
        if not names:
            text += "Nothing here in this version.\n"
        target = out / f"{page}.md"
        if not target.exists() or target.read_text() != text:
            target.write_text(text)


def _copy_generated() -> None:
    """The notebooks as documents of this source tree (MyST-NB renders only files inside it)."""
    out = DOCS / "_generated" / "notebooks"
    out.mkdir(parents=True, exist_ok=True)
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        target = out / notebook.name
        if not target.exists() or target.read_bytes() != notebook.read_bytes():
            shutil.copyfile(notebook, target)


def _public_names() -> set[str]:
    """The names this package makes public: each module's ``__all__`` (or, without one, its top-level names not
    starting with ``_``), read from the source without importing it."""
    import ast

    names: set[str] = set()
    for path in (ROOT / "mgd_lightning").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if (ast.get_docstring(tree) or "").startswith("Deprecated"):
            continue  # an old path's shim: its names are public where they live now
        exported = None
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
                try:
                    exported = [n for n in ast.literal_eval(node.value) if isinstance(n, str)]
                except ValueError:  # __all__ = [*_LAZY, ...]
                    exported = [e.value for e in getattr(node.value, "elts", []) if isinstance(e, ast.Constant)]
        if exported is None:
            exported = []
            for node in tree.body:
                if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                    exported.append(node.name)
                elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    exported += [t.id for t in targets if isinstance(t, ast.Name)]
            exported = [n for n in exported if not n.startswith("_")]
        names.update(exported)
    return names


_PUBLIC: set[str] = set()
_IDENTIFIER = __import__("re").compile(r"~?[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*(\(\))?")


def _resolve_short_names(app, env, node, contnode):
    """References the Python domain leaves unresolved, in this order:

    1. a target that is no Python name (napoleon reads a parenthetical remark as a type): plain text;
    2. a name of this package written unqualified, partly or by its defining module's path (``:class:`Tap```,
       ``:meth:`Task.tap_norm```, ``mgd_lightning.data.coco.collate_detection``, documented as
       ``mgd_lightning.data.collate_detection``): looked up across the package as the Python domain does for
       ``.Name`` references, then with its leading parts dropped; one match, or one in the referring module;
    3. a name that is not public (outside every ``__all__``, private, an instance attribute of a documented class)
       or not this package's (third-party: unresolvable without intersphinx): plain text;
    4. anything else stays unresolved and fails the strict build: an ambiguous name, a module of the package or a
       public name that the API reference does not document, a misspelt name.
    """
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    if not _IDENTIFIER.fullmatch(target):
        return contnode
    target = target.lstrip("~").removesuffix("()")
    parts = target.split(".")
    if node.get("reftype") == "mod":
        return None if parts[0] == "mgd_lightning" and not any(p.startswith("_") for p in parts) else contnode
    domain = env.get_domain("py")
    here = node.get("py:module") or ""
    for first in range(len(parts)):
        if first and parts[0] != "mgd_lightning":
            break
        name = ".".join(parts[first:])
        matches = domain.find_obj(env, here, node.get("py:class"), name, node.get("reftype"), searchmode=1)
        matches = [m for m in matches if m[0].startswith("mgd_lightning") and not m[1].aliased]
        if len(matches) > 1:  # ambiguous, unless all are in the referring module (a method of two classes there)
            if not (here and all(m[0].startswith(here + ".") for m in matches)):
                return None
            matches = sorted(matches)[:1]
        if len(matches) == 1:
            from sphinx.util.nodes import make_refnode

            full, obj = matches[0]
            return make_refnode(app.builder, node.get("refdoc"), obj.docname, obj.node_id, contnode, full)
    if not _PUBLIC:
        _PUBLIC.update(_public_names())
    if parts[-1].startswith("_") or parts[-1] not in _PUBLIC:
        return contnode
    return None


_current_module: list[str] = [""]

#: Docstrings that are not valid reST yet: shown verbatim, as a literal block, instead of failing the strict build.
#: Fix the docstring, then remove its name here (the build then checks it like every other).
VERBATIM_DOCSTRINGS: set[str] = set()


def _markdown_fences(lines: list[str]) -> None:
    """Markdown code fences in a docstring (```yaml ... ```) as reST code blocks."""
    out, fence = [], None
    for line in lines:
        stripped = line.strip()
        indent = line[: len(line) - len(line.lstrip())]
        if fence is None and stripped.startswith("```"):
            fence = indent
            out += [f"{indent}.. code-block:: {stripped[3:].strip() or 'text'}", ""]
        elif fence is not None and stripped == "```":
            fence = None
            out.append("")
        elif fence is not None:
            out.append(f"{fence}   {line[len(fence):]}" if line.strip() else "")
        else:
            out.append(line)
    lines[:] = out


def _prepare_docstring(app, what, name, obj, options, lines):
    if what == "module":
        _current_module[0] = name
    if what in ("data", "attribute") and obj is not None and not isinstance(obj, (str, bytes)) and \
            " ".join(lines).split() == (type(obj).__doc__ or "").split():
        lines[:] = []  # a constant without a comment: not the docstring of its type (dict, tuple, ...)
        return
    if name in VERBATIM_DOCSTRINGS:
        lines[:] = ["::", ""] + [f"    {line}" for line in lines] + [""]
        return
    _markdown_fences(lines)
    if what in ("attribute", "data", "property") and lines and ":" in lines[0]:
        lines.insert(0, "")  # napoleon reads an attribute's first line "X: y" as "type: description"


_seen: set[int] = set()


def _canonical(name: str, obj) -> str | None:
    """The module whose page documents ``obj``: the highest documented package above its defining module that
    exports it in ``__all__`` (``mgd_lightning.models`` for ``build_model``, ``mgd_lightning`` for
    ``DistillationModule``), else its defining module if documented; ``None`` when unknown (data, or defined in an
    undocumented module)."""
    import importlib
    import inspect

    module = getattr(obj, "__module__", None) if inspect.isclass(obj) or inspect.isfunction(obj) else None
    if not isinstance(module, str) or not module.startswith("mgd_lightning"):
        return None
    parts = module.split(".")
    for depth in range(1, len(parts)):
        package = ".".join(parts[:depth])
        if package in DOCUMENTED:
            mod = importlib.import_module(package)
            if name in getattr(mod, "__all__", ()) and getattr(mod, name, None) is obj:
                return package
    return module if module in DOCUMENTED else None


def _skip_reexported(app, what, name, obj, skip, options):
    """Each public name is documented once, at its most public path (:func:`_canonical`): a module that re-exports
    a name documented elsewhere (a package's ``__all__``, a sibling kept for compatibility) leaves it out; a name
    whose place is unknown is documented where it is met first."""
    if skip or what != "module":
        return None
    import importlib

    current = _current_module[0]
    canonical = _canonical(name, obj)
    if canonical is not None:
        return True if canonical != current else None
    parts = current.split(".")
    for depth in range(1, len(parts)):  # data re-exported by a package above
        package = importlib.import_module(".".join(parts[:depth]))
        if name in getattr(package, "__all__", ()) and getattr(package, name, None) is obj:
            return True
    if not isinstance(obj, (int, float, str, bool, type(None))):
        if id(obj) in _seen:
            return True
        _seen.add(id(obj))
    return None


def setup(app):
    _copy_generated()
    _write_api_pages()
    app.connect("missing-reference", _resolve_short_names)
    app.connect("autodoc-process-docstring", _prepare_docstring, priority=400)  # before napoleon
    app.connect("autodoc-skip-member", _skip_reexported)
