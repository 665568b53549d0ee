"""What a consumer of a Moonflower network runs on its own side.

- `moonflower.client.verify`: check an answer against the provider's signed receipt and
  attested statement, offline, as a list of named checks.
- `moonflower.client.recorded`: read what was received in a whole body of any dialect into
  the form a receipt hashes; `moonflower.client.recorded_stream` the same from a recorded
  stream, with the receipt the stream carried.

Importing this package does nothing.
"""
