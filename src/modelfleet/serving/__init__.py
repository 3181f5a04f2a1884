"""modelfleet.serving."""
