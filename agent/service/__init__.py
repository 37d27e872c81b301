"""The camera agent as a service: the two-stage frame loop, its counters, and systemd notification."""
