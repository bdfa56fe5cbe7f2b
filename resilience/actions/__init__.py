"""Actions: what the commands do, each one a recorded run in the evidence ledger."""
