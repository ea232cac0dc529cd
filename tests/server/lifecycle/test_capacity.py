"""The swap mode decision (pure) and the free-memory readers on this machine."""

from __future__ import annotations

import ctypes.util

import pytest

from server.lifecycle.capacity import HEADROOM, free_ram_bytes, plan_swap, return_freed_memory

GIB = 2**30


def test_the_setting_wins_over_memory() -> None:
    assert plan_swap("in_place", needed_bytes=1, available_bytes=100 * GIB, where="RAM").mode == "in_place"
    assert plan_swap("beside", needed_bytes=100 * GIB, available_bytes=1, where="RAM").mode == "beside"


def test_auto_goes_beside_only_when_the_new_model_fits_with_headroom() -> None:
    fits = plan_swap("auto", needed_bytes=GIB, available_bytes=int(GIB * HEADROOM) + 1, where="VRAM")
    assert fits.mode == "beside" and "fits in" in fits.why and "VRAM" in fits.why
    tight = plan_swap("auto", needed_bytes=GIB, available_bytes=GIB, where="VRAM")
    assert tight.mode == "in_place" and "exceeds" in tight.why


def test_unknown_free_memory_means_in_place() -> None:
    plan = plan_swap("auto", needed_bytes=GIB, available_bytes=None, where="VRAM")
    assert plan.mode == "in_place" and "unknown" in plan.why


def test_free_ram_is_read_here() -> None:
    free = free_ram_bytes()
    assert free is not None and free > 0


@pytest.mark.skipif(ctypes.util.find_library("c") is None, reason="no C library to load")
def test_freed_memory_goes_back_to_the_system_where_glibc_can() -> None:
    # glibc (the images' C library) has malloc_trim; elsewhere the call says it did nothing instead of failing.
    with open("/proc/self/maps", encoding="ascii", errors="replace") as maps:
        glibc = "libc.so.6" in maps.read()
    assert return_freed_memory() is glibc
