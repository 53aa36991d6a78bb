"""What we know about Cluster API core, as pure functions over objects in the shape the
API server returns them (plain dicts). No kopf, no API calls: callers fetch, we decide.

- `metadata`: well-known labels, annotations and API groups.
- `owners`: who owns an object (its Cluster, its Machine).
- `pause`: CAPI's pause rule and the `Paused` condition.
- `conditions`: the v1beta2 (metav1.Condition) shape and list helpers.
- `outcome`: what a reconcile step says should happen next.
- `status`: the one status patch per reconcile (conditions, observedGeneration).
"""
