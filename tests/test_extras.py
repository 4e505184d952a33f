"""What each install pulls, read from pyproject.toml (nothing is installed here): a site install
(``attestfl[site]``) pulls no aggregator dependency, the aggregator's are its own extra, every
declared dependency is imported by some code, and every party's code imports only what its
install provides. A command whose extra is missing says so in one line (exit 2)."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from aggregator.commands import AGGREGATOR_EXTRA_MODULES
from attestfl.demo import DEMO_EXTRA_MODULES
from fedsite.commands import SITE_EXTRA_MODULES

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
PACKAGES = ("attestation", "enclave", "native", "protocol", "aggregator", "fedsite", "auditor", "attestfl")
#: The module a declared runtime distribution is imported as. A dependency missing here fails
#: test_every_declared_dependency_is_imported: add it when you declare it.
MODULE_OF = {
    "cryptography": "cryptography",
    "asn1crypto": "asn1crypto",
    "cbor2": "cbor2",
    "numpy": "numpy",
    "grpcio": "grpc",
    "protobuf": "google",
    "pyjwt": "jwt",
    "msgspec": "msgspec",
    "pynacl": "nacl",
    "numba": "numba",
    "llvmlite": "llvmlite",
    "dp-accounting": "dp_accounting",
    "prometheus-client": "prometheus_client",
    "torch": "torch",
    "tenacity": "tenacity",
    "scikit-learn": "sklearn",
    "tqdm": "tqdm",
    "pyattest": "pyattest",
    "sev-snp-measure": "sevsnpmeasure",
}
#: Extras whose code runs in some party (test and bench are tooling).
RUNTIME_EXTRAS = ("aggregator", "site", "demo", "mobile", "reference-values")
#: Imported only by an optional backend, each behind a one-line error when missing: App Attest
#: (the mobile extra), reference values (the reference-values extra), NVML (nvidia-ml-py).
OPTIONAL_MODULES = frozenset({"pyattest", "sevsnpmeasure", "pynvml"})
AGGREGATOR_ONLY = frozenset({"numba", "llvmlite", "dp-accounting", "prometheus-client"})


def pulled(extra: str | None) -> set[str]:
    """The distributions ``pip install attestfl[extra]`` asks for (None: plain attestfl), with
    the project's own extras followed (attestfl[site] in another extra)."""
    requirements = [Requirement(r) for r in PROJECT["dependencies"]]
    seen: set[str] = set()
    todo = [extra] if extra else []
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for text in PROJECT["optional-dependencies"][name]:
            requirement = Requirement(text)
            if canonicalize_name(requirement.name) == "attestfl":
                todo.extend(requirement.extras)
            else:
                requirements.append(requirement)
    return {canonicalize_name(r.name) for r in requirements}


def modules(distributions: set[str]) -> set[str]:
    return {MODULE_OF[d] for d in distributions if d in MODULE_OF}


@cache
def third_party_imports(package: str) -> frozenset[str]:
    """Top-level third-party modules the package's code imports (at module level or in a function)."""
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in PACKAGES and top != "__future__":
                    found.add(top)
    return frozenset(found)


def test_a_site_install_pulls_no_aggregator_dependency() -> None:
    site = pulled("site")
    assert not site & AGGREGATOR_ONLY, site & AGGREGATOR_ONLY
    assert {"torch", "tenacity"} <= site
    assert not pulled(None) & (AGGREGATOR_ONLY | {"torch", "tenacity", "scikit-learn", "tqdm"})


def test_the_aggregator_extra_carries_the_aggregators_dependencies_and_no_training_stack() -> None:
    aggregator = pulled("aggregator")
    assert aggregator >= AGGREGATOR_ONLY
    assert not aggregator & {"torch", "tenacity", "scikit-learn", "tqdm"}
    assert set(AGGREGATOR_EXTRA_MODULES) == modules(aggregator - pulled(None))  # what `serve` checks for


def test_the_demo_extra_runs_both_ends_and_the_test_extra_everything() -> None:
    demo = pulled("demo")
    assert pulled("aggregator") | pulled("site") | {"scikit-learn", "tqdm"} <= demo
    assert set(DEMO_EXTRA_MODULES) == modules(demo - pulled(None))  # what `attestfl demo` checks for
    assert set(SITE_EXTRA_MODULES) == modules(pulled("site") - pulled(None))  # what `site run` checks for
    test = pulled("test")
    assert demo | pulled("reference-values") <= test
    pins = {
        canonicalize_name(Requirement(r).name): str(Requirement(r).specifier)
        for r in PROJECT["optional-dependencies"]["test"]
    }
    for tool in ("ruff", "mypy", "import-linter"):
        assert pins.get(tool, "").startswith("=="), f"{tool} is not pinned in the test extra: {pins.get(tool)!r}"


def test_every_declared_dependency_is_imported() -> None:
    declared = pulled(None).union(*(pulled(extra) for extra in RUNTIME_EXTRAS))
    unknown = sorted(declared - set(MODULE_OF))
    assert not unknown, f"declared but not in MODULE_OF (add the module it is imported as): {unknown}"
    imported = set().union(*(third_party_imports(p) for p in PACKAGES))
    unused = sorted(d for d in declared if MODULE_OF[d] not in imported)
    assert not unused, f"declared, imported by no code: {unused}"


def test_each_party_imports_only_what_its_install_provides() -> None:
    shared = ("attestation", "enclave", "protocol")
    parties = {
        "site": (("fedsite", *shared), pulled("site")),
        "aggregator": (("aggregator", "native", *shared), pulled("aggregator")),
        "auditor": (("auditor", *shared), pulled(None)),
        "attestfl (console script, demo)": (PACKAGES, pulled("demo")),
    }
    for party, (packages, install) in parties.items():
        imported = set().union(*(third_party_imports(p) for p in packages))
        missing = sorted(imported - modules(install) - OPTIONAL_MODULES)
        assert not missing, f"{party} code imports {missing}, which its install does not provide"


BLOCK = ("numba", "dp_accounting", "prometheus_client", "torch", "tenacity", "sklearn", "tqdm")


def _without_extras(*argv: str) -> subprocess.CompletedProcess[str]:
    """``attestfl ARGV`` as in a plain ``pip install attestfl``: the extras' modules cannot be imported."""
    script = (
        f"import sys\nfor name in {BLOCK!r}:\n    sys.modules[name] = None\n"
        "from attestfl.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    )
    return subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=120)


def test_commands_without_their_extra_say_so_in_one_line(tmp_path: Path) -> None:
    for argv, extra in (
        (["serve", "--config", str(tmp_path / "aggregator.toml")], "aggregator"),
        (["site", "run", "--config", str(tmp_path / "site.toml")], "site"),
        (["demo", "--dir", str(tmp_path)], "demo"),
    ):
        result = _without_extras(*argv)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("attestfl: error: ")
        assert f"pip install 'attestfl[{extra}]'" in lines[0]
    # What every party shares runs on the plain install: the relying party, the auditor.
    assert _without_extras("evidence", "verify", "--example").returncode == 0
    audit = _without_extras("audit", "verify", str(tmp_path / "no-log"))
    assert audit.returncode == 2 and "no such log directory" in audit.stderr and "Traceback" not in audit.stderr
