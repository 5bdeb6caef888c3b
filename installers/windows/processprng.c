/* Test-only stand-in for bcryptprimitives.dll!ProcessPrng, which wine 8.0 lacks and Rust >= 1.78
 * binaries (pydantic-core) import. Installed into the wine prefix's system32 only; never
 * bundled: real Windows 10+ has the DLL. RtlGenRandom (SystemFunction036) is the same CSPRNG. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
