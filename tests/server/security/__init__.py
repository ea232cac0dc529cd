"""The threat model, one file per threat: each test says what an attacker tries and shows it fail."""
