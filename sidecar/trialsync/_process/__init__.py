"""The sidecar process around the engine: settings, wiring, HTTP endpoints, signals."""
