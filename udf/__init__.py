"""kapacitor-oncall UDF side: a fast Kapacitor UDF agent and the alert-state UDF."""
