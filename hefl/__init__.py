"""hefl: the logic of the HE federated-learning testbed (config, wire, transport, nodes, crypto,
logs, controller), importable and testable without HTTP or a web framework."""
