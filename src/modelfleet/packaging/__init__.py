"""modelfleet.packaging."""
