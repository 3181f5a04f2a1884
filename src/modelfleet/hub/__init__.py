"""modelfleet.hub."""
