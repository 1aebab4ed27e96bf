"""installer/install.sh, through its --dry-run plan: which torch build it picks, what it installs,
where the launcher goes, and that a dry run changes nothing.

Each run gets a PATH holding only the few tools the script needs (plus fakes where a test wants
them), so whether this machine has nvidia-smi, or is a Mac, cannot leak into the result. No
network, no installs.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "installer" / "install.sh"
BASH = shutil.which("bash")
TORCH_PIN = "torch==2.13.0"
WHL = "https://download.pytorch.org/whl"
ALLOWED = ("cuda", "cpu", "mps", "rocm", "skip")


class Result:
    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.rc = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr
        lines = proc.stdout.splitlines()
        # argv of every planned command, unquoted the way a shell would read the line
        self.plan = [shlex.split(line[2:]) for line in lines if line.startswith("+ ")]
        self.writes: dict[str, list[str]] = {}
        current: list[str] | None = None
        for line in lines:
            if line.startswith("would write ") and line.endswith(":"):
                current = self.writes.setdefault(line[len("would write ") : -1], [])
            elif current is not None and line.startswith("    "):
                current.append(line[4:])
            else:
                current = None
        self.lines = lines

    def commands(self, *words: str) -> list[list[str]]:
        """Planned commands that contain all of ``words`` as arguments."""
        return [argv for argv in self.plan if all(w in argv for w in words)]

    def index(self, argv: list[str]) -> int:
        return self.plan.index(argv)


def _exe(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def _bindir(tmp_path: Path) -> Path:
    """A PATH directory with just the outside tools the script uses."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("uname", "cat"):
        found = shutil.which(tool)
        assert found, f"{tool} is needed to run these tests"
        (bindir / tool).symlink_to(found)
    (bindir / "python3").symlink_to(os.path.realpath(sys.executable))
    return bindir


@pytest.fixture
def sandbox(tmp_path: Path) -> dict[str, Path]:
    home = tmp_path / "home"
    home.mkdir()
    return {"bin": _bindir(tmp_path), "home": home, "xdg": tmp_path / "xdg"}


def run(
    sandbox: dict[str, Path],
    *args: str,
    script: Path = SCRIPT,
    env: dict[str, str] | None = None,
) -> Result:
    assert BASH, "bash is needed to run these tests"
    full_env = {
        "PATH": str(sandbox["bin"]),
        "HOME": str(sandbox["home"]),
        "XDG_DATA_HOME": str(sandbox["xdg"]),
        "LC_ALL": "C",
    }
    full_env.update(env or {})
    proc = subprocess.run(
        [BASH, str(script), *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return Result(proc)


def dry(sandbox: dict[str, Path], **env: str) -> Result:
    res = run(sandbox, "--dry-run", env=env)
    assert res.rc == 0, res.err
    return res


def default_venv(sandbox: dict[str, Path]) -> Path:
    return sandbox["home"] / ".local" / "share" / "paradiff" / "venv"


def torch_commands(res: Result) -> list[list[str]]:
    return [argv for argv in res.plan if any(a.startswith("torch") for a in argv)]


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
        for p in sorted(root.rglob("*"))
    }


# --- basics ------------------------------------------------------------------------------


def test_script_parses_with_bash_n() -> None:
    assert BASH
    proc = subprocess.run([BASH, "-n", str(SCRIPT)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def test_help_lists_options_and_variables(sandbox: dict[str, Path]) -> None:
    res = run(sandbox, "--help")
    assert res.rc == 0, res.err
    for word in ("--dry-run", "PARADIFF_HOME", "PARADIFF_TORCH", "PARADIFF_TORCH_INDEX", "PARADIFF_SOURCE"):
        assert word in res.out
    assert res.plan == []


def test_unknown_option_fails(sandbox: dict[str, Path]) -> None:
    res = run(sandbox, "--bogus")
    assert res.rc != 0
    assert "--bogus" in res.err
    assert res.plan == []


def test_plan_output_has_only_known_line_kinds(sandbox: dict[str, Path]) -> None:
    res = dry(sandbox)
    for line in res.lines:
        assert line.startswith(("+ ", "==> ", "would write ", "    ")), line
    assert len(res.plan) >= 4


# --- torch choice ------------------------------------------------------------------------


def test_working_nvidia_smi_picks_cuda_build(sandbox: dict[str, Path]) -> None:
    _exe(sandbox["bin"] / "nvidia-smi", "exit 0")
    res = dry(sandbox)
    vpy = str(default_venv(sandbox) / "bin" / "python")
    cuda = [vpy, "-m", "pip", "install", TORCH_PIN, "--index-url", f"{WHL}/cu128"]
    assert torch_commands(res) == [cuda]
    # torch goes in after the venv exists and before Paradiff, so pip never picks torch itself
    create = res.commands("-m", "venv")
    assert create == [["python3", "-m", "venv", "--clear", str(default_venv(sandbox))]]
    paradiff = res.commands(vpy, "--upgrade", f"{REPO}")
    assert len(paradiff) == 1
    assert res.index(create[0]) < res.index(cuda) < res.index(paradiff[0])


def test_cuda_index_can_be_overridden(sandbox: dict[str, Path]) -> None:
    _exe(sandbox["bin"] / "nvidia-smi", "exit 0")
    res = dry(sandbox, PARADIFF_TORCH_INDEX="https://mirror.example/whl/cu126")
    (cmd,) = torch_commands(res)
    assert cmd[-2:] == ["--index-url", "https://mirror.example/whl/cu126"]


def test_failing_nvidia_smi_falls_back_to_cpu(sandbox: dict[str, Path]) -> None:
    # present but broken (no driver loaded): the CUDA build would not run
    _exe(sandbox["bin"] / "nvidia-smi", "exit 9")
    res = dry(sandbox)
    (cmd,) = torch_commands(res)
    assert cmd[-3:] == [TORCH_PIN, "--index-url", f"{WHL}/cpu"]


def test_no_nvidia_smi_picks_cpu_build(sandbox: dict[str, Path]) -> None:
    assert not (sandbox["bin"] / "nvidia-smi").exists()
    res = dry(sandbox)
    vpy = str(default_venv(sandbox) / "bin" / "python")
    assert torch_commands(res) == [[vpy, "-m", "pip", "install", TORCH_PIN, "--index-url", f"{WHL}/cpu"]]
    assert "cu128" not in res.out


def test_explicit_choice_beats_detection(sandbox: dict[str, Path]) -> None:
    _exe(sandbox["bin"] / "nvidia-smi", "exit 0")
    (cmd,) = torch_commands(dry(sandbox, PARADIFF_TORCH="rocm"))
    assert cmd[-3:] == [TORCH_PIN, "--index-url", f"{WHL}/rocm6.4"]
    (cmd,) = torch_commands(dry(sandbox, PARADIFF_TORCH="cpu"))
    assert cmd[-3:] == [TORCH_PIN, "--index-url", f"{WHL}/cpu"]


def test_skip_installs_no_torch_but_still_installs_paradiff(sandbox: dict[str, Path]) -> None:
    _exe(sandbox["bin"] / "nvidia-smi", "exit 0")
    res = dry(sandbox, PARADIFF_TORCH="skip")
    assert torch_commands(res) == []
    # (tmp_path itself has "torch" in it here, from the test's name)
    assert "download.pytorch.org" not in res.out
    assert not any(path.endswith("paradiff-torch-build") for path in res.writes)
    assert len(res.commands("--upgrade", f"{REPO}")) == 1


def test_bogus_choice_is_refused_with_the_allowed_values(sandbox: dict[str, Path]) -> None:
    res = run(sandbox, "--dry-run", env={"PARADIFF_TORCH": "bogus"})
    assert res.rc != 0
    assert "PARADIFF_TORCH" in res.err
    assert "bogus" in res.err
    for value in ALLOWED:
        assert value in res.err
    assert res.plan == []


def test_mps_is_refused_on_linux(sandbox: dict[str, Path]) -> None:
    res = run(sandbox, "--dry-run", env={"PARADIFF_TORCH": "mps"})
    assert res.rc != 0
    assert "mps" in res.err
    assert res.plan == []


def test_switching_build_uninstalls_the_old_torch_first(sandbox: dict[str, Path], tmp_path: Path) -> None:
    venv = tmp_path / "ph" / "venv"
    (venv / "bin").mkdir(parents=True)
    _exe(venv / "bin" / "python", "exit 0")  # a venv that starts
    mark = venv / "paradiff-torch-build"
    mark.write_text(f"cpu {WHL}/cpu\n")
    _exe(sandbox["bin"] / "nvidia-smi", "exit 0")

    res = dry(sandbox, PARADIFF_HOME=str(tmp_path / "ph"))
    vpy = str(venv / "bin" / "python")
    uninstall = [vpy, "-m", "pip", "uninstall", "-y", "torch"]
    assert res.commands("-m", "venv") == []  # the working venv is reused
    assert uninstall in res.plan
    (install,) = res.commands(TORCH_PIN)
    assert res.index(uninstall) < res.index(install)
    assert install[-1] == f"{WHL}/cu128"
    assert res.writes[str(mark)] == [f"cuda {WHL}/cu128"]
    assert mark.read_text() == f"cpu {WHL}/cpu\n"  # dry run

    mark.write_text(f"cuda {WHL}/cu128\n")
    res = dry(sandbox, PARADIFF_HOME=str(tmp_path / "ph"))
    assert uninstall not in res.plan
    assert len(res.commands(TORCH_PIN)) == 1


# --- Python ------------------------------------------------------------------------------


def test_too_old_python_is_refused(sandbox: dict[str, Path]) -> None:
    (sandbox["bin"] / "python3").unlink()
    _exe(sandbox["bin"] / "python3", "echo 3.9")
    res = run(sandbox, "--dry-run")
    assert res.rc != 0
    assert "3.10" in res.err and "3.9" in res.err
    assert res.plan == []


def test_missing_python_is_refused(sandbox: dict[str, Path]) -> None:
    res = run(sandbox, "--dry-run", env={"PARADIFF_PYTHON": "python3.99-nonexistent"})
    assert res.rc != 0
    assert "python3.99-nonexistent" in res.err
    assert res.plan == []


# --- launcher and dry-run safety ---------------------------------------------------------


def test_desktop_entry_goes_under_xdg_data_home_and_dry_run_writes_nothing(
    sandbox: dict[str, Path], tmp_path: Path
) -> None:
    before = snapshot(tmp_path)
    res = dry(sandbox)
    assert snapshot(tmp_path) == before
    assert not sandbox["xdg"].exists()
    assert list(sandbox["home"].iterdir()) == []

    entry = sandbox["xdg"] / "applications" / "paradiff.desktop"
    assert str(entry) in res.writes
    ph = default_venv(sandbox).parent
    lines = res.writes[str(entry)]
    assert lines[0] == "[Desktop Entry]"
    assert "Name=Paradiff" in lines
    assert f"Exec={ph}/venv/bin/paradiff-gui" in lines
    assert f"Icon={ph}/paradiff.png" in lines
    assert "Categories=Graphics;" in lines
    assert "Terminal=false" in lines
    # the icon the entry names is copied there from the checkout
    assert ["cp", str(REPO / "resources" / "paradiff.png"), str(ph / "paradiff.png")] in res.plan


def test_without_xdg_data_home_the_entry_goes_under_home(sandbox: dict[str, Path]) -> None:
    assert BASH
    env = {"PATH": str(sandbox["bin"]), "HOME": str(sandbox["home"])}
    proc = subprocess.run(
        [BASH, str(SCRIPT), "--dry-run"], env=env, capture_output=True, text=True, check=False
    )
    res = Result(proc)
    assert res.rc == 0, res.err
    assert list(res.writes) == [
        str(default_venv(sandbox) / "paradiff-torch-build"),
        str(sandbox["home"] / ".local" / "share" / "applications" / "paradiff.desktop"),
    ]


def test_paradiff_home_with_spaces_is_quoted_in_exec(sandbox: dict[str, Path], tmp_path: Path) -> None:
    ph = tmp_path / "my apps" / "100%"
    res = dry(sandbox, PARADIFF_HOME=str(ph))
    # commands are shell-quoted, so they split back into the real path
    assert res.commands("python3", "-m", "venv") == [["python3", "-m", "venv", "--clear", str(ph / "venv")]]
    entry = res.writes[str(sandbox["xdg"] / "applications" / "paradiff.desktop")]
    exec_path = str(ph / "venv" / "bin" / "paradiff-gui").replace("%", "%%")
    assert f'Exec="{exec_path}"' in entry
    assert not ph.exists()


def test_paradiff_home_the_entry_cannot_hold_is_refused(sandbox: dict[str, Path], tmp_path: Path) -> None:
    res = run(sandbox, "--dry-run", env={"PARADIFF_HOME": str(tmp_path / "a$b")})
    assert res.rc != 0
    assert "PARADIFF_HOME" in res.err
    assert res.plan == []


# --- where Paradiff comes from -----------------------------------------------------------


def _copy_checkout(root: Path, with_pyproject: bool = True) -> Path:
    (root / "installer").mkdir(parents=True)
    shutil.copy2(SCRIPT, root / "installer" / "install.sh")
    if with_pyproject:
        (root / "pyproject.toml").write_text('[project]\nname = "paradiff-gui"\n')
    return root / "installer" / "install.sh"


def test_installs_the_checkout_the_script_lives_in(sandbox: dict[str, Path], tmp_path: Path) -> None:
    checkout = tmp_path / "my checkout"
    script = _copy_checkout(checkout)
    res = run(sandbox, "--dry-run", script=script)
    assert res.rc == 0, res.err
    assert len(res.commands("--upgrade", f"{checkout}")) == 1
    # this copy has no resources/: the entry is still written, just without an icon
    entry = res.writes[str(sandbox["xdg"] / "applications" / "paradiff.desktop")]
    assert not any(line.startswith("Icon=") for line in entry)
    assert res.commands("cp") == []


def test_paradiff_source_overrides_the_checkout(sandbox: dict[str, Path], tmp_path: Path) -> None:
    script = _copy_checkout(tmp_path / "co", with_pyproject=False)
    res = run(sandbox, "--dry-run", script=script, env={"PARADIFF_SOURCE": "paradiff-gui[gui]==0.1.0"})
    assert res.rc == 0, res.err
    (cmd,) = res.commands("paradiff-gui[gui]==0.1.0")
    assert cmd[-3:] == ["install", "--upgrade", "paradiff-gui[gui]==0.1.0"]


def test_no_checkout_and_no_source_is_refused(sandbox: dict[str, Path], tmp_path: Path) -> None:
    script = _copy_checkout(tmp_path / "co", with_pyproject=False)
    res = run(sandbox, "--dry-run", script=script)
    assert res.rc != 0
    assert "PARADIFF_SOURCE" in res.err
    assert res.plan == []


# --- macOS, through a fake uname ---------------------------------------------------------


def _fake_uname(sandbox: dict[str, Path], machine: str) -> None:
    (sandbox["bin"] / "uname").unlink()
    _exe(sandbox["bin"] / "uname", f'case "$1" in -s) echo Darwin ;; -m) echo {machine} ;; esac')


def test_apple_silicon_gets_pypi_torch_and_a_command_launcher(
    sandbox: dict[str, Path], tmp_path: Path
) -> None:
    _fake_uname(sandbox, "arm64")
    before = snapshot(tmp_path)
    res = dry(sandbox)
    assert snapshot(tmp_path) == before

    ph = sandbox["home"] / "Library" / "Application Support" / "Paradiff"
    vpy = str(ph / "venv" / "bin" / "python")
    assert torch_commands(res) == [[vpy, "-m", "pip", "install", TORCH_PIN]]
    launcher = sandbox["home"] / "Applications" / "Paradiff.command"
    assert list(res.writes) == [str(ph / "venv" / "paradiff-torch-build"), str(launcher)]
    shebang, exec_line = res.writes[str(launcher)]
    assert shebang == "#!/bin/bash"
    assert shlex.split(exec_line) == ["exec", str(ph / "venv" / "bin" / "paradiff-gui"), "$@"]
    assert '"$@"' in exec_line


def test_intel_mac_is_told_to_bring_its_own_torch(sandbox: dict[str, Path]) -> None:
    _fake_uname(sandbox, "x86_64")
    res = run(sandbox, "--dry-run")
    assert res.rc != 0
    assert "PARADIFF_TORCH=skip" in res.err
    assert res.plan == []
    assert torch_commands(dry(sandbox, PARADIFF_TORCH="skip")) == []


def test_cuda_is_refused_on_macos(sandbox: dict[str, Path]) -> None:
    _fake_uname(sandbox, "arm64")
    res = run(sandbox, "--dry-run", env={"PARADIFF_TORCH": "cuda"})
    assert res.rc != 0
    assert "macOS" in res.err
