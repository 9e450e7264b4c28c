"""The commands' engines: test server and client, performance check, log analyzer, report-statistics."""
