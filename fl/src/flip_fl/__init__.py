"""FLIP's federated-learning side: what runs on FL servers and clients, not on the hub."""
