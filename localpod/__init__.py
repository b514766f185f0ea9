"""The pod as plain processes on one machine: what `make run` and the end-to-end tests start."""
