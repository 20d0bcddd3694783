"""Settings and job modules for the scheduler processes started by the integration tests."""
