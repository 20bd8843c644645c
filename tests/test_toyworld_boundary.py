"""The toy world is an application of the library: it uses only the public surface, and no library
module imports it (only the command line's `demo` and `amf`)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "ditflow_fast"
# what may import the toy world: its command and the user-facing tools built on the library
APPLICATION = {"cli/demo.py", "cli/amf.py", "toyworld"}
# what the toy world may import of the library
PUBLIC = {"families", "guidance.config", "guidance.loop", "api", "video_io", "atomic", "loss", "viewer.transfer",
          "viewer.reference", "viewer.motion"}


def _imports(path: Path) -> set[str]:
    """Package-relative modules imported by ``path`` (relative and absolute ``ditflow_fast`` imports)."""
    rel = path.relative_to(PKG).with_suffix("")
    parts = list(rel.parts[:-1])  # the module's package
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = parts[:len(parts) - node.level + 1]
                mod = ".".join([*base, *(node.module.split(".") if node.module else [])])
                names = [mod] if node.module else [".".join([*base, a.name]) for a in node.names]
            elif (node.module or "").startswith("ditflow_fast"):
                names = [node.module[len("ditflow_fast."):]]
            else:
                continue
            out.update(n for n in names if n)
        elif isinstance(node, ast.Import):
            out.update(a.name[len("ditflow_fast."):] for a in node.names if a.name.startswith("ditflow_fast."))
    return out


def test_no_library_module_imports_the_toy_world():
    offenders = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG)
        if rel.parts[0] in APPLICATION or rel.as_posix() in APPLICATION:
            continue
        if any(m == "toyworld" or m.startswith("toyworld.") for m in _imports(path)):
            offenders.append(str(path.relative_to(PKG)))
    assert not offenders, f"library modules importing the toy world: {offenders}"


def test_the_toy_world_uses_only_the_public_surface():
    used = {}
    for path in (PKG / "toyworld").glob("*.py"):
        for m in _imports(path):
            if not m.startswith("toyworld") and not any(m == p or m.startswith(p + ".") for p in PUBLIC):
                used.setdefault(m, []).append(path.name)
    assert not used, f"the toy world reaches past the public surface: {used}"


def test_the_checker_sees_imports():
    """The walk above would pass on anything if it found no imports: it finds the toy world's."""
    assert "families" in _imports(PKG / "toyworld" / "demo.py")
    assert "toyworld.cli" in _imports(PKG / "cli" / "demo.py")
