"""HTTP faces: the native API and (later) the compatibility faces."""
