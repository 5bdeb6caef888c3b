<#
.SYNOPSIS
  Build serfbridge.exe (one-folder and one-file) and the NSIS installer on Windows.

.DESCRIPTION
  The same spec and pins as the Linux-hosted wine build (installers/windows/build-wine.sh):
  a fresh venv from the given Python (3.11 x64), PyInstaller and the runtime dependencies
  pinned by installers/constraints.txt, then installers/serfbridge.spec in both modes, then
  makensis if it is on PATH (or -Makensis). Output in dist\windows, as the wine build:
    dist\windows\serfbridge\serfbridge.exe, dist\windows\serfbridge-onefile.exe,
    dist\windows\serfbridge-VERSION-setup.exe

.EXAMPLE
  powershell -ExecutionPolicy Bypass -File installers\windows\build.ps1 -Python py -PythonArgs -3.11
#>
param(
    [string]$Python = "python",
    [string[]]$PythonArgs = @(),
    [string]$Out = "",
    [string]$Makensis = "makensis",
    [string]$BuildId = ""
)
$ErrorActionPreference = "Stop"
Set-StrictMode -Version Latest

$Root = (Resolve-Path (Join-Path $PSScriptRoot "..\..")).Path
if (-not $Out) { $Out = Join-Path $Root "dist\windows" }
$Work = Join-Path $Root "build\windows"
$Venv = Join-Path $Work "venv"
$Constraints = Join-Path $Root "installers\constraints.txt"
$Spec = Join-Path $Root "installers\serfbridge.spec"

function Invoke-Checked([string]$Exe, [string[]]$Arguments) {
    & $Exe @Arguments
    if ($LASTEXITCODE -ne 0) { throw "$Exe $($Arguments -join ' ') exited $LASTEXITCODE" }
}

$Version = (Select-String -Path (Join-Path $Root "serfbridge\__init__.py") `
    -Pattern '^__version__ = "(.*)"$').Matches[0].Groups[1].Value
$Commit = (& git -C $Root rev-parse --short=12 HEAD 2>$null)
if (-not $Commit) { $Commit = "unknown" }

New-Item -ItemType Directory -Force -Path $Work, $Out | Out-Null
if (-not (Test-Path (Join-Path $Venv ".complete"))) {
    if (Test-Path $Venv) { Remove-Item -Recurse -Force $Venv }
    Invoke-Checked $Python ($PythonArgs + @("-m", "venv", $Venv))
    $VPy = Join-Path $Venv "Scripts\python.exe"
    # Runtime dependencies from pyproject.toml (one list for every build).
    $Reqs = Join-Path $Work "requirements.txt"
    Invoke-Checked $VPy @("-c", "import sys, tomllib; d = tomllib.load(open(sys.argv[1], 'rb')); open(sys.argv[2], 'w').write('\n'.join(d['project']['dependencies']))", (Join-Path $Root "pyproject.toml"), $Reqs)
    Invoke-Checked $VPy @("-m", "pip", "install", "-q", "-c", $Constraints, "pyinstaller",
        "pyinstaller-hooks-contrib", "pefile", "pywin32-ctypes", "-r", $Reqs)
    New-Item -ItemType File (Join-Path $Venv ".complete") | Out-Null
}
$VPy = Join-Path $Venv "Scripts\python.exe"

foreach ($Mode in @("onedir", "onefile")) {
    $Dist = Join-Path $Work "dist-$Mode"
    Invoke-Checked $VPy @("-m", "PyInstaller", "--noconfirm", "--log-level", "WARN",
        "--distpath", $Dist, "--workpath", (Join-Path $Work "build-$Mode"), $Spec, "--",
        "--mode", $Mode, "--build-id", $BuildId, "--commit", $Commit)
}
$OneDir = Join-Path $Out "serfbridge"
if (Test-Path $OneDir) { Remove-Item -Recurse -Force $OneDir }
Copy-Item -Recurse (Join-Path $Work "dist-onedir\serfbridge") $OneDir
Copy-Item -Force (Join-Path $Work "dist-onefile\serfbridge.exe") (Join-Path $Out "serfbridge-onefile.exe")
& (Join-Path $OneDir "serfbridge.exe") --version

if (Get-Command $Makensis -ErrorAction SilentlyContinue) {
    Invoke-Checked $Makensis @("-V2", "-NOCD", "-DVERSION=$Version", "-DSRCDIR=$OneDir",
        "-DCONFIG=$(Join-Path $Root 'installers\serfbridge.example.toml')",
        "-DOUTFILE=$(Join-Path $Out "serfbridge-$Version-setup.exe")",
        (Join-Path $Root "installers\windows\serfbridge.nsi"))
} else {
    Write-Warning "makensis not found: no installer built (install NSIS 3 or pass -Makensis)"
}
