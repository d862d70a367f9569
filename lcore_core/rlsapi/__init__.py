"""RHEL Lightspeed rlsapi v1: `POST /v1/infer` and its Splunk HEC events (docs/rlsapi.md)."""
