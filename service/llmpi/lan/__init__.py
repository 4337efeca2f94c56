"""The home network: announcing the appliance (announce) and finding it (discovery). Imports core, host and plan."""
