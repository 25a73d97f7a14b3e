"""The benchmark's device table (its timings are measured by running it, not by tests)."""

import types

from minidiff.command.benchmark import format_row, peak_flops, table_header


def test_peak_flops_picks_the_right_device_and_precision():
    device = lambda kind: types.SimpleNamespace(device_kind=kind)
    assert peak_flops(device("NVIDIA H100 80GB HBM3"), "bfloat16") == 989.4e12
    assert peak_flops(device("NVIDIA H100 PCIe"), "float32") == 378e12  # not the SXM figure
    assert peak_flops(device("NVIDIA H200"), "float32") == 494.7e12
    assert peak_flops(device("cpu"), "float32") is None


def test_a_row_has_a_cell_for_every_column():
    row = {"backbone": "dit", "preset": "tiny", "image_size": 32, "batch_size": 8, "devices": 2, "precision": "float32",
           "parameters": 2e5, "compile_s": 1.0, "train_images_per_s": 10.0, "achieved_tflop_per_s": 0.01, "mfu": None,
           "peak_memory_gb": 1.0}
    assert format_row(row).count("|") == table_header().splitlines()[0].count("|")
    assert format_row(row).startswith("| dit tiny | 32 |") and "n/a" in format_row(row)
    assert "42%" in format_row(row | {"mfu": 0.42, "sample_images_per_s": 5.0})
    peer = {"peer_parameters": 2e5, "peer_train_images_per_s": 20.0, "peer_mfu": None, "speedup": 0.5}
    assert format_row(row | peer).count("|") == table_header(pytorch=True).splitlines()[0].count("|")
    assert "0.50x" in format_row(row | peer)
