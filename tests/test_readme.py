"""CI is the fresh-machine check: `.ci/run` runs exactly the README's set-up and test commands."""
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def readme_block(heading: str) -> list[str]:
    """The commands of the first fenced code block under a `## heading` of the README."""
    text = (REPO / "README.md").read_text()
    section = re.search(rf"^## {re.escape(heading)}\b.*?(?=^## |\Z)", text, re.M | re.S)
    assert section, f"README.md has no '## {heading}' section"
    block = re.search(r"^```[a-z]*\n(.*?)^```", section.group(0), re.M | re.S)
    assert block, f"README.md's '## {heading}' section has no fenced code block"
    return commands(block.group(1))


def commands(script: str) -> list[str]:
    """Command lines, without comments, blank lines and shell plumbing (set, cd, export), and with a
    `timeout SECONDS` wrapper removed (CI may bound a command; it must not change it)."""
    out = []
    for line in script.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        words = shlex.split(line)
        if words[0] in ("set", "cd", "export"):
            continue
        if words[0] == "timeout":
            words = words[2:]
        out.append(" ".join(words))
    return out


def test_ci_runs_the_readme_setup_and_test_commands():
    setup, test = readme_block("Set up"), readme_block("Test")
    assert setup == ["bash scripts/setup.sh && . .venv/bin/activate"], setup
    assert test == ["python -m pytest -q"], test
    assert commands((REPO / ".ci" / "run").read_text()) == setup + test


def test_setup_script_installs_what_the_tests_need():
    """What the tests look for is what scripts/setup.sh installs: the venv with the dev extra,
    helm at .tools/helm (tests/test_helm_chart.py) and chromium (tests/test_report.py)."""
    script = (REPO / "scripts" / "setup.sh").read_text()
    assert "pip install -q -c constraints.txt -e '.[dev]'" in script
    assert "bash scripts/install_helm.sh .tools" in script
    assert "apt_install chromium" in script
    assert '".tools" / "helm"' in (REPO / "tests" / "test_helm_chart.py").read_text()


def test_a_missing_tool_fails_naming_the_setup_command(tmp_path, monkeypatch):
    from tests.conftest import require_tool

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match=r"run `bash scripts/setup\.sh`") as e:
        require_tool("helm", [tmp_path / "helm", "helm"], "tests/test_helm_chart.py")
    assert "helm is needed by tests/test_helm_chart.py" in str(e.value)
    fake = tmp_path / "helm"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert require_tool("helm", [tmp_path / "nope", "helm"], "x") == str(fake)  # found on PATH
