"""Dataset formats: the parsers of DOTA, xView and RarePlanes, the sample's generator, the
normalised tables every format becomes, splits by scene, and the bad-input policy."""
