"""Clients for workload clusters, built from their `<cluster>-kubeconfig` Secrets."""
