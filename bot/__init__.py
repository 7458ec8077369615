"""The chat side of cms-chatops: Slack and console adapters, rendering, CLI."""
