"""Deterministic synthetic microservice telemetry written in the native raw formats (msds, gaia, eadro)."""
