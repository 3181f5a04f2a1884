"""modelfleet.cli."""
