"""I/O adapters around the sans-I/O core: device, UDP socket, event loop, hooks, control socket."""
