"""Audits that are not retrain gates: ``audit.k8s`` judges Kubernetes manifests against Airlock's baseline."""
