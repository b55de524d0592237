"""Where a pull fetches from: one module per protocol."""
