"""What drives an experiment from one machine: the controller, local mode, the cluster's
inventory and plan, sweeps."""
