"""Dataset definitions: class lists and parsers for each supported on-disk format."""
