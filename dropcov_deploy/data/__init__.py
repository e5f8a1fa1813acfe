"""Data: preprocessing specs, image folders, bundled datasets, calibration sets."""
