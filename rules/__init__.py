"""Rule presets (TOML data), shipped inside the wheel as the package `fvgraph.presets`."""
