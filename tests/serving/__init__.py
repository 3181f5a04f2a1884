"""Tests of modelfleet.serving and the agent serving app."""
