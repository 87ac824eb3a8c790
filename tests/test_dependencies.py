"""Every package of install_requires is imported by nnsam3d; optional ones only where they are optional."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nnsam3d

PACKAGE_ROOT = Path(nnsam3d.__file__).parent
SETUP = PACKAGE_ROOT.parent / "setup.py"
IMPORT_NAME = {"SimpleITK": "SimpleITK", "scikit-image": "skimage", "segment-anything": "segment_anything"}


def _list(name: str) -> list[str]:
    text = SETUP.read_text()
    block = re.search(rf"{name}\s*=\s*\[(.*?)\]", text, re.S).group(1)
    return [re.split(r"[<>=\[]", item)[0] for item in re.findall(r'"([^"]+)"', block)]


def _imports() -> dict[str, set[str]]:
    """top-level module name → source files (relative) importing it."""
    found: dict[str, set[str]] = {}
    for source in PACKAGE_ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(source.relative_to(PACKAGE_ROOT)))
    return found


def test_every_install_requirement_is_imported_at_run_time():
    imports = _imports()
    requirements = _list("install_requires")
    assert "SimpleITK" in requirements and "scikit-image" not in requirements
    unused = [r for r in requirements if IMPORT_NAME.get(r, r) not in imports]
    assert unused == [], f"install_requires lists packages nnsam3d never imports: {unused}"


def test_optional_packages_stay_out_of_the_base_install():
    imports = _imports()
    assert _list("DICOM") == ["highdicom", "pydicom"]
    assert imports.get("highdicom", set()) | imports.get("pydicom", set()) == {"io/dicom_seg.py"}
    # segment-anything is for the tests (reference builder and parity); only this module reaches it.
    assert "segment_anything" not in imports or imports["segment_anything"] <= {"model/sam_reference.py"}


def test_the_server_packages_stay_in_the_serve_extra():
    imports = _imports()
    assert _list("SERVE") == ["fastapi", "uvicorn", "python-multipart"]
    for module in ("fastapi", "uvicorn", "starlette"):
        # commands/serve.py only checks, when started, that they are installed (else: pip install the extra).
        assert all(path.startswith("serving/") or path == "commands/serve.py" for path in imports.get(module, set())), \
            (module, imports.get(module))
