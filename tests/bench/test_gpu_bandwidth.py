"""The single-stream bandwidth limit is the lent card's, whichever card it is (the kit has met H200s and may get
H100s), and a card the kit does not know is said, not measured against another card's datasheet."""

from __future__ import annotations

import pytest

from bench.gpu.common import datasheet_bandwidth
from bench.gpu.run import bandwidth_line


@pytest.mark.parametrize(
    ("card", "bandwidth"),
    [
        ("NVIDIA H200", 4.8e12),
        ("NVIDIA H100 80GB HBM3", 3.35e12),
        ("NVIDIA H100 PCIe", 2.0e12),
        ("NVIDIA H100 NVL", 3.9e12),
        ("NVIDIA A100-SXM4-80GB", 2.039e12),
        ("NVIDIA A100 80GB PCIe", 1.935e12),
        ("NVIDIA A100-SXM4-40GB", 1.555e12),
        ("NVIDIA L40S", 0.864e12),
        ("NVIDIA L4", 0.3e12),
        ("NVIDIA GH200 480GB", None),
        ("Tesla T4", None),
    ],
)
def test_datasheet_bandwidth_by_the_name_nvidia_smi_reports(card: str, bandwidth: float | None) -> None:
    assert datasheet_bandwidth(card) == bandwidth


def test_one_stream_is_measured_against_the_lent_cards_limit_and_the_copy_rate() -> None:
    row = {"server": "ours", "decode_tok_s_per_stream": 500.0}
    per_token = 4.0e9  # 8B at Q4_K_M reads about this much per token
    line = bandwidth_line(row, "NVIDIA H100 80GB HBM3", per_token, copy=3.0e12)
    assert line == (
        "- ours, 1 stream: 60% of the NVIDIA H100 80GB HBM3's 3.35 TB/s limit (838 tok/s), "
        "67% of the measured copy rate (3.00 TB/s)"
    )
    unknown = bandwidth_line(row, "Tesla T4", per_token, copy=None)
    assert unknown == "- ours, 1 stream: no datasheet bandwidth for the Tesla T4"
