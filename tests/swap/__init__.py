"""The swap sequence on a real simulated station."""
