"""Job modules the tests declare jobs in: some that start, some that must not."""
