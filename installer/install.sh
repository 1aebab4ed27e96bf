#!/usr/bin/env bash
# Install Paradiff into its own virtual environment, with the right PyTorch build for this
# machine, and add a launcher. Linux and macOS. Run with --help for the options.
#
# Written for bash 3.2 too (macOS's /bin/bash): no ${var,,}, no mapfile, no empty arrays under
# set -u.
set -euo pipefail

# The release Paradiff is tested against. Installed before Paradiff itself, because letting pip
# pick torch as a dependency pulls whatever build PyPI serves (on Linux a multi-GB CUDA one).
TORCH_VERSION="2.13.0"
TORCH_WHL="https://download.pytorch.org/whl"
MIN_PY_MAJOR=3
MIN_PY_MINOR=10

usage() {
    cat <<EOF
Usage: install.sh [--dry-run] [--help]

Installs Paradiff into a virtual environment and adds a launcher:
  Linux: a desktop entry in \${XDG_DATA_HOME:-\$HOME/.local/share}/applications
  macOS: ~/Applications/Paradiff.command
Re-running it upgrades the installation in place.

Options:
  --dry-run   print the commands and files it would run and write, change nothing
  --help      show this help

Environment:
  PARADIFF_HOME         where the venv and icon go
                        (default: ~/.local/share/paradiff,
                         on macOS ~/Library/Application Support/Paradiff)
  PARADIFF_TORCH        torch build: cuda | cpu | mps | rocm | skip
                        (default: cuda if nvidia-smi works, mps on Apple silicon, else cpu;
                         skip installs no torch, for a venv that already has one)
  PARADIFF_TORCH_INDEX  package index for the cuda build (default: $TORCH_WHL/cu128)
  PARADIFF_SOURCE       what pip installs as Paradiff, verbatim
                        (default: this repository, "<repo>")
  PARADIFF_PYTHON       Python used to create the venv (default: python3), >= $MIN_PY_MAJOR.$MIN_PY_MINOR
EOF
}

NL=$'\n'
say() { printf '==> %s\n' "$*"; }
die() {
    printf 'install.sh: error: %s\n' "$*" >&2
    exit 1
}

DRY_RUN=0
for arg in "$@"; do
    case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    -h | --help)
        usage
        exit 0
        ;;
    *) die "unknown option '$arg' (see --help)" ;;
    esac
done

# Printed with %q so a dry-run plan can be pasted back into a shell, spaces in paths included.
run() {
    printf '+'
    printf ' %q' "$@"
    printf '\n'
    if [ "$DRY_RUN" -eq 0 ]; then
        "$@"
    fi
}

# write_file PATH MODE CONTENT
write_file() {
    if [ "$DRY_RUN" -eq 1 ]; then
        printf 'would write %s:\n    %s\n' "$1" "${3//$NL/$NL    }"
        return
    fi
    run mkdir -p "${1%/*}"
    printf '%s\n' "$3" >"$1.tmp.$$"
    chmod "$2" "$1.tmp.$$"
    mv -f "$1.tmp.$$" "$1"
    say "wrote $1"
}

case "${BASH_SOURCE[0]}" in
*/*) SCRIPT_DIR="${BASH_SOURCE[0]%/*}" ;;
*) SCRIPT_DIR=. ;;
esac
SCRIPT_DIR="$(cd "$SCRIPT_DIR" && pwd)"
REPO_ROOT="${SCRIPT_DIR%/*}"
OS="$(uname -s)"
ARCH="$(uname -m)"
[ -n "${HOME:-}" ] || die "HOME is not set"

case "$OS" in
Linux) DEFAULT_HOME="$HOME/.local/share/paradiff" ;;
Darwin) DEFAULT_HOME="$HOME/Library/Application Support/Paradiff" ;;
*) die "unsupported system '$OS': this script is for Linux and macOS (use install.ps1 on Windows)" ;;
esac
PARADIFF_HOME="${PARADIFF_HOME:-$DEFAULT_HOME}"
VENV="$PARADIFF_HOME/venv"
VPY="$VENV/bin/python"
GUI="$VENV/bin/paradiff-gui"

if [ "$OS" = Linux ]; then
    # Checked now rather than when the desktop entry is written, so that a path the entry
    # cannot hold stops the install before it starts. The desktop-entry spec's Exec rules: %
    # is doubled, and a path with spaces and the like is double-quoted. Characters that would
    # need escaping inside those quotes are too odd in a path to be worth getting subtly
    # wrong, so they are refused.
    DESKTOP_EXEC="${GUI//[%]/%%}"
    case "$DESKTOP_EXEC" in
    *[\"\`\$\\]* | *"$NL"*) die "PARADIFF_HOME ($PARADIFF_HOME) must not contain \" \` \$ \\ or newlines" ;;
    *[!A-Za-z0-9_./+-]*) DESKTOP_EXEC="\"$DESKTOP_EXEC\"" ;;
    esac
fi

# --- which torch build -------------------------------------------------------------------
if [ -n "${PARADIFF_TORCH:-}" ]; then
    TORCH="$PARADIFF_TORCH"
    case "$TORCH" in
    cuda | cpu | mps | rocm | skip) ;;
    *) die "PARADIFF_TORCH='$TORCH' is not one of: cuda, cpu, mps, rocm, skip" ;;
    esac
    torch_why="set by PARADIFF_TORCH"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    # nvidia-smi also exists where the driver is broken or no GPU is attached; only a working
    # one means the CUDA build can run.
    TORCH=cuda
    torch_why="nvidia-smi found a working NVIDIA driver"
elif [ "$OS" = Darwin ] && [ "$ARCH" = arm64 ]; then
    TORCH=mps
    torch_why="Apple silicon"
else
    TORCH=cpu
    torch_why="no NVIDIA GPU found"
fi

TORCH_INDEX=""
case "$OS:$TORCH" in
*:skip) ;;
Darwin:cuda | Darwin:rocm) die "PyTorch has no $TORCH build for macOS; use PARADIFF_TORCH=mps, cpu or skip" ;;
Darwin:*)
    # PyPI's macOS wheels are the only macOS builds and include MPS. There are none for Intel
    # Macs any more, so say so instead of letting pip fail with "no matching distribution".
    [ "$ARCH" = arm64 ] || die "PyTorch $TORCH_VERSION has no wheels for Intel Macs ($ARCH);" \
        "install a torch yourself into $VENV and re-run with PARADIFF_TORCH=skip"
    ;;
Linux:cuda) TORCH_INDEX="${PARADIFF_TORCH_INDEX:-$TORCH_WHL/cu128}" ;;
Linux:cpu) TORCH_INDEX="$TORCH_WHL/cpu" ;;
Linux:rocm) TORCH_INDEX="$TORCH_WHL/rocm6.4" ;;
Linux:mps) die "the mps build is for macOS; on Linux use PARADIFF_TORCH=cuda, rocm, cpu or skip" ;;
esac

# --- what to install ---------------------------------------------------------------------
if [ -n "${PARADIFF_SOURCE:-}" ]; then
    SOURCE="$PARADIFF_SOURCE"
else
    [ -f "$REPO_ROOT/pyproject.toml" ] ||
        die "no pyproject.toml in $REPO_ROOT; run this script from a Paradiff checkout or set PARADIFF_SOURCE"
    # The desktop app's Qt dependencies live in the "gui" extra.
    SOURCE="${REPO_ROOT}"
fi
ICON_SRC="$REPO_ROOT/resources/paradiff.png"

# --- Python and the venv -----------------------------------------------------------------
# A venv whose base Python was upgraded or removed no longer starts; rebuild it then.
NEW_VENV=0
if [ ! -x "$VPY" ] || ! "$VPY" -c 'pass' >/dev/null 2>&1; then
    NEW_VENV=1
    PY="${PARADIFF_PYTHON:-python3}"
    command -v "$PY" >/dev/null 2>&1 ||
        die "'$PY' not found; install Python >= $MIN_PY_MAJOR.$MIN_PY_MINOR (or point PARADIFF_PYTHON at one)"
    py_ver="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" ||
        die "'$PY' does not run"
    py_major="${py_ver%%.*}"
    py_minor="${py_ver#*.}"
    case "$py_major.$py_minor" in
    *[!0-9.]* | .* | *.) die "'$PY' reported an unexpected version '$py_ver'" ;;
    esac
    if [ "$py_major" -lt "$MIN_PY_MAJOR" ] ||
        { [ "$py_major" -eq "$MIN_PY_MAJOR" ] && [ "$py_minor" -lt "$MIN_PY_MINOR" ]; }; then
        die "Paradiff needs Python >= $MIN_PY_MAJOR.$MIN_PY_MINOR, but '$PY' is $py_ver;" \
            "install a newer Python and set PARADIFF_PYTHON to it"
    fi
    # Debian and Ubuntu ship venv without ensurepip, and 'python3 -m venv' then fails halfway.
    "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1 ||
        die "'$PY' ($py_ver) cannot create virtual environments; on Debian/Ubuntu: sudo apt install python3-venv"
fi

say "Paradiff home: $PARADIFF_HOME"
say "torch: $TORCH ($torch_why)"

if [ "$NEW_VENV" -eq 1 ]; then
    run "$PY" -m venv --clear "$VENV"
else
    say "reusing the venv at $VENV"
fi
run "$VPY" -m pip install --upgrade pip

# --- torch -------------------------------------------------------------------------------
# 'torch==X' is already satisfied by X+cpu, so switching builds (say, cpu to cuda after
# installing a driver) needs the old one removed first. The marker remembers which it was.
TORCH_MARK="$VENV/paradiff-torch-build"
if [ "$TORCH" != skip ]; then
    want="$TORCH $TORCH_INDEX"
    have=""
    [ ! -f "$TORCH_MARK" ] || have="$(<"$TORCH_MARK")"
    if [ "$NEW_VENV" -eq 0 ] && [ -n "$have" ] && [ "$have" != "$want" ]; then
        say "switching torch from '$have' to '$want'"
        run "$VPY" -m pip uninstall -y torch
    fi
    if [ -n "$TORCH_INDEX" ]; then
        run "$VPY" -m pip install "torch==$TORCH_VERSION" --index-url "$TORCH_INDEX"
    else
        run "$VPY" -m pip install "torch==$TORCH_VERSION"
    fi
    write_file "$TORCH_MARK" 644 "$want"
fi

if [ "$TORCH" = skip ] && [ "$NEW_VENV" -eq 0 ] &&
    ! "$VPY" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is None)' >/dev/null 2>&1; then
    say "warning: PARADIFF_TORCH=skip but $VENV has no torch; pip will pick one as Paradiff's dependency"
fi

# --- Paradiff ----------------------------------------------------------------------------
# --upgrade (pip's only-if-needed strategy) moves Paradiff forward without touching the torch
# installed above.
run "$VPY" -m pip install --upgrade "$SOURCE"

# --- launcher ----------------------------------------------------------------------------
if [ "$OS" = Linux ]; then
    APPS="${XDG_DATA_HOME:-$HOME/.local/share}/applications"
    icon_line=""
    if [ -f "$ICON_SRC" ]; then
        # Copied so the menu entry keeps its icon when the checkout is moved or deleted.
        run mkdir -p "$PARADIFF_HOME"
        run cp "$ICON_SRC" "$PARADIFF_HOME/paradiff.png"
        icon_line="${NL}Icon=$PARADIFF_HOME/paradiff.png"
    else
        say "warning: $ICON_SRC not found; the menu entry gets no icon"
    fi
    write_file "$APPS/paradiff.desktop" 644 "[Desktop Entry]
Type=Application
Name=Paradiff
Comment=Tiled diffusion image generation
Exec=$DESKTOP_EXEC$icon_line
Terminal=false
Categories=Graphics;"
    if command -v update-desktop-database >/dev/null 2>&1; then
        run update-desktop-database -q "$APPS" || say "warning: update-desktop-database failed (harmless)"
    fi
    LAUNCHER="$APPS/paradiff.desktop"
else
    LAUNCHER="$HOME/Applications/Paradiff.command"
    # Finder runs a .command file in Terminal; exec keeps just one process.
    write_file "$LAUNCHER" 755 "#!/bin/bash
exec $(printf '%q' "$GUI") \"\$@\""
fi

if [ "$DRY_RUN" -eq 1 ]; then
    say "dry run finished; nothing was changed"
else
    say "Paradiff is installed."
    say "  desktop app: $GUI  (launcher: $LAUNCHER)"
    say "  command line: $VENV/bin/paradiff"
fi
