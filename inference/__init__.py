"""Engine entrypoints and the model fetcher, shared by `make run`, the tests and the images."""
