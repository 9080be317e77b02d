"""Repository-level promises: lint is clean, and the locks agree with what the pyprojects declare."""

import ast
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from repo_helpers import REPO

ROOT = tomllib.loads((REPO / "pyproject.toml").read_text())
MEMBERS = [REPO / m for m in ROOT["tool"]["uv"]["workspace"]["members"]]
WORKSPACE = {canonicalize_name(tomllib.loads((m / "pyproject.toml").read_text())["project"]["name"]) for m in MEMBERS}


def ruff(*args):
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or "ruff"
    return subprocess.run([exe, *args], cwd=REPO, capture_output=True, text=True)


def test_ruff_check_is_clean():
    done = ruff("check", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_format_is_clean():
    done = ruff("format", "--check", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def pins(lock: Path) -> dict[str, str]:
    found = {}
    for line in lock.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-\[\]]+)==([^\s;]+)\s*(?:;\s*(.*))?$", line)
        if match and (match[3] is None or Requirement(f"x; {match[3]}").marker.evaluate()):
            found[canonicalize_name(match[1])] = match[2]
    return found


def declared(dev: bool) -> list[Requirement]:
    if dev:
        return [Requirement(r) for r in ROOT["dependency-groups"]["dev"]]
    reqs = []
    for member in MEMBERS:
        reqs += [
            Requirement(r) for r in tomllib.loads((member / "pyproject.toml").read_text())["project"]["dependencies"]
        ]
    return [r for r in reqs if canonicalize_name(r.name) not in WORKSPACE]


@pytest.mark.parametrize(("lock", "dev"), [("requirements.lock", False), ("requirements-dev.lock", True)])
def test_rye_locks_satisfy_every_declared_dependency(lock, dev):
    pinned = pins(REPO / lock)
    for req in declared(dev):
        name = canonicalize_name(req.name)
        assert name in pinned, f"{lock} lacks {req.name}, declared in a pyproject: run `bash .ci/update-locks`"
        assert req.specifier.contains(pinned[name], prereleases=True), (
            f"{lock} pins {req.name}=={pinned[name]}, outside the declared {req}: run `bash .ci/update-locks`"
        )
    for member in MEMBERS:
        assert f"-e file:{member.relative_to(REPO)}" in (REPO / lock).read_text()


def test_rye_locks_pin_what_uv_lock_pins():
    uv_lock = tomllib.loads((REPO / "uv.lock").read_text())
    versions: dict[str, set[str]] = {}
    for package in uv_lock["package"]:
        versions.setdefault(canonicalize_name(package["name"]), set()).add(package.get("version"))
    for lock in ("requirements.lock", "requirements-dev.lock"):
        for name, version in pins(REPO / lock).items():
            assert version in versions.get(name, set()), f"{lock}: {name}=={version} is not in uv.lock"


def test_torch_and_torchvision_are_a_matching_pair():
    import torch
    from torchvision.ops import nms

    # A mismatched pair imports but fails on its compiled operators ("operator torchvision::nms does not exist").
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    assert nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5).tolist() == [0, 2]


def test_rye_and_uv_install_the_same_dev_dependencies():
    # rye reads only [tool.rye] dev-dependencies and uv only [dependency-groups]; the two lists must stay one list.
    assert ROOT["tool"]["rye"]["dev-dependencies"] == ROOT["dependency-groups"]["dev"]


def test_rye_runs_every_command_uv_installs():
    # `rye run X` reads only [tool.rye.scripts]; `uv run X` the members' [project.scripts]: one list of commands.
    installed = {}
    for member in MEMBERS:
        installed |= tomllib.loads((member / "pyproject.toml").read_text())["project"].get("scripts", {})
    assert {name: script["call"] for name, script in ROOT["tool"]["rye"]["scripts"].items()} == installed


def test_the_web_ui_depends_on_the_core_gradio_and_openai_only():
    # Model code (torch, transformers) comes through the core, never straight into the UI. openai is the one other:
    # --api_base streams from an OpenAI-compatible server through its client rather than parsing the stream by hand.
    webui = tomllib.loads((REPO / "apps" / "webui" / "pyproject.toml").read_text())["project"]["dependencies"]
    assert sorted(canonicalize_name(Requirement(r).name) for r in webui) == ["gradio", "openai", "yuren-core"]


def test_the_tiny_model_builder_depends_on_the_core_only():
    # Random tiny models and shapes data need no trainer; training them is make-demo-model's, a separate tool.
    tiny = tomllib.loads((REPO / "tools" / "make_tiny_model" / "pyproject.toml").read_text())["project"]["dependencies"]
    assert [canonicalize_name(Requirement(r).name) for r in tiny] == ["yuren-core"]


RECIPES = ("text_sft", "clip_sft", "multimodal_sft")


def test_no_library_module_imports_a_recipe_or_a_main_module():
    # Recipes and __main__ modules are leaves: what they share lives in named library modules.
    pattern = re.compile(
        rf"^\s*from\s+\S*\.?(?:__main__|{'|'.join(RECIPES)})\s+import\s|^\s*import\s+\S+\.__main__", re.M
    )
    offenders = [
        str(path.relative_to(REPO))
        for path in (REPO / "apps").rglob("*.py")
        if path.name != "__main__.py" and pattern.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []


def _package_imports(package: Path) -> dict[str, set[str]]:
    """For each module of ``package``, the sibling modules it imports (at any depth, relative or absolute)."""
    import ast

    name = package.name
    modules = {path.stem for path in package.glob("*.py")}
    graph = {}
    for path in package.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level == 1 or base.split(".")[0] == name:
                    target = base.removeprefix(name).lstrip(".").split(".")[0]
                    # `from . import x` and `from yuren_core import x` name the module in the alias.
                    found |= {target} if target else {alias.name for alias in node.names}
        graph[path.stem] = (found & modules) - {path.stem}
    return graph


def test_no_core_module_imports_one_that_imports_it_back():
    # A cycle (even through a function-level import) means two modules hold one idea between them.
    graph = _package_imports(REPO / "apps" / "yuren_core" / "src" / "yuren_core")
    cycles = []

    def visit(module: str, trail: list[str]) -> None:
        for target in sorted(graph[module]):
            if target in trail:
                cycles.append(" -> ".join([*trail[trail.index(target) :], target]))
            elif len(trail) < len(graph):
                visit(target, [*trail, target])

    for module in sorted(graph):
        visit(module, [module])
    assert cycles == []


def test_each_test_file_needs_the_tiny_pipeline_in_all_its_tests_or_in_none():
    # The suite runs the pipeline's tests last, while it trains in the background, and xdist hands out whole files:
    # a file mixing both would make a worker wait for the pipeline before running the tests that do not need it.
    mixed = []
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        tests = [
            node
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
        ]
        needs = {any(arg.arg == "tiny_pipeline" for arg in test.args.args) for test in tests}
        if len(needs) > 1:
            mixed.append(path.relative_to(REPO).as_posix())
    assert mixed == [], f"these files mix tests that need the tiny pipeline with tests that do not: {mixed}"
