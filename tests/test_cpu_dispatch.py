"""The compiled C code runs on any x86-64 CPU: its AVX2 and AVX-512 instructions sit only in
code that is called after a run-time check of the CPU.

``FASTLOSS_NO_AVX512=1`` (test_short_rows, test_streaming) makes an AVX-512 machine take the
256-bit kernels, but it cannot show that those kernels never reach an instruction the CPU
lacks: a helper compiled inside the 512-bit pass and shared with the other passes runs fine
there and stops an AVX2-only CPU with an illegal instruction.  So the machine code is read:
every function that uses VEX-encoded instructions (AVX, AVX2, FMA) must be a
``target_clones`` clone (``name.arch_x86_64_v3`` / ``name.arch_x86_64_v4``, picked by the
resolver) or a function of the 512-bit pass (``name_wide``, called only after
``fl_wide_allowed()``), and EVEX-encoded ones (AVX-512) only the x86-64-v4 clones and the
512-bit pass.  The tests also run on whatever CPU the machine has, so an AVX2-only machine
runs the 256-bit code for real.
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess

import pytest

from fastloss import _capi
from fastloss._ext import _cython

pytestmark = pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64") or shutil.which("objdump") is None,
    reason="reads x86-64 machine code with objdump (binutils)")

# An instruction that only AVX-512 encodes (EVEX): a zmm or mask register, an embedded
# broadcast, xmm/ymm 16-31, or a mnemonic that exists only there.
_EVEX = re.compile(
    r"%zmm|%k[0-7]\b|\{1to\d+\}|%[xy]mm(1[6-9]|2\d|3[01])\b"
    r"|\b(vpternlog|vmovdq[au](8|16|32|64)|vperm[it]2|vpcompress|vexpand|vrndscale|vgetexp"
    r"|vgetmant|vscalef|vfixupimm|vrcp14|vrsqrt14|k(mov|or|and|not|shift|test|ortest|unpck"
    r"|xor|xnor|add)|vcvtne2?ps2bf16|vdpbf16|valign[dq]|vpro[lr][dq]|vpsraq|vpabsq"
    r"|vp(max|min)[su]q|vpmullq|vcvtu|vcvt\w*2u|vcvt\w*qq|vfpclass|vpblendm|vblendm"
    r"|vshuf[fi](32x4|64x2)|v(extract|insert)[fi](32x4|64x2|32x8|64x4)"
    r"|vbroadcast[fi](32x2|32x4|64x2|32x8|64x4))")
_VEX = re.compile(r"^v[a-z0-9]+\s")  # every AVX-family instruction starts with v
_WIDE = re.compile(r"_wide(\.|$)|\.arch_x86_64_v4(\.|$)")
_CLONE_V3 = re.compile(r"\.arch_x86_64_v3(\.|$)")
_FUNCTION = re.compile(r"^[0-9a-f]+ <(.+)>:$")


def _misplaced(path: str) -> dict[str, str]:
    """Function -> its first instruction that the CPU check does not guard."""
    listing = subprocess.run(["objdump", "-d", "--no-show-raw-insn", path],
                             capture_output=True, text=True, check=True).stdout
    found: dict[str, str] = {}
    function = None
    for line in listing.splitlines():
        header = _FUNCTION.match(line)
        if header:
            function = header.group(1)
            continue
        if function is None or "\t" not in line or function in found:
            continue
        instruction = line.split("\t", 1)[1].strip()
        if _WIDE.search(function):
            continue
        if _EVEX.search(instruction) or (_VEX.match(instruction)
                                         and not _CLONE_V3.search(function)):
            found[function] = instruction
    return found


@pytest.mark.parametrize("library", ["cython", "capi"])
def test_simd_instructions_only_behind_the_cpu_check(library):
    path = _cython.__file__ if library == "cython" else _capi.library_path()
    misplaced = _misplaced(path)
    assert not misplaced, (
        f"{path}: functions that any x86-64 CPU may run use AVX/AVX-512 instructions "
        f"(define them outside the 512-bit pass, or inline them into the clones): {misplaced}")


def test_the_check_finds_the_512_bit_pass():
    """The reader sees AVX-512 code where it is meant to be (it would pass vacuously if the
    pattern matched nothing)."""
    listing = subprocess.run(["objdump", "-d", "--no-show-raw-insn", _cython.__file__],
                             capture_output=True, text=True, check=True).stdout
    wide = [line for line in listing.splitlines() if "%zmm" in line]
    assert wide, "no 512-bit instruction at all: the 512-bit pass was not compiled"
