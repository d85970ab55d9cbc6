"""Packaging: the core install gives a working ArcQuantizer; the rest comes with named extras.

``test_core_install_trains_and_names_the_missing_extras`` builds this package's wheel and installs
it (``pip install --no-deps``) into a fresh venv whose site-packages holds only the distributions
of the core requirement set (``install_requires`` and, recursively, what they require; linked from
the test environment, so nothing is downloaded). ``pip check`` there proves the core set complete;
a script then runs the README's plain-PyTorch snippet and reads the error of each extra.
"""
from __future__ import annotations

import configparser
import importlib.metadata as metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from arcvq_plugin.extras import DISTRIBUTIONS, EXTRAS, MissingExtraError, require_extra

ROOT = Path(__file__).resolve().parents[1]
REQUIRE_CALL = re.compile(r"require_extra\(([^)]*)\)")
OPT_IN_EXTRAS = {"imagenet", "bench"}
"""Extras left out of [all] on purpose (setup.cfg says why)."""


def _setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    return parser


def _requirements(text: str) -> list[Requirement]:
    return [Requirement(line) for line in (raw.split("#")[0].strip() for raw in text.splitlines()) if line]


def _extras() -> dict[str, set[str]]:
    section = _setup_cfg()["options.extras_require"]
    return {extra: {canonicalize_name(r.name) for r in _requirements(section[extra])} for extra in section}


def _require_calls() -> set[tuple[str, str]]:
    """Every (extra, module) pair that a ``require_extra(...)`` call in the package names."""
    pairs = set()
    for path in (ROOT / "arcvq_plugin").rglob("*.py"):
        for arguments in REQUIRE_CALL.findall(path.read_text()):
            names = re.findall(r'"([^"]+)"', arguments)
            pairs.update((names[0], module) for module in names[1:])
    return pairs


def test_every_required_module_is_provided_by_the_extra_its_error_names():
    extras = _extras()
    calls = _require_calls()
    assert {extra for extra, _ in calls} == set(EXTRAS), "an extra of EXTRAS is never required, or vice versa"
    for extra, module in calls:
        assert canonicalize_name(DISTRIBUTIONS[module]) in extras[extra], (extra, module)
    assert set(EXTRAS) | {"test"} == set(extras) - OPT_IN_EXTRAS - {"all"}
    assert set().union(*(extras[name] for name in set(extras) - OPT_IN_EXTRAS - {"all"})) == extras["all"]


def test_require_extra_names_the_extra_and_the_distribution(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "skimage" else real_find_spec(name, *a))
    with pytest.raises(MissingExtraError, match=r"scikit-image.*\[eval\].*pip install 'arcvq-plugin\[eval\]'"):
        require_extra("eval", "lpips", "skimage")
    require_extra("eval", "lpips")  # present: no error
    with pytest.raises(ValueError, match="extra must be one of"):
        require_extra("evaluation", "lpips")
    with pytest.raises(ValueError, match="modules must be one or more of"):
        require_extra("eval")
    with pytest.raises(ValueError, match="modules must be one or more of"):
        require_extra("eval", "scikit-image")


def _closure(requirements: list[Requirement]) -> set[str]:
    """Names of the installed distributions that ``requirements`` need, recursively (markers
    evaluated for this interpreter, requested extras followed)."""
    found: dict[str, set[str]] = {}
    pending = [(r, "") for r in requirements]
    while pending:
        requirement, parent_extra = pending.pop()
        if requirement.marker and not requirement.marker.evaluate({"extra": parent_extra}):
            continue
        name = canonicalize_name(requirement.name)
        wanted = {""} | set(requirement.extras)
        if wanted <= found.get(name, set()):
            continue
        found.setdefault(name, set()).update(wanted)
        for line in metadata.distribution(name).requires or []:
            for extra in wanted:
                pending.append((Requirement(line), extra))
    return set(found)


def _link_distribution(name: str, site: Path) -> None:
    distribution = metadata.distribution(name)
    for top in {Path(str(f)).parts[0] for f in distribution.files or [] if not str(f).startswith("..")}:
        source = Path(distribution.locate_file(top))
        if source.exists() and not (site / top).exists():
            (site / top).symlink_to(source)


CORE_SCRIPT = r'''
import importlib.util, re, sys
import arcvq_plugin
assert arcvq_plugin.__file__.startswith(sys.argv[1]), arcvq_plugin.__file__
for module in ("matplotlib", "skimage", "lpips", "torch_fidelity", "tensorboard", "zarr", "pureml", "ldm"):
    assert importlib.util.find_spec(module) is None, f"{module} is importable in the core venv"
exec(open(sys.argv[2]).read())                   # the README's plain-PyTorch snippet: 3 steps
from arcvq_plugin import NormBoundCallback
import arcvq_plugin.baselines
from arcvq_plugin.extras import MissingExtraError

def missing_extra(action):
    try:
        action()
    except MissingExtraError as err:
        return re.search(r"pip install 'arcvq-plugin\[(\w+)\]'", str(err)).group(1)
    raise AssertionError("no MissingExtraError")

print("codebook_monitor", missing_extra(lambda: arcvq_plugin.CodebookMonitor))
print("image_metrics", missing_extra(lambda: __import__("arcvq_plugin.evaluation.image_metrics")))
from arcvq_plugin.data.mnist import load_mnist_arrays
print("mnist", missing_extra(lambda: load_mnist_arrays("test")))
try:
    import arcvq_plugin.ldm.autoencoder
except ImportError as err:
    print("ldm", re.search(r"pip install 'arcvq-plugin\[(\w+)\]'", str(err)).group(1))
'''


def _readme_plain_pytorch_snippet() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Plain PyTorch", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_core_install_trains_and_names_the_missing_extras(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT / "arcvq_plugin", src / "arcvq_plugin", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    outside_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # no checkout on the path
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w",
                    str(tmp_path / "wheels"), str(src)], check=True, capture_output=True)
    venv = tmp_path / "core-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    core = _closure(_requirements(_setup_cfg()["options"]["install_requires"]))
    assert not core & {"matplotlib", "scikit-image", "lpips", "torch-fidelity", "tensorboard", "zarr", "ldm-fix"}
    for name in core:
        _link_distribution(name, site)
    wheel = next((tmp_path / "wheels").glob("arcvq_plugin-*.whl"))
    subprocess.run([*pip, "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, env=outside_env)
    check = subprocess.run([*pip, "--python", str(python), "check"], capture_output=True, text=True, env=outside_env)
    assert check.returncode == 0, check.stdout + check.stderr   # the core set is complete

    snippet = tmp_path / "snippet.py"
    snippet.write_text(_readme_plain_pytorch_snippet())
    script = tmp_path / "core_script.py"
    script.write_text(CORE_SCRIPT)
    run = subprocess.run([str(python), str(script), str(site), str(snippet)], cwd=tmp_path,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    named = dict(line.split() for line in run.stdout.splitlines() if len(line.split()) == 2)
    assert named == {"codebook_monitor": "train", "image_metrics": "eval", "mnist": "data", "ldm": "ldm"}, run.stdout
