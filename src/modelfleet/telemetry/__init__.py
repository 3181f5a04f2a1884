"""modelfleet.telemetry."""
