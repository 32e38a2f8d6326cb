"""Container images: the chanfleet image (`make image`) and a test cluster's stand-ins."""
