"""modelfleet.catalog."""
