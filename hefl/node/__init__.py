"""What runs on every node: the wire format, the transport and its byte counter, the
aggregation rules, the host that builds a node from a pushed config, the run log, the config
push body, and the roles (nodes/). Never imports hefl.control."""
