; NSIS installer for serfbridge on Windows (x64). Built by build-installer.sh (Linux, makensis
; from Debian's nsis) or build.ps1 (Windows):
;   makensis /DVERSION=0.1.0 /DSRCDIR=<one-folder build> /DCONFIG=<example toml>
;            /DOUTFILE=<setup.exe> serfbridge.nsi
; Installs: the one-folder build to Program Files\serfbridge; the example config to
; %ProgramData%\serfbridge\serfbridge.toml (kept if it exists); the install dir on the system
; PATH; the serfbridge-relay service (manual start, restart on failure) hosted by
; `serfbridge.exe service` (serfbridge/winservice.py). Silent: setup.exe /S.
; Uninstall removes the program, the service, the PATH entry and the registry keys; it keeps
; %ProgramData%\serfbridge (config, spool, dead letters, log), as removing a Debian package does.

Unicode true
; 64-bit installer: wine runs it without 32-bit support, and it sees the real Program Files.
Target amd64-unicode
!include LogicLib.nsh
!include x64.nsh
!include StrFunc.nsh
!include WinMessages.nsh
${StrStr}
${UnStrStr}
${UnStrRep}

!ifndef VERSION
  !error "pass /DVERSION=x.y.z"
!endif
!define SERVICE "serfbridge-relay"
!define UNINST_KEY "Software\Microsoft\Windows\CurrentVersion\Uninstall\serfbridge"
!define ENV_KEY "SYSTEM\CurrentControlSet\Control\Session Manager\Environment"

Name "serfbridge ${VERSION}"
OutFile "${OUTFILE}"
InstallDir "$PROGRAMFILES64\serfbridge"
RequestExecutionLevel admin
SetCompressor /SOLID lzma
ShowInstDetails show
VIProductVersion "${VERSION}.0"
VIAddVersionKey "ProductName" "serfbridge"
VIAddVersionKey "FileVersion" "${VERSION}"
VIAddVersionKey "FileDescription" "serfbridge installer"
VIAddVersionKey "LegalCopyright" "MPL-2.0"

Page directory
Page instfiles
UninstPage uninstConfirm
UninstPage instfiles

Function .onInit
  ${IfNot} ${RunningX64}
    MessageBox MB_ICONSTOP "serfbridge needs 64-bit Windows." /SD IDOK
    Abort
  ${EndIf}
  SetRegView 64
  SetShellVarContext all
FunctionEnd

Function un.onInit
  SetRegView 64
  SetShellVarContext all
FunctionEnd

Section "serfbridge"
  SetOutPath "$INSTDIR"
  File /r "${SRCDIR}\*.*"
  File "/oname=serfbridge.example.toml" "${CONFIG}"
  WriteUninstaller "$INSTDIR\uninstall.exe"

  ; %ProgramData%\serfbridge: the default config location (serfbridge/capture/paths.py).
  CreateDirectory "$APPDATA\serfbridge"
  ${IfNot} ${FileExists} "$APPDATA\serfbridge\serfbridge.toml"
    CopyFiles /SILENT "$INSTDIR\serfbridge.example.toml" "$APPDATA\serfbridge\serfbridge.toml"
  ${EndIf}

  ; System PATH. NSIS strings hold ${NSIS_MAX_STRLEN} characters: a longer PATH would come back
  ; cut, and writing it back would damage it, so then we only say what to add by hand.
  ReadRegStr $0 HKLM "${ENV_KEY}" "Path"
  StrLen $1 $0
  ${StrStr} $2 ";$0;" ";$INSTDIR;"
  ${If} $2 != ""
    DetailPrint "PATH already has $INSTDIR"
  ${ElseIf} $1 > 900
    DetailPrint "PATH is too long to edit safely: add $INSTDIR to it by hand"
  ${Else}
    ${If} $0 == ""
      StrCpy $0 "$INSTDIR"
    ${Else}
      StrCpy $0 "$0;$INSTDIR"
    ${EndIf}
    WriteRegExpandStr HKLM "${ENV_KEY}" "Path" "$0"
    SendMessage ${HWND_BROADCAST} ${WM_SETTINGCHANGE} 0 "STR:Environment" /TIMEOUT=2000
  ${EndIf}

  ; The relay as a service. Manual start, like the Linux unit that is installed disabled:
  ; edit the config, then `sc.exe config serfbridge-relay start= auto` and `sc.exe start`.
  nsExec::ExecToLog '"$SYSDIR\sc.exe" stop ${SERVICE}'
  Pop $0
  nsExec::ExecToLog '"$SYSDIR\sc.exe" delete ${SERVICE}'
  Pop $0
  ; The config path is spelled out: a service's %ProgramData% is not always the machine's
  ; (wine gives services C:\users\Public), and the path must not depend on it.
  nsExec::ExecToLog '"$SYSDIR\sc.exe" create ${SERVICE} binPath= "\"$INSTDIR\serfbridge.exe\" --config \"$APPDATA\serfbridge\serfbridge.toml\" service" start= demand DisplayName= "serfbridge relay"'
  Pop $0
  ${If} $0 != 0
    DetailPrint "sc.exe create ${SERVICE} failed ($0)"
    SetErrors
  ${EndIf}
  nsExec::ExecToLog '"$SYSDIR\sc.exe" description ${SERVICE} "serfbridge relay: inbound messages into Serf (config: $APPDATA\serfbridge\serfbridge.toml)"'
  Pop $0
  nsExec::ExecToLog '"$SYSDIR\sc.exe" failure ${SERVICE} reset= 86400 actions= restart/5000/restart/5000/restart/60000'
  Pop $0

  WriteRegStr HKLM "${UNINST_KEY}" "DisplayName" "serfbridge"
  WriteRegStr HKLM "${UNINST_KEY}" "DisplayVersion" "${VERSION}"
  WriteRegStr HKLM "${UNINST_KEY}" "Publisher" "serfbridge"
  WriteRegStr HKLM "${UNINST_KEY}" "InstallLocation" "$INSTDIR"
  WriteRegStr HKLM "${UNINST_KEY}" "UninstallString" '"$INSTDIR\uninstall.exe"'
  WriteRegStr HKLM "${UNINST_KEY}" "QuietUninstallString" '"$INSTDIR\uninstall.exe" /S'
  WriteRegDWORD HKLM "${UNINST_KEY}" "NoModify" 1
  WriteRegDWORD HKLM "${UNINST_KEY}" "NoRepair" 1
SectionEnd

Section "Uninstall"
  nsExec::ExecToLog '"$SYSDIR\sc.exe" stop ${SERVICE}'
  Pop $0
  Sleep 1000
  nsExec::ExecToLog '"$SYSDIR\sc.exe" delete ${SERVICE}'
  Pop $0

  ReadRegStr $0 HKLM "${ENV_KEY}" "Path"
  StrLen $1 $0
  ${UnStrStr} $2 ";$0;" ";$INSTDIR;"
  ${If} $2 != ""
  ${AndIf} $1 <= 900
    ${UnStrRep} $0 ";$0;" ";$INSTDIR;" ";"
    ; drop the separators added around it above
    StrCpy $0 $0 "" 1
    StrCpy $0 $0 -1
    WriteRegExpandStr HKLM "${ENV_KEY}" "Path" "$0"
    SendMessage ${HWND_BROADCAST} ${WM_SETTINGCHANGE} 0 "STR:Environment" /TIMEOUT=2000
  ${EndIf}

  RMDir /r "$INSTDIR\_internal"
  Delete "$INSTDIR\serfbridge.exe"
  Delete "$INSTDIR\serfbridge.example.toml"
  Delete "$INSTDIR\uninstall.exe"
  RMDir "$INSTDIR"
  DeleteRegKey HKLM "${UNINST_KEY}"
SectionEnd
