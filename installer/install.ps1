<#
.SYNOPSIS
Install Paradiff into its own virtual environment and add a Start-menu shortcut (Windows).

.DESCRIPTION
Creates (or reuses) a venv under $env:LOCALAPPDATA\Paradiff\venv, installs the right PyTorch
build into it, then Paradiff from this checkout, and adds "Paradiff" to the Start menu.
Re-running it upgrades the installation in place.

Environment variables:
  PARADIFF_HOME         where the venv and icon go (default: $env:LOCALAPPDATA\Paradiff)
  PARADIFF_TORCH        cuda | cpu | skip (default: cuda if nvidia-smi works, else cpu;
                        skip installs no torch, for a venv that already has one)
  PARADIFF_TORCH_INDEX  package index for the cuda build
                        (default: https://download.pytorch.org/whl/cu128)
  PARADIFF_SOURCE       what pip installs as Paradiff, verbatim (default: "<repo>")
  PARADIFF_PYTHON       Python used to create the venv (default: the py launcher, else python)

.PARAMETER DryRun
Print the commands and files it would run and write; change nothing.

.EXAMPLE
powershell -ExecutionPolicy Bypass -File installer\install.ps1 -DryRun
#>
[CmdletBinding()]
param([switch]$DryRun)

# Written for Windows PowerShell 5.1 as well as PowerShell 7: no ?? or ternaries.
Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

# The release Paradiff is tested against. Installed before Paradiff itself so that pip never
# picks a torch build on its own.
$TorchVersion = '2.13.0'
$TorchWhl = 'https://download.pytorch.org/whl'

function Format-Arg([string]$a) {
    if ($a -match '[\s"]') { return '"' + $a + '"' } else { return $a }
}

# Prints the command the way it could be pasted back, then runs it unless -DryRun.
function Invoke-Step([string]$Exe, [string[]]$Arguments) {
    Write-Host ('+ ' + ((@($Exe) + $Arguments | ForEach-Object { Format-Arg $_ }) -join ' '))
    if (-not $DryRun) {
        & $Exe @Arguments
        if ($LASTEXITCODE -ne 0) { throw "failed (exit code $LASTEXITCODE): $Exe $($Arguments -join ' ')" }
    }
}

# Windows PowerShell 5.1 turns a native program's stderr into a terminating error under
# ErrorActionPreference=Stop, so probes run inside try and only their exit code counts.
function Test-Native([string]$Exe, [string[]]$Arguments) {
    try {
        & $Exe @Arguments *> $null
        return ($LASTEXITCODE -eq 0)
    } catch {
        return $false
    }
}

$RepoRoot = Split-Path -Parent $PSScriptRoot
if ($env:PARADIFF_HOME) { $ParadiffHome = $env:PARADIFF_HOME } else { $ParadiffHome = Join-Path $env:LOCALAPPDATA 'Paradiff' }
$Venv = Join-Path $ParadiffHome 'venv'
$Vpy = Join-Path $Venv 'Scripts\python.exe'
$Gui = Join-Path $Venv 'Scripts\paradiff-gui.exe'

# --- which torch build ---
if ($env:PARADIFF_TORCH) {
    $Torch = $env:PARADIFF_TORCH
    if (@('cuda', 'cpu', 'mps', 'rocm', 'skip') -notcontains $Torch) {
        throw "PARADIFF_TORCH='$Torch' is not one of: cuda, cpu, mps, rocm, skip"
    }
    if ($Torch -eq 'mps' -or $Torch -eq 'rocm') {
        throw "PyTorch has no $Torch build for Windows; use PARADIFF_TORCH=cuda, cpu or skip"
    }
} elseif ((Get-Command nvidia-smi -ErrorAction SilentlyContinue) -and (Test-Native 'nvidia-smi' @())) {
    $Torch = 'cuda'
} else {
    $Torch = 'cpu'
}
$TorchIndex = ''
if ($Torch -eq 'cuda') {
    if ($env:PARADIFF_TORCH_INDEX) { $TorchIndex = $env:PARADIFF_TORCH_INDEX } else { $TorchIndex = "$TorchWhl/cu128" }
} elseif ($Torch -eq 'cpu') {
    $TorchIndex = "$TorchWhl/cpu"
}

# --- what to install ---
if ($env:PARADIFF_SOURCE) {
    $Source = $env:PARADIFF_SOURCE
} else {
    if (-not (Test-Path (Join-Path $RepoRoot 'pyproject.toml'))) {
        throw "no pyproject.toml in $RepoRoot; run this script from a Paradiff checkout or set PARADIFF_SOURCE"
    }
    # The desktop app's Qt dependencies live in the "gui" extra.
    $Source = "$RepoRoot"
}

# --- Python and the venv ---
# A venv whose base Python was upgraded or removed no longer starts; rebuild it then.
$NewVenv = -not ((Test-Path $Vpy) -and (Test-Native $Vpy @('-c', 'pass')))
if ($NewVenv) {
    if ($env:PARADIFF_PYTHON) { $Py = @($env:PARADIFF_PYTHON) }
    elseif (Get-Command py -ErrorAction SilentlyContinue) { $Py = @('py', '-3') }
    else { $Py = @('python') }
    $PyExe = $Py[0]
    $PyArgs = @($Py | Select-Object -Skip 1)
    # The Microsoft Store's python.exe stub prints nothing and fails, so no output means no Python.
    try {
        $PyVer = (& $PyExe @PyArgs -c "import sys; print('%d.%d' % sys.version_info[:2])" 2>$null | Select-Object -First 1)
    } catch {
        $PyVer = $null
    }
    if (-not $PyVer) {
        throw "no working Python found ($($Py -join ' ')); install Python >= 3.10 from python.org or set PARADIFF_PYTHON"
    }
    if ([version]$PyVer -lt [version]'3.10') {
        throw "Paradiff needs Python >= 3.10, but $($Py -join ' ') is $PyVer; install a newer one or set PARADIFF_PYTHON"
    }
}

Write-Host "==> Paradiff home: $ParadiffHome"
Write-Host "==> torch: $Torch"
if ($NewVenv) {
    Invoke-Step $PyExe ($PyArgs + @('-m', 'venv', '--clear', $Venv))
} else {
    Write-Host "==> reusing the venv at $Venv"
}
Invoke-Step $Vpy @('-m', 'pip', 'install', '--upgrade', 'pip')

# --- torch ---
# 'torch==X' is already satisfied by X+cpu, so switching builds needs the old one removed
# first. The marker remembers which build the venv has.
$TorchMark = Join-Path $Venv 'paradiff-torch-build'
if ($Torch -ne 'skip') {
    $Want = "$Torch $TorchIndex"
    if (-not $NewVenv -and (Test-Path $TorchMark)) {
        $Have = (Get-Content -Raw $TorchMark).Trim()
        if ($Have -ne $Want) {
            Write-Host "==> switching torch from '$Have' to '$Want'"
            Invoke-Step $Vpy @('-m', 'pip', 'uninstall', '-y', 'torch')
        }
    }
    Invoke-Step $Vpy @('-m', 'pip', 'install', "torch==$TorchVersion", '--index-url', $TorchIndex)
    if ($DryRun) { Write-Host "would write ${TorchMark}: $Want" } else { Set-Content -Path $TorchMark -Value $Want }
}

# --- Paradiff ---
# --upgrade (pip's only-if-needed strategy) moves Paradiff forward without touching torch.
Invoke-Step $Vpy @('-m', 'pip', 'install', '--upgrade', $Source)

# --- Start-menu shortcut ---
$Lnk = Join-Path ([Environment]::GetFolderPath('Programs')) 'Paradiff.lnk'
$IconSrc = Join-Path $RepoRoot 'resources\paradiff.ico'
# Copied so the shortcut keeps its icon when the checkout is moved or deleted.
$Icon = Join-Path $ParadiffHome 'paradiff.ico'
if ($DryRun) {
    Write-Host "would copy $IconSrc to $Icon"
    Write-Host "would write ${Lnk}: target $Gui, icon $Icon"
    Write-Host '==> dry run finished; nothing was changed'
    return
}
if (Test-Path $IconSrc) { Copy-Item -Force $IconSrc $Icon } else { Write-Host "==> warning: $IconSrc not found; the shortcut gets no icon" }
$Shortcut = (New-Object -ComObject WScript.Shell).CreateShortcut($Lnk)
$Shortcut.TargetPath = $Gui
$Shortcut.WorkingDirectory = $ParadiffHome
$Shortcut.Description = 'Paradiff'
if (Test-Path $Icon) { $Shortcut.IconLocation = "$Icon,0" }
$Shortcut.Save()
Write-Host "==> wrote $Lnk"
Write-Host '==> Paradiff is installed.'
Write-Host "==>   desktop app: $Gui  (Start menu: Paradiff)"
Write-Host "==>   command line: $(Join-Path $Venv 'Scripts\paradiff.exe')"
