"""modelfleet.delivery."""
