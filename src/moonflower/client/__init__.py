"""What a consumer of a Moonflower network runs on its own side.

- `moonflower.client.verify`: check an answer against the provider's signed receipt and
  attested statement, offline, as a list of named checks.
- `moonflower.client.recorded`: read what was received (a whole body or a recorded stream of
  any dialect) into the form a receipt hashes, with the receipt a stream carried.

Importing this package does nothing.
"""
