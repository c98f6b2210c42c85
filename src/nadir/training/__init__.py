"""Training backends behind one interface: build a model from the catalogue, train, predict."""
