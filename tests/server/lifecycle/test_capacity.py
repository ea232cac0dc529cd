"""The swap mode decision (pure) and the free-memory readers on this machine."""

from __future__ import annotations

from server.lifecycle.capacity import HEADROOM, free_ram_bytes, plan_swap

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
