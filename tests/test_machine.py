from __future__ import annotations

from pathlib import Path

from musicgend.machine import machine_info


def test_machine_info_names_the_cpu_and_its_simd_flags(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse4_2 avx avx2 fma avx512f "
        "avx512_vnni\n\nprocessor\t: 1\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2\n"
    )
    info = machine_info(str(cpuinfo))
    assert info["cpu_model"] == "AMD EPYC"
    assert info["simd"] == ["avx2", "fma", "avx512f", "avx512_vnni"]  # the first CPU's
    assert info["cpus"] >= 1


def test_machine_info_without_cpuinfo(tmp_path: Path) -> None:
    info = machine_info(str(tmp_path / "missing"))
    assert set(info) == {"cpus", "processor"}
