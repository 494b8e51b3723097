"""Data quality: quarantine of malformed rows and Great Expectations suites between stages."""
