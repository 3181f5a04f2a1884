"""modelfleet.monitoring."""
