"""kapacitor-oncall bridge: Kapacitor alert events in, on-call platform requests out."""
