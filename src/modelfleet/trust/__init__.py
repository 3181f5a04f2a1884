"""modelfleet.trust."""
