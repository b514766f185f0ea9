"""llm-pod's auth-and-health sidecar: nginx asks it who may pass, probes ask it whether the model answers."""
