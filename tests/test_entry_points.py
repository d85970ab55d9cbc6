"""Every console script is also ``python -m <its module>``: the module runs its ``main`` (``--help``
prints the usage and exits 0) instead of importing silently and doing nothing."""
from __future__ import annotations

import configparser
import runpy
import sys
from pathlib import Path

import pytest

SETUP_CFG = Path(__file__).resolve().parents[1] / "setup.cfg"


def console_scripts() -> dict[str, str]:
    parser = configparser.ConfigParser()
    parser.read(SETUP_CFG)
    lines = parser["options.entry_points"]["console_scripts"].strip().splitlines()
    scripts = dict(line.split("=", 1) for line in lines)
    return {name.strip(): target.strip() for name, target in scripts.items()}


@pytest.mark.parametrize("name,target", sorted(console_scripts().items()))
def test_module_runs_its_main_under_python_m(name, target, monkeypatch, capsys):
    module, function = target.split(":")
    assert function in ("main", "cli")
    monkeypatch.setattr(sys, "argv", [f"python -m {module}", "--help"])
    with pytest.raises(SystemExit) as stopped:
        runpy.run_module(module, run_name="__main__", alter_sys=False)
    assert stopped.value.code == 0
    assert "usage:" in capsys.readouterr().out
