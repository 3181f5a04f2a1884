"""modelfleet.audit."""
