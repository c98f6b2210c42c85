"""Where data comes from and goes: the one S3 client, HTTP downloads, URLs without their secrets,
the chip shards reader, and the controller's claim on a results location."""
