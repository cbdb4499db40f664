"""The API reference (docs/, built by `mkdocs build --strict` in `make test`) covers the public API."""

import importlib.util
import re
from pathlib import Path

import weightinit

DOCS = Path(__file__).resolve().parent.parent / "docs"
# An mkdocstrings block: "::: weightinit.NAME" on a line of its own.
DIRECTIVE = re.compile(r"^:::[ \t]+weightinit\.([A-Za-z_][\w.]*)[ \t]*$", re.M)


def test_every_public_name_has_a_reference_entry():
    documented = {m[1] for page in DOCS.rglob("*.md") for m in DIRECTIVE.finditer(page.read_text())}
    missing = sorted(set(weightinit.__all__) - documented)
    assert not missing, (
        f"public names without an entry in the API reference: {missing}; add a "
        f"'::: weightinit.NAME' line to the matching page of docs/reference/")
    # optional submodules (weightinit.mmengine) are documented as modules, not imported by
    # `import weightinit`
    not_public = sorted(n for n in documented if "." not in n and n not in weightinit.__all__
                        and importlib.util.find_spec(f"weightinit.{n}") is None)
    assert not not_public, f"docs/reference documents names not in weightinit.__all__: {not_public}"
